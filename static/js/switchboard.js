/* switchboard.js: the client of a Switchboard server. One ES module, no dependency, no build.
 *
 *   import { Switchboard } from "/static/js/switchboard.js";
 *   const sb = new Switchboard(location.origin);
 *   const sub = sb.subscribe("chat", { onEvent: (event) => show(event), onGap: () => reload() });
 *   await sb.publish("chat", { text: "hi" });
 *
 * What it does for the application (README, "Use it from your page"):
 * - One connection for every topic: the /ws JSON protocol, or a multi-topic SSE stream
 *   (GET /api/stream?topic=a&topic=b) with HTTP publishing, or multi-topic long polling
 *   (GET /api/long-poll?topic=...), tried in that order (`transports`); interval polling is
 *   there too, when asked for by name.
 * - Each topic's cursor is the id of the last event it delivered. Every reconnect, and every
 *   change of transport, resumes each topic after its cursor, so the application sees every
 *   event once and in order, or an explicit gap (onGap) where the server's history no
 *   longer has what was missed.
 * - Reconnects with capped exponential backoff and jitter; a connection must stay up for
 *   `stableAfter` ms before the backoff starts again from its base, so a link that opens and
 *   breaks at once never becomes a hot loop.
 * - A transport that never gets through (no upgrade, a buffering proxy, a proxy that cuts the
 *   socket) while GET /healthz answers is left for the next one, as centrifuge-js and
 *   socket.io do; `sb.transport` says which one is in use and the "transport" event says
 *   when it changes. A server that does not answer at all is waited for on the same one.
 * - Tokens come from the application (`token`: a string or a function, sync or async):
 *   an `auth` op on /ws, refreshed before it expires (and at once on {"op": "expired"});
 *   `Authorization: Bearer` on every HTTP request, the SSE stream included (it is read with
 *   fetch(), which can send headers; EventSource cannot), reopened with a new token before
 *   the old one runs out.
 * - Every failure is a SwitchboardError with the server's code (`forbidden`,
 *   `rate_limited`, ...) or one of this file's own (`network`, `timeout`, `disconnected`,
 *   `closed`, `token_failed`, `bad_reply`): publish() rejects with it, a subscription's
 *   onError gets it, and the "error" event carries it. Nothing is swallowed: with no "error"
 *   listener it goes to console.warn, and an exception thrown by an application callback is
 *   rethrown (asynchronously, so the connection carries on).
 *
 * Node 20: pass `WebSocket` (the `ws` package); fetch is built in. */

const DEFAULTS = Object.freeze({
  transports: ["websocket", "sse", "long-polling"],
  paths: { ws: "/ws", stream: "/api/stream", longPoll: "/api/long-poll", events: "/api/topics/{topic}/events",
    health: "/healthz" },
  backoff: { base: 500, cap: 15000 }, // ms; each wait is between half and all of min(cap, base * 2^n)
  stableAfter: 5000, // ms a connection must last before the backoff starts over
  connectTimeout: 8000, // ms for a socket's first reply, or a stream's first bytes
  replyTimeout: 10000, // ms for the reply to a /ws op
  pingInterval: 25000, // ms of silence on /ws before a ping op checks the socket
  streamIdleTimeout: 45000, // ms without a byte (the server's heartbeat is 15 s) before a stream is given up
  longPollTimeout: 25, // s a long poll may be held (the server caps it)
  pollInterval: 1000, // ms between two rounds of interval polling
  pageLimit: 100, // events per poll or long-poll answer
});
const KNOWN_TRANSPORTS = ["websocket", "sse", "long-polling", "polling"];
const TOPIC = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const RECENT_IDS = 64; // ids remembered per subscription, to drop a repeat (counted in stats)

/** A failure, with the server's error code (or this library's) and what else is known. */
export class SwitchboardError extends Error {
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "SwitchboardError";
    this.code = code;
    this.status = details.status ?? null; // the HTTP status, when it came over HTTP
    this.topic = details.topic ?? null;
    this.retryAfter = details.retryAfter ?? null; // seconds, when the server said
    this.transport = details.transport ?? null;
    this.fromServer = Boolean(details.fromServer); // the server itself answered with this code
  }
}

// ------------------------------------------------------------------------ small helpers

function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/** Calls fn; an exception thrown by the application's callback is rethrown on its own turn,
 *  where window.onerror or Node's uncaughtException sees it, and the library carries on. */
function safely(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => { throw err; });
  }
}

class Backoff {
  constructor({ base, cap }) {
    this.base = base;
    this.cap = cap;
    this.attempt = 0;
  }

  next() {
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  }

  reset() { this.attempt = 0; }
}

/** A multi-topic cursor as the server writes it (app/transports/cursor.py, format_compound):
 *  "<topic>~<cursor>" pairs joined by "~". Built here from each topic's own cursor, so that
 *  any transport can resume topics that another one delivered. */
function compound(subs) {
  return subs.filter((sub) => sub.cursor).map((sub) => `${sub.topic}~${sub.cursor}`).join("~");
}

function parseCompound(text) {
  const parts = (text || "").split("~");
  const positions = new Map();
  for (let i = 0; i + 1 < parts.length; i += 2) positions.set(parts[i], parts[i + 1]);
  return positions;
}

/** The claims of a JWT, or null for anything else (opaque tokens are fine: then only the
 *  server's word, {"op": "expired"} or a 401, says when it ran out). */
function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return claims && typeof claims === "object" ? claims : null;
  } catch (err) {
    return null;
  }
}

/** Seconds before expiry at which a token is renewed: a quarter of its life, at most 30. */
function refreshMargin(lifetime) {
  return Math.min(30, Math.max(0, lifetime) / 4);
}

function eventOf(message) {
  const { id, topic, type, data, sender, time } = message;
  return { id, topic, type, data, sender, time };
}

