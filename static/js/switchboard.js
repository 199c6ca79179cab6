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
 *   the old one runs out. With `eventSource: true` and no token (a session cookie, or
 *   anonymous) the stream is read with EventSource instead, which reconnects by itself
 *   with Last-Event-ID (switchboard/eventsource.js).
 * - Every failure is a SwitchboardError with the server's code (`forbidden`,
 *   `rate_limited`, ...) or one of this file's own (`network`, `timeout`, `disconnected`,
 *   `closed`, `token_failed`, `bad_reply`): publish() rejects with it, a subscription's
 *   onError gets it, and the "error" event carries it. Nothing is swallowed: with no "error"
 *   listener it goes to console.warn, and an exception thrown by an application callback is
 *   rethrown (asynchronously, so the connection carries on).
 *
 * Node 20: pass `WebSocket` (the `ws` package), and `EventSource` (the `eventsource` package)
 * to use `eventSource: true`; fetch is built in. */

import { SwitchboardError, httpError, networkError } from "./switchboard/errors.js";
import { LongPollTransport, PollingTransport } from "./switchboard/polling.js";
import { SseTransport } from "./switchboard/sse.js";
import { Subscription } from "./switchboard/subscription.js";
import { TokenSource } from "./switchboard/tokens.js";
import { Backoff, byteLength, safely } from "./switchboard/util.js";
import { WebSocketTransport } from "./switchboard/websocket.js";

export { SwitchboardError };

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
  eventSource: false, // read SSE with the platform's EventSource when no Authorization header is needed
  eventTypes: ["message", "presence"], // the event types an EventSource listens to ("gap" always)
  withCredentials: false, // EventSource: send cookies to another origin
});
const KNOWN_TRANSPORTS = ["websocket", "sse", "long-polling", "polling"];
const TOPIC = /^(?=.{1,128}$)[A-Za-z0-9][A-Za-z0-9._:-]*(?:\{[A-Za-z0-9_:-]+\}[A-Za-z0-9._:-]*)?$/; // app/events.py name_re

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
    this._EventSource = options.EventSource || globalThis.EventSource;
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
    // Topics that were still empty have no cursor to resume after: read what they got meanwhile.
    const empty = this._activeSubs().filter((sub) => sub._positioned && !sub.cursor);
    if (!empty.length) {
      T.start();
      return;
    }
    this._catchUp(empty, name).then(() => { if (this._current === T && !T.ended) T.start(); });
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

  /** Deliver what each of `subs`, followed while its topic had no event at all, got since:
   *  the whole history, as every event in it is newer than the subscription. Where a topic
   *  got a full page or more, the oldest may be gone: a gap first. A refusal or a network
   *  failure is reported and left to the transport, which meets it again. */
  async _catchUp(subs, transport) {
    const limit = this.options.pageLimit;
    for (const sub of subs) {
      let page;
      try {
        page = await this.history(sub.topic, { limit });
      } catch (err) {
        this._report(err, sub);
        continue;
      }
      if (!sub.active || sub.cursor || !page.events.length) continue;
      if (page.events.length >= limit) sub._gap(false, transport);
      for (const event of page.events) sub._deliver(event, transport);
      sub.cursor = page.cursor || sub.cursor;
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
