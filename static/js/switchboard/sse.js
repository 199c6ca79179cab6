/* switchboard.js, part: Server-Sent Events of every topic on one stream, read with fetch()
 * (or with the platform's EventSource, when asked for and no header is needed: eventsource.js). */

import { SwitchboardError, httpError, networkError } from "./errors.js";
import { eventSourceStream } from "./eventsource.js";
import { HttpTransport } from "./http.js";
import { compound, eventOf, parseCompound } from "./util.js";

/** The pieces of a text/event-stream (WHATWG HTML, "Server-sent events"), fed as text. */
export class SseParser {
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

/** Server-Sent Events of every topic on one stream, read with fetch() or EventSource. */
export class SseTransport extends HttpTransport {
  constructor(client) {
    super(client, "sse");
  }

  /** One stream of every topic; when the server ends it (shutdown, a slow consumer), the
   *  transport ends with the server's retry: delay, and the client opens a new one. */
  async _round(subs, gen, state) {
    const outcome = await this._stream(subs, gen, state);
    if (this.ended || gen !== this.gen || outcome === "again") return true; // restarted for new topics (or stopped)
    this._end(null, { retryMs: outcome });
    return false;
  }

  /** One stream. Resolves with "again" (open a new one now) or the server's retry: delay
   *  after it ended the stream; rejects with the error that ended it. */
  async _stream(subs, gen, state) {
    const c = this.client;
    const token = await c._tokens.get();
    if (gen !== this.gen) return "again";
    // No Authorization header to send (a cookie, or anonymous): EventSource can read it.
    if (!token && c.options.eventSource && typeof c._EventSource === "function") {
      return eventSourceStream(this, subs, gen, state, c._EventSource);
    }
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
          // Followed from here on: a topic still without a cursor is an empty one, and a
          // reconnect reads what it got meanwhile (client._catchUp).
          for (const sub of subs) sub._positioned = true;
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