/** The error of an HTTP answer that is not a success: the server's {"error", "message"}. */
function httpError(res, transport) {
  let body = null;
  try {
    body = JSON.parse(res.body);
  } catch (err) { /* not JSON: a proxy's page, most likely */ }
  const code = body && typeof body.error === "string" ? body.error : `http_${res.status}`;
  const message = body && typeof body.message === "string" ? body.message : `HTTP ${res.status}`;
  const retry = Number(res.headers.get("Retry-After"));
  return new SwitchboardError(code, message, {
    status: res.status, transport, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null,
    fromServer: Boolean(body && body.error),
    topic: body && typeof body.topic === "string" ? body.topic : null,
  });
}

function networkError(err, url, transport) {
  if (err instanceof SwitchboardError) return err;
  return new SwitchboardError("network", `no answer from ${url}: ${(err && err.message) || err}`,
    { transport, cause: err });
}

// ------------------------------------------------------------------------ tokens

class TokenSource {
  constructor(option) {
    this.option = option;
    this.token = null;
    this.fetchedAt = 0;
    this.stale = true; // the next get() asks the application again
    this.inflight = null;
  }

  get refreshable() { return typeof this.option === "function"; }

  /** Seconds the given token has left, or null when it does not say. */
  static secondsLeft(token) {
    const claims = token ? jwtClaims(token) : null;
    return claims && typeof claims.exp === "number" ? claims.exp - Date.now() / 1000 : null;
  }

  /** Seconds from now until `token` should be replaced, or null when it does not say. */
  refreshIn(token) {
    const claims = token ? jwtClaims(token) : null;
    if (!claims || typeof claims.exp !== "number") return null;
    const start = typeof claims.iat === "number" ? claims.iat : this.fetchedAt / 1000;
    return claims.exp - refreshMargin(claims.exp - start) - Date.now() / 1000;
  }

  /** The token to send now (null: none, the connection is anonymous or uses its cookie). */
  async get(force = false) {
    if (this.option == null) return null;
    if (typeof this.option === "string") return this.option;
    if (!force && !this.stale && this.token !== null) {
      const left = this.refreshIn(this.token);
      if (left === null || left > 0) return this.token;
    }
    if (!this.inflight) {
      this.inflight = (async () => {
        try {
          const token = await this.option();
          this.token = token || null;
          this.fetchedAt = Date.now();
          this.stale = false;
          return this.token;
        } catch (err) {
          throw new SwitchboardError("token_failed", `the token function failed: ${(err && err.message) || err}`,
            { cause: err });
        } finally {
          this.inflight = null;
        }
      })();
    }
    return this.inflight;
  }
}

// ------------------------------------------------------------------------ subscriptions

/** One topic followed by a Switchboard; made by sb.subscribe(). */
class Subscription {
  constructor(client, topic, options) {
    this.topic = topic;
    this.cursor = options.since || null; // the id of the last event delivered: where a resume starts
    this.state = "subscribing"; // subscribed, subscribing (again, after a drop), unsubscribed, failed
    this.options = options;
    this._client = client;
    this._recent = [];
    this._recentSet = new Set();
    this._gapTold = false; // a gap was told and no event came since: the same hole is not told twice
    this._attached = false; // history read (if asked): transports may follow it
    this._positioned = Boolean(this.cursor); // it has a position (or was found to have none yet)
    this.ready = new Promise((resolve, reject) => { this._ready = { resolve, reject }; });
    this.ready.catch(() => {}); // awaited by whoever wants it; never an unhandled rejection
  }

  /** Stop following the topic. */
  unsubscribe() { this._client._unsubscribe(this); }

  get active() { return this._attached && (this.state === "subscribing" || this.state === "subscribed"); }

  _deliver(event, transport, history = false) {
    if (this.state === "unsubscribed" || this.state === "failed") return;
    if (this._recentSet.has(event.id)) {
      this._client.stats.duplicates += 1;
      return;
    }
    this._recent.push(event.id);
    this._recentSet.add(event.id);
    if (this._recent.length > RECENT_IDS) this._recentSet.delete(this._recent.shift());
    this.cursor = event.id;
    this._gapTold = false;
    this._client.stats.events += 1;
    safely(this.options.onEvent, event, { history, transport });
  }

  _gap(slow, transport) {
    if (!this.active || this._gapTold) return;
    this._gapTold = true;
    this._client.stats.gaps += 1;
    safely(this.options.onGap, { topic: this.topic, slow: Boolean(slow), transport });
  }

  _setState(state, transport) {
    if (this.state === state || this.state === "unsubscribed" || this.state === "failed") return;
    this.state = state;
    if (state === "subscribed") this._ready.resolve(this);
    safely(this.options.onState, { state, transport });
  }

  _end(state, err) {
    if (this.state === "unsubscribed" || this.state === "failed") return;
    this.state = state;
    this._ready.reject(err || new SwitchboardError("unsubscribed", `unsubscribed from ${this.topic}`));
    safely(this.options.onState, { state });
  }
}

// ------------------------------------------------------------------------ transports
//
// Each transport is made for one connection attempt: start() begins it; it calls
// client._established(this) once it has got through, and client._ended(this, error, info)
// exactly once when it ends (info.proven: it got through at some point; info.immediate:
// come back at once, e.g. with a new token). stop() ends it without a word (the client's
// own decision). add(sub) and remove(sub) follow a topic or stop following it.

class WebSocketTransport {
  constructor(client) {
    this.name = "websocket";
    this.client = client;
    this.ws = null;
    this.opened = false; // the socket is open and the first ops are out
    this.proven = false; // the server answered
    this.ended = false;
    this.pending = new Map(); // ref -> {ok, fail, timer}
    this.refs = 0;
    this.active = new Set(); // subscriptions the server confirmed on this socket
    this.timers = new Set();
    this.lastIn = Date.now();
  }

