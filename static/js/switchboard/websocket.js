/* switchboard.js, part: the /ws JSON-protocol transport. */

import { SwitchboardError } from "./errors.js";
import { refreshMargin } from "./tokens.js";
import { byteLength, eventOf } from "./util.js";

// Each transport is made for one connection attempt: start() begins it; it calls
// client._established(this) once it has got through, and client._ended(this, error, info)
// exactly once when it ends (info.proven: it got through at some point; info.immediate:
// come back at once, e.g. with a new token). stop() ends it without a word (the client's
// own decision). add(sub) and remove(sub) follow a topic or stop following it.

export class WebSocketTransport {
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
      { transport: this.name, fromServer: ev.code in codes, closeCode: ev.code, closeReason: ev.reason || "" });
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