  start() {
    const c = this.client;
    const url = c._url("ws", true);
    c._traffic({ type: "start", transport: this.name, kind: "websocket", url });
    try {
      this.ws = new c._WebSocket(url);
    } catch (err) {
      this._end(new SwitchboardError("network", `cannot open a WebSocket to ${url}: ${err.message}`,
        { transport: this.name, cause: err }));
      return;
    }
    this._after(c.options.connectTimeout, () => {
      if (!this.proven) this._end(new SwitchboardError("timeout", `no answer on the WebSocket within ${c.options.connectTimeout} ms`, { transport: this.name }));
    });
    this.ws.onopen = () => this._opened();
    this.ws.onmessage = (ev) => this._message(ev.data);
    this.ws.onerror = () => {}; // a close event follows, with its code
    this.ws.onclose = (ev) => this._closed(ev);
  }

  _after(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  async _opened() {
    const c = this.client;
    let token;
    try {
      token = await c._tokens.get();
    } catch (err) {
      this._end(err);
      return;
    }
    if (this.ended) return;
    this.opened = true;
    if (token) this._auth(token); // the first op, so every later one is the token's
    const subs = c._activeSubs();
    for (const sub of subs) this.add(sub);
    if (!token && !subs.length) this._request({ op: "ping" }, () => {}, (err) => this._end(err));
    this.pingTimer = setInterval(() => this._keepalive(), c.options.pingInterval);
  }

  /** Send an op with a ref; `ok` or `fail` runs when its reply comes (synchronously, before
   *  any later message is read: a subscription's events follow its "ok" at once). */
  _request(op, ok, fail) {
    const ref = `${++this.refs}`;
    const timer = this._after(this.client.options.replyTimeout, () => {
      this.pending.delete(ref);
      const err = new SwitchboardError("timeout", `no reply to ${op.op} within ${this.client.options.replyTimeout} ms`,
        { transport: this.name, topic: op.topic });
      this._end(err); // a socket that answers nothing is not worth keeping (reported once, here)
      fail(err);
    });
    this.pending.set(ref, { ok, fail, timer });
    this._send({ ...op, ref });
  }

  _send(op) {
    const text = JSON.stringify(op);
    this.ws.send(text);
    this.client._traffic({ type: "out", transport: this.name, kind: "websocket", text, bytes: byteLength(text) });
  }

  _auth(token) {
    this._request({ op: "auth", token }, (reply) => this._refreshLater(reply.expires_in), (err) => {
      if (!this.ended) this._end(err); // unauthorized (a bad token) or auth_refused: a new socket, a new token
    });
  }

  _refreshLater(expiresIn) {
    clearTimeout(this.refreshTimer);
    if (typeof expiresIn !== "number") return;
    const seconds = Math.max(0.5, expiresIn - refreshMargin(expiresIn));
    this.refreshTimer = this._after(seconds * 1000, () => this._refresh());
  }

  /** A new token for this socket (before the old one runs out, or after {"op": "expired"}). */
  async _refresh() {
    const c = this.client;
    let token;
    try {
      token = await c._tokens.get(true);
    } catch (err) {
      c._report(err);
      return; // the server closes with 4001 after its grace; the reconnect asks again
    }
    if (this.ended || !token) return;
    this._request({ op: "auth", token }, (reply) => this._refreshLater(reply.expires_in), (err) => {
      if (!this.ended) this._end(err);
    });
  }

  _keepalive() {
    if (this.ended || Date.now() - this.lastIn < this.client.options.pingInterval) return;
    this._request({ op: "ping" }, () => {}, () => {}); // no reply: _request ends the socket and reports it
  }

  add(sub) {
    if (!this.opened || this.ended) return; // the open sends every active subscription
    const op = { op: "subscribe", topic: sub.topic };
    if (sub.cursor) op.since = sub.cursor;
    this._request(op, (reply) => {
      if (this.client._subs.get(sub.topic) !== sub || !sub.active) return;
      if (!sub.cursor && reply.cursor) sub.cursor = reply.cursor;
      sub._positioned = true;
      this.active.add(sub);
      sub._setState("subscribed", this.name);
    }, (err) => this._subscribeFailed(sub, err));
  }

  _subscribeFailed(sub, err) {
    const c = this.client;
    if (this.ended || c._subs.get(sub.topic) !== sub || !sub.active) return;
    switch (err.code) {
      case "unauthorized":
        // Who we are is read when a connection starts (its cookie, its auth op): a new one.
        c._report(err, sub);
        c._tokens.stale = true;
        this._end(null, { proven: true });
        return;
      case "already_subscribed":
        this.active.add(sub);
        sub._setState("subscribed", this.name);
        return;
      case "auth_unavailable": case "unavailable": case "shutting_down": case "timeout":
        c._report(err, sub);
        this._after(c._subBackoff(sub), () => { if (sub.active && c._subs.get(sub.topic) === sub) this.add(sub); });
        return;
      default: // forbidden, too_many_subscriptions, bad_cursor, ...: asking again will not help
        c._fail(sub, err);
    }
  }

  remove(sub) {
    if (!this.opened || this.ended) return;
    this.active.delete(sub);
    this._request({ op: "unsubscribe", topic: sub.topic }, () => {}, (err) => {
      if (err.code !== "not_subscribed" && !this.ended) this.client._report(err);
    });
  }

  publish(topic, data, type) {
    return new Promise((resolve, reject) => {
      const op = { op: "publish", topic, data };
      if (type !== undefined) op.type = type;
      this._request(op, (reply) => resolve({ id: reply.id, topic: reply.topic }), reject);
    });
  }

  _message(data) {
    const c = this.client;
    if (this.ended) return;
    const text = typeof data === "string" ? data : new TextDecoder().decode(data);
    this.lastIn = Date.now();
    c._traffic({ type: "in", transport: this.name, kind: "websocket", text, bytes: byteLength(text) });
    if (!this.proven) {
      this.proven = true;
      c._established(this);
    }
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      c._report(new SwitchboardError("bad_reply", `not JSON on the WebSocket: ${text.slice(0, 80)}`, { transport: this.name }));
      return;
    }
    const sub = typeof message.topic === "string" ? c._subs.get(message.topic) : undefined;
    switch (message.op) {
      case "event":
        if (sub && this.active.has(sub)) sub._deliver(eventOf(message), this.name);
        return;
      case "gap":
        if (sub && this.active.has(sub)) sub._gap(false, this.name);
        return;
      case "expired":
        this._refresh();
        return;
      case "ok":
      case "error": {
        const entry = message.ref != null ? this.pending.get(String(message.ref)) : undefined;
        if (entry) {
          this.pending.delete(String(message.ref));
          clearTimeout(entry.timer);
          this.timers.delete(entry.timer);
          if (message.op === "ok") entry.ok(message);
          else entry.fail(this._error(message));
        } else if (message.op === "error") {
          this._unprompted(this._error(message), sub);
        }
        return;
      }
      default:
        c._report(new SwitchboardError("bad_reply", `unknown op ${String(message.op).slice(0, 40)}`, { transport: this.name }));
    }
  }

  _error(message) {
    const status = { unauthorized: 401, forbidden: 403, rate_limited: 429 }[message.error] || null;
    return new SwitchboardError(message.error || "error", message.message || "", {
      transport: this.name, topic: message.topic, retryAfter: message.retry_after, fromServer: true, status,
    });
  }

  /** An error op no request asked for: the server ended a subscription. */
  _unprompted(err, sub) {
    const c = this.client;
    if (!sub || !this.active.has(sub)) {
      c._report(err);
      return;
    }
    this.active.delete(sub);
    if (err.code === "forbidden" || err.code === "unauthorized") {
      c._fail(sub, err); // a refreshed token no longer covers it
      return;
    }
    c._report(err, sub);
    sub._setState("subscribing", this.name);
    if (err.code === "slow_consumer") this.add(sub); // its gap was told: take it up again from the cursor
    else if (err.code !== "shutting_down") this._after(c._subBackoff(sub), () => { if (sub.active) this.add(sub); });
    // shutting_down: the server closes the socket next (1001), and the reconnect resumes it.
  }

  _closed(ev) {
    if (this.ended) return;
    const why = ev.reason ? ` ${ev.reason}` : "";
    const codes = { 1001: "shutting_down", 1009: "too_large", 4001: "unauthorized" };
    const err = new SwitchboardError(codes[ev.code] || "network", `the WebSocket closed (${ev.code}${why})`,
      { transport: this.name, fromServer: ev.code in codes });
    if (ev.code === 4001) this.client._tokens.stale = true; // its token expired: ask for a new one
    this._end(err, { immediate: ev.code === 4001 });
  }

  _teardown(reason) {
    this.ended = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    clearInterval(this.pingTimer);
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const entry of pending) entry.fail(reason);
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = null;
      this.ws.onerror = () => {};
      try {
        this.ws.close(1000);
      } catch (err) { /* closing a socket that never opened */ }
    }
    this.client._traffic({ type: "end", transport: this.name, kind: "websocket" });
  }

  _end(err, info = {}) {
    if (this.ended) return;
    this._teardown(new SwitchboardError("disconnected", "the connection closed before the reply", { transport: this.name }));
    this.client._ended(this, err, { proven: this.proven, ...info });
  }

  stop() {
    if (!this.ended) this._teardown(new SwitchboardError("disconnected", "the connection was closed", { transport: this.name }));
  }
}

/** The pieces of a text/event-stream (WHATWG HTML, "Server-sent events"), fed as text. */
class SseParser {
  constructor(onEvent, onId) {
    this.onEvent = onEvent; // (type, data)
    this.onId = onId; // (id) for a block with an id and no data: the stream's opening position
    this.pending = "";
    this.data = [];
    this.type = "";
    this.id = null;
    this.retry = null;
  }

  feed(text) {
    this.pending += text;
    const lines = this.pending.split(/\r\n|\n|\r(?!$)/);
    this.pending = lines.pop(); // not finished yet (a CR at the very end may be half of a CRLF)
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent(this.type || "message", this.data.join("\n"));
      else if (this.id !== null) this.onId(this.id);
      this.data = [];
      this.type = "";
      this.id = null;
      return;
    }
    if (line.startsWith(":")) return; // a comment: the opening one, or a heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id") this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

/** Base of the HTTP transports: one request at a time, restarted when the topics change. */
class HttpTransport {
  constructor(client, name) {
    this.name = name;
    this.client = client;
    this.ended = false;
    this.proven = false;
    this.gen = 0; // bumped to abandon the request in flight
    this.controller = null;
    this.timers = new Set();
    this.wake = null; // resolves an idle wait
  }

  _after(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  _clearTimers() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  /** Wait until the topics change (or `ms` pass, when given). */
  _idle(ms) {
    return new Promise((resolve) => {
      this.wake = resolve;
      if (ms !== undefined) this._after(ms, resolve);
    });
  }

  /** The topics changed: abandon the request in flight and start over at once. */
  _kick() {
    this.gen += 1;
    if (this.controller) this.controller.abort();
    this._clearTimers();
    const wake = this.wake;
    this.wake = null;
    if (wake) wake();
  }

  add() { this._kick(); }

  remove() { this._kick(); }

  _prove(subs) {
    if (!this.proven) {
      this.proven = true;
      this.client._established(this);
    }
    for (const sub of subs) if (this.client._subs.get(sub.topic) === sub) sub._setState("subscribed", this.name);
  }

  /** A refusal of the whole request: the topics it is about are failed (403 names one topic
   *  at a time, so each is asked alone), or the connection ends. Returns true to go on. */
  async _refused(err, subs, state) {
    const c = this.client;
    if (err.status === 401 && c._tokens.refreshable && !state.retried) {
      state.retried = true; // the token may have run out: once more with a new one
      c._tokens.stale = true;
      return true;
    }
    if (err.status === 403 && err.code === "forbidden") {
      const refused = await c._forbidden(subs, this.name);
      if (this.ended) return false;
      for (const [sub, why] of refused) c._fail(sub, why);
      if (refused.length) return true;
    }
    this._end(err);
    return false;
  }

  _end(err, info = {}) {
    if (this.ended) return;
    this.stop();
    this.client._ended(this, err, { proven: this.proven, ...info });
  }

  stop() {
    this.ended = true;
    this._kick();
  }
}

/** Server-Sent Events of every topic on one stream, read with fetch(). */
class SseTransport extends HttpTransport {
  constructor(client) {
    super(client, "sse");
  }

  start() { this._loop(); }

  async _loop() {
    const c = this.client;
    const state = { retried: false };
    while (!this.ended) {
      const subs = c._activeSubs();
      if (!subs.length) {
        await this._idle();
        continue;
      }
      const gen = this.gen;
      let outcome;
      try {
        outcome = await this._stream(subs, gen, state);
      } catch (err) {
        if (gen === this.gen && !this.ended) this._end(err);
        return;
      }
      if (this.ended || gen !== this.gen) continue; // restarted for new topics (or stopped)
      if (outcome === "again") continue;
      // The server ended the stream (shutdown, a slow consumer): a new one, after a wait.
      this._end(null, { retryMs: outcome });
      return;
    }
  }

  /** One stream. Resolves with "again" (open a new one now) or the server's retry: delay
   *  after it ended the stream; rejects with the error that ended it. */
  async _stream(subs, gen, state) {
    const c = this.client;
    const token = await c._tokens.get();
    if (gen !== this.gen) return "again";
    const headers = { Accept: "text/event-stream" };
    const resume = compound(subs);
    if (resume) headers["Last-Event-ID"] = resume;
    if (token) headers.Authorization = `Bearer ${token}`;
    const url = `${c._url("stream")}?${subs.map((sub) => `topic=${encodeURIComponent(sub.topic)}`).join("&")}`;
    const controller = new AbortController();
    this.controller = controller;
    let why = null; // why we aborted it
    const giveUp = (err) => {
      why = err;
      controller.abort();
    };
    const connectMs = c.options.connectTimeout;
    let idle = null;
    let refresh = null;
    const firstBytes = this._after(connectMs, () => giveUp(new SwitchboardError("timeout",
      `no byte of the stream within ${connectMs} ms: a proxy may be buffering it`, { transport: this.name })));
    c._traffic({ type: "start", transport: this.name, kind: "stream", url });
    let bytes = 0;
    let status = 0;
    try {
      let res;
      try {
        res = await c._fetch(url, { headers, signal: controller.signal, cache: "no-store" });
      } catch (err) {
        if (gen !== this.gen) return "again";
        throw why || networkError(err, url, this.name);
      }
      status = res.status;
      if (gen !== this.gen) {
        controller.abort();
        return "again";
      }
      if (!res.ok || !res.body) {
        clearTimeout(firstBytes);
        const text = await res.text().catch(() => "");
        const err = httpError({ status: res.status, headers: res.headers, body: text }, this.name);
        return (await this._refused(err, subs, state)) ? "again" : "ended";
      }
      let expired = false;
      const parser = new SseParser((type, data) => {
        if (type === "expired") {
          expired = true;
          return;
        }
        let message;
        try {
          message = JSON.parse(data);
        } catch (err) {
          c._report(new SwitchboardError("bad_reply", `not JSON in an SSE event: ${data.slice(0, 80)}`, { transport: this.name }));
          return;
        }
        const sub = message && c._subs.get(message.topic);
        if (!sub || !subs.includes(sub)) return;
        if (type === "gap") sub._gap(message.slow, this.name);
        else sub._deliver(eventOf(message), this.name);
      }, (id) => {
        // The opening's position: where each topic without a cursor of its own starts.
        for (const [topic, cursor] of parseCompound(id)) {
          const sub = c._subs.get(topic);
          if (sub && subs.includes(sub) && !sub.cursor) sub.cursor = cursor;
        }
      });
      const refreshIn = token ? c._tokens.refreshIn(token) : null;
      if (refreshIn !== null) {
        // Before the token runs out, a new stream with a new one (the cursors resume it).
        refresh = this._after(Math.max(500, refreshIn * 1000), () => {
          c._tokens.stale = true;
          this._kick();
        });
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const idleMs = c.options.streamIdleTimeout;
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (gen !== this.gen) return "again";
          throw why || networkError(err, url, this.name);
        }
        if (gen !== this.gen) {
          reader.cancel().catch(() => {});
          return "again";
        }
        if (chunk.done) break;
        if (!this.proven || bytes === 0) {
          clearTimeout(firstBytes);
          this._prove(subs);
        }
        bytes += chunk.value.byteLength;
        c._traffic({ type: "in", transport: this.name, kind: "stream", bytes: chunk.value.byteLength });
        clearTimeout(idle);
        this.timers.delete(idle);
        idle = this._after(idleMs, () => giveUp(new SwitchboardError("timeout",
          `the stream was silent for ${idleMs} ms (no heartbeat): a new one`, { transport: this.name })));
        parser.feed(decoder.decode(chunk.value, { stream: true }));
        if (gen !== this.gen) return "again";
      }
      if (expired) {
        c._tokens.stale = true; // the server ended it at the token's exp: a new token, a new stream
        if (!c._tokens.refreshable) throw new SwitchboardError("unauthorized", "the token has expired", { transport: this.name, fromServer: true });
        return "again";
      }
      return parser.retry ?? 0;
    } finally {
      for (const timer of [firstBytes, idle, refresh]) {
        clearTimeout(timer);
        this.timers.delete(timer);
      }
      c._traffic({ type: "end", transport: this.name, kind: "stream", url, status, bytes });
    }
  }
}

/** Long polling of every topic in one request: /api/long-poll?topic=a&topic=b&since=... */
class LongPollTransport extends HttpTransport {
  constructor(client) {
    super(client, "long-polling");
  }

  start() { this._loop(); }

  async _loop() {
    const c = this.client;
    const state = { retried: false };
    while (!this.ended) {
      const subs = c._activeSubs();
      if (!subs.length) {
        await this._idle();
        continue;
      }
      const gen = this.gen;
      try {
        await c._position(subs, this.name);
        if (gen !== this.gen || subs.some((sub) => !sub.active)) continue;
        const token = await c._tokens.get();
        if (gen !== this.gen) continue;
        const res = await this._poll(subs, token, gen);
        if (res === null) continue; // abandoned for new topics
        if (res.status === 204) {
          this._prove(subs);
        } else if (res.status === 200) {
          this._prove(subs);
          this._apply(subs, res.json());
        } else if (!(await this._refused(httpError(res, this.name), subs, state))) {
          return;
        } else {
          continue;
        }
        state.retried = false;
      } catch (err) {
        if (gen === this.gen && !this.ended) this._end(err);
        else if (!this.ended) continue;
        return;
      }
    }
  }

  async _poll(subs, token, gen) {
    const c = this.client;
    let hold = c.options.longPollTimeout;
    const left = TokenSource.secondsLeft(token);
    if (left !== null) hold = Math.max(0, Math.min(hold, Math.floor(left - 2))); // answered before exp
    const params = new URLSearchParams();
    for (const sub of subs) params.append("topic", sub.topic);
    params.set("timeout", String(hold));
    params.set("limit", String(c.options.pageLimit));
    const since = compound(subs);
    if (since) params.set("since", since);
    const controller = new AbortController();
    this.controller = controller;
    let why = null;
    // A connection that died without a word would hang for ever: give up a while after the hold.
    this._after(hold * 1000 + 15000, () => {
      why = new SwitchboardError("timeout", "no answer to a long poll within its hold plus 15 s", { transport: this.name });
      controller.abort();
    });
    // Held by the server without failing: the path works.
    this._after(Math.min(2000, c.options.connectTimeout), () => { if (gen === this.gen) this._prove(subs); });
    try {
      return await c._http("long-poll", this.name, `${c._url("longPoll")}?${params}`, { token, signal: controller.signal });
    } catch (err) {
      if (gen !== this.gen && !why) return null;
      throw why || err;
    } finally {
      this._clearTimers();
    }
  }

  _apply(subs, page) {
    const c = this.client;
    const mine = (topic) => {
      const sub = c._subs.get(topic);
      return sub && subs.includes(sub) ? sub : null;
    };
    // A topic's gap is told with its first event after the hole (app/transports/longpoll.py).
    for (const topic of page.gaps || []) {
      const sub = mine(topic);
      if (sub) sub._gap(false, this.name);
    }
    for (const event of page.events || []) {
      const sub = mine(event.topic);
      if (sub) sub._deliver(eventOf(event), this.name);
    }
    // Every topic with history has a position in the answer, quiet ones too.
    for (const [topic, cursor] of parseCompound(page.cursor)) {
      const sub = mine(topic);
      if (sub) sub.cursor = cursor;
    }
  }
}

/** Interval polling, one request per topic a round, If-None-Match for a body-less 304.
 *  Only when asked for by name: it is the demo of what the other three save. */
class PollingTransport extends HttpTransport {
  constructor(client) {
    super(client, "polling");
  }

  start() { this._loop(); }

  async _loop() {
    const c = this.client;
    const state = { retried: false };
    while (!this.ended) {
      const subs = c._activeSubs();
      if (!subs.length) {
        await this._idle();
        continue;
      }
      const gen = this.gen;
      let full = false;
      try {
        for (const sub of subs) {
          if (gen !== this.gen || this.ended) break;
          if (c._subs.get(sub.topic) !== sub || !sub.active) continue;
          const res = await this._poll(sub, gen);
          if (res === null) break;
          if (res.status === 304 || res.status === 200) {
            this._prove([sub]);
            if (res.status === 200) full = this._apply(sub, res.json()) || full;
            state.retried = false;
          } else if (!(await this._refused(httpError(res, this.name), [sub], state))) {
            return;
          }
        }
      } catch (err) {
        if (gen === this.gen && !this.ended) this._end(err);
        else if (!this.ended) continue;
        return;
      }
      if (gen === this.gen && !this.ended) await this._idle(full ? 0 : c.options.pollInterval);
    }
  }

  async _poll(sub, gen) {
    const c = this.client;
    const first = !sub._positioned;
    const params = new URLSearchParams({ limit: String(first ? 1 : c.options.pageLimit) });
    const headers = {};
    if (sub.cursor) {
      params.set("since", sub.cursor);
      headers["If-None-Match"] = `"${sub.cursor}"`;
    }
    const controller = new AbortController();
    this.controller = controller;
    let why = null;
    this._after(c.options.replyTimeout, () => {
      why = new SwitchboardError("timeout", `no answer to a poll within ${c.options.replyTimeout} ms`, { transport: this.name });
      controller.abort();
    });
    try {
      return await c._http("poll", this.name, `${c._url("events", false, sub.topic)}?${params}`,
        { headers, signal: controller.signal });
    } catch (err) {
      if (gen !== this.gen && !why) return null;
      throw why || err;
    } finally {
      this._clearTimers();
    }
  }

  /** Returns true when the answer was a full page (more are waiting: no pause). */
  _apply(sub, page) {
    if (!sub._positioned) { // the first poll only finds where the topic is now
      sub._positioned = true;
      if (!sub.cursor) sub.cursor = page.cursor || null;
      return false;
    }
    if (page.gap) sub._gap(false, this.name);
    for (const event of page.events) sub._deliver(eventOf(event), this.name);
    if (page.cursor) sub.cursor = page.cursor;
    return page.events.length >= this.client.options.pageLimit;
  }
}

const TRANSPORT_CLASSES = {
  websocket: WebSocketTransport, sse: SseTransport, "long-polling": LongPollTransport, polling: PollingTransport,
};

// ------------------------------------------------------------------------ the client

export class Switchboard {
  /**
   * @param {string} url the server's base URL ("https://host/"; relative to the page in a browser)
   * @param {object} [options] see switchboard.d.ts
   */
  constructor(url, options = {}) {
    this.options = {
      ...DEFAULTS, ...options,
      paths: { ...DEFAULTS.paths, ...options.paths },
      backoff: { ...DEFAULTS.backoff, ...options.backoff },
    };
    const here = globalThis.location ? globalThis.location.href : undefined;
    this.url = new URL(url || "/", here).href;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._fetch = options.fetch || ((...args) => globalThis.fetch(...args));
    const wanted = options.transports || DEFAULTS.transports;
    for (const name of wanted) {
      if (!KNOWN_TRANSPORTS.includes(name)) throw new SwitchboardError("bad_option", `unknown transport ${name}`);
    }
    // A transport without its implementation here (Node without a WebSocket) is left out.
    this.transports = wanted.filter((name) => name !== "websocket" || typeof this._WebSocket === "function");
    if (!this.transports.length) {
      throw new SwitchboardError("bad_option", "no usable transport: pass options.WebSocket (e.g. the ws package)");
    }
    this.state = "idle"; // connecting, open, reconnecting, closed
    this.transport = null; // the transport in use, or being tried
    this.stats = { events: 0, gaps: 0, duplicates: 0, reconnects: 0 };
    this._tokens = new TokenSource(options.token);
    this._listeners = new Map();
    this._subs = new Map();
    this._backoff = new Backoff(this.options.backoff);
    this._index = 0;
    this._current = null;
    this._timer = null;
    this._stableTimer = null;
    this._everOpen = false;
    this._lastEstablished = null;
    this._lastImmediate = 0;
  }

  // -- events --------------------------------------------------------------------------

  /** Listen to "state", "transport", "error" or "traffic"; returns a function that stops. */
  on(name, listener) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(listener);
    return () => this.off(name, listener);
  }

  off(name, listener) {
    const set = this._listeners.get(name);
    if (set) set.delete(listener);
  }

  _emit(name, detail) {
    for (const listener of [...(this._listeners.get(name) || [])]) safely(listener, detail);
  }

  _traffic(detail) {
    if (this._listeners.has("traffic")) this._emit("traffic", detail);
  }

  /** Tell the application about a failure (a subscription's onError, the "error" event). */
  _report(err, sub = null) {
    if (sub && typeof sub.options.onError === "function") safely(sub.options.onError, err);
    const listeners = this._listeners.get("error");
    if (listeners && listeners.size) this._emit("error", err);
    else if (!sub || typeof sub.options.onError !== "function") console.warn("switchboard:", err);
  }

  _setState(state, extra = {}) {
    if (this.state === state && extra.retryIn === undefined) return;
    this.state = state;
    this._emit("state", { state, transport: this.transport, ...extra });
  }

  // -- the API -------------------------------------------------------------------------

  /** Follow a topic: onEvent(event, {history, transport}) for each event, in order, once;
   *  onGap({topic, slow}) where events were lost. `since`: resume after this cursor;
   *  `history`: first deliver the topic's newest events (at most this many). */
  subscribe(topic, options = {}) {
    if (this.state === "closed") throw new SwitchboardError("closed", "this Switchboard is closed");
    if (typeof topic !== "string" || !TOPIC.test(topic)) throw new SwitchboardError("bad_topic", `not a topic name: ${String(topic).slice(0, 40)}`);
    if (this._subs.has(topic)) throw new SwitchboardError("already_subscribed", `already subscribed to ${topic}`);
    const sub = new Subscription(this, topic, options);
    this._subs.set(topic, sub);
    this._attach(sub);
    return sub;
  }

  async _attach(sub) {
    const limit = sub.options.history;
    if (limit && !sub.cursor) {
      try {
        const page = await this.history(sub.topic, { limit });
        if (sub.state !== "subscribing") return;
        for (const event of page.events) sub._deliver(event, "http", true);
        sub.cursor = page.cursor || null;
        sub._positioned = true;
      } catch (err) {
        this._report(err, sub); // and follow it from now on
      }
    }
    if (sub.state !== "subscribing" || this._subs.get(sub.topic) !== sub) return;
    sub._attached = true;
    if (this.state === "idle") this._start();
    else if (this._current) this._current.add(sub);
  }

  _unsubscribe(sub) {
    if (sub.state === "unsubscribed" || sub.state === "failed") return;
    const wasActive = sub.active;
    sub._end("unsubscribed");
    if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
    if (wasActive && this._current) this._current.remove(sub);
  }

  _fail(sub, err) {
    if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
    sub._end("failed", err);
    this._report(err, sub);
  }

  _activeSubs() {
    return [...this._subs.values()].filter((sub) => sub.active);
  }

  /** Publish an event: over the socket when /ws is open, else over HTTP. Resolves with its
   *  id and topic (over HTTP, the whole stored event); rejects with a SwitchboardError.
   *  Never retried: a publish that failed with "disconnected" may or may not have been stored. */
  async publish(topic, data, { type } = {}) {
    if (this.state === "closed") throw new SwitchboardError("closed", "this Switchboard is closed");
    const T = this._current;
    if (T && T.name === "websocket" && T.opened && !T.ended) return T.publish(topic, data, type);
    const body = JSON.stringify(type === undefined ? { data } : { type, data });
    const url = this._url("events", false, topic);
    for (let attempt = 0; ; attempt += 1) {
      const res = await this._http("publish", "http", url, {
        method: "POST", body, headers: { "Content-Type": "application/json" }, force: attempt > 0,
      });
      if (res.status === 201) return res.json();
      const err = httpError(res, "http");
      if (err.status !== 401 || attempt > 0 || !this._tokens.refreshable) throw err;
    }
  }

  /** The topic's newest events (polling endpoint): {events, cursor, gap}. With `since`, those after it. */
  async history(topic, { limit = 50, since } = {}) {
    const params = new URLSearchParams({ limit: String(limit) });
    if (since) params.set("since", since);
    const res = await this._http("history", "http", `${this._url("events", false, topic)}?${params}`);
    if (res.status !== 200) throw httpError(res, "http");
    return res.json();
  }

  /** Cut the connection now, as a network failure would, and reconnect after `delayMs`
   *  (default: the backoff's next wait); every topic resumes from its cursor. */
  drop(delayMs) {
    if (this.state === "closed" || this.state === "idle") return;
    if (this._current) this._current.stop();
    this._current = null;
    this._lost();
    this._schedule(delayMs ?? this._backoff.next(), null, true);
  }

  /** Stop: close the connection, end every subscription, clear every timer. */
  close() {
    if (this.state === "closed") return;
    clearTimeout(this._timer);
    clearTimeout(this._stableTimer);
    if (this._current) this._current.stop();
    this._current = null;
    for (const sub of [...this._subs.values()]) sub._end("unsubscribed");
    this._subs.clear();
    this._setState("closed");
  }

  // -- connecting ----------------------------------------------------------------------

  _start() {
    clearTimeout(this._timer);
    this._timer = null;
    if (this.state === "closed") return;
    const name = this.transports[this._index];
    this.transport = name;
    const T = new TRANSPORT_CLASSES[name](this);
    this._current = T;
    this._setState(this._everOpen ? "reconnecting" : "connecting");
    T.start();
  }

  _established(T) {
    if (T !== this._current) return;
    this._everOpen = true;
    clearTimeout(this._stableTimer);
    this._stableTimer = setTimeout(() => this._backoff.reset(), this.options.stableAfter);
    this._setState("open");
    if (this._lastEstablished !== T.name) {
      const previous = this._lastEstablished;
      this._lastEstablished = T.name;
      this._emit("transport", { transport: T.name, previous });
    }
  }

  /** Every subscription is back to "subscribing": the next connection resumes it. */
  _lost() {
    clearTimeout(this._stableTimer);
    for (const sub of this._subs.values()) if (sub.state === "subscribed") sub._setState("subscribing");
  }

  async _ended(T, err, info) {
    if (T !== this._current) return;
    this._current = null;
    this._lost();
    if (this.state === "closed") return;
    if (err) this._report(err);
    if (err && (err.status === 401 || err.code === "unauthorized")) this._tokens.stale = true; // ask again
    const now = Date.now();
    let delay;
    if (info.immediate && now - this._lastImmediate > 2000) {
      this._lastImmediate = now; // at once, but not twice in a row
      delay = 0;
    } else {
      delay = this._backoff.next();
      if (err && err.retryAfter) delay = Math.max(delay, err.retryAfter * 1000);
      if (info.retryMs) delay = Math.max(delay, info.retryMs);
    }
    if (!info.proven && !(err && err.fromServer) && this.transports.length > 1) {
      // It never got through. If the server answers plain HTTP, the transport is what fails
      // (no upgrade through this proxy, a buffered stream): try the next one.
      this._setState("reconnecting", { retryIn: delay, error: err || undefined });
      const reachable = await this._probe();
      if (this.state === "closed" || this._current || this._timer) return;
      if (reachable) this._index = (this._index + 1) % this.transports.length;
    }
    this._schedule(delay, err);
  }

  _schedule(delay, err, dropped = false) {
    clearTimeout(this._timer);
    this.stats.reconnects += 1;
    this.transport = this.transports[this._index];
    this._setState("reconnecting", { retryIn: delay, error: err || undefined, dropped });
    this._timer = setTimeout(() => this._start(), delay);
  }

  async _probe() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), Math.min(5000, this.options.connectTimeout));
    try {
      const res = await this._http("probe", "http", this._url("health"), { signal: controller.signal, auth: false });
      return res.status === 200;
    } catch (err) {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  _subBackoff(sub) {
    if (!sub._backoff) sub._backoff = new Backoff(this.options.backoff);
    return sub._backoff.next();
  }

  /** Give each subscription without a cursor one (its topic's newest event now), so that a
   *  transport that keeps nothing open between requests loses nothing in between. */
  async _position(subs, transport) {
    for (const sub of subs) {
      if (sub._positioned) continue;
      let page;
      try {
        page = await this.history(sub.topic, { limit: 1 });
      } catch (err) {
        err.transport = transport;
        if (err.status !== 403) throw err;
        this._fail(sub, Object.assign(err, { topic: sub.topic })); // this identity may not follow it
        continue;
      }
      if (!sub.cursor) sub.cursor = page.cursor || null;
      sub._positioned = true;
    }
  }

  /** Which of `subs` this identity may not follow: [sub, error] for each 403. */
  async _forbidden(subs, transport) {
    const refused = [];
    for (const sub of subs) {
      const res = await this._http("probe", transport, `${this._url("events", false, sub.topic)}?limit=1`);
      if (res.status === 403) refused.push([sub, Object.assign(httpError(res, transport), { topic: sub.topic })]);
    }
    return refused;
  }

  _url(which, webSocket = false, topic = "") {
    const path = this.options.paths[which].replace("{topic}", encodeURIComponent(topic));
    const url = new URL(path, this.url);
    if (webSocket) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  /** One HTTP request, read whole: {status, headers, body, json()}. Network failures reject
   *  with a SwitchboardError "network". `token` (or the current one) goes as a Bearer header. */
  async _http(kind, transport, url, init = {}) {
    const headers = { ...init.headers };
    if (init.auth !== false) {
      const token = init.token !== undefined ? init.token : await this._tokens.get(Boolean(init.force));
      if (token) headers.Authorization = `Bearer ${token}`;
    }
    const method = init.method || "GET";
    this._traffic({ type: "start", transport, kind, url, method });
    let status = 0;
    let body = "";
    try {
      const res = await this._fetch(url, { method, headers, body: init.body, signal: init.signal, cache: "no-store" });
      status = res.status;
      body = await res.text();
      const json = () => {
        try {
          return JSON.parse(body);
        } catch (err) {
          throw new SwitchboardError("bad_reply", `not JSON from ${url}: ${body.slice(0, 80)}`, { status, transport });
        }
      };
      return { status, headers: res.headers, body, json };
    } catch (err) {
      throw networkError(err, url, transport);
    } finally {
      this._traffic({ type: "end", transport, kind, url, method, status, bytes: byteLength(body) });
    }
  }
}

export default Switchboard;
