/* A text/event-stream reader on fetch(), for what EventSource cannot do: request headers.
 *
 * EventStreamParser follows the WHATWG HTML "event stream interpretation" rules:
 * lines end at CRLF, LF or CR (a CR at the end of a chunk may be the first half of a
 * CRLF); a line starting with ":" is a comment; "field: value" drops one leading space
 * from the value; `data` lines join with LF; `id` is ignored if it contains NUL; `retry`
 * only if all ASCII digits; an empty line dispatches (nothing when no data came); an
 * event not finished by an empty line when the stream ends is discarded. Decoding is
 * TextDecoder's UTF-8 (it drops one leading BOM and replaces invalid bytes, as the spec
 * asks). Like browsers, the last event id carries over to the next connection.
 *
 * FetchEventSource reconnects as EventSource does (after the server's `retry`, sending
 * Last-Event-ID), backs off with capped jittered delays on errors, and gives up on a
 * 4xx (asking again will not help), keeping the server's message (401: who are you?
 * 403: not for you).
 *
 * The page wiring at the end only runs in a browser page with the fetch pane; the two
 * classes are also exported for Node (tests). */
(function (root) {
  "use strict";

  class EventStreamParser {
    /**
     * @param {{onEvent: function({type: string, data: string, lastEventId: string}),
     *          onComment?: function(string), onRetry?: function(number)}} handlers
     */
    constructor({ onEvent, onComment = () => {}, onRetry = () => {} }) {
      this.onEvent = onEvent;
      this.onComment = onComment;
      this.onRetry = onRetry;
      this.lastEventId = "";
      this.reset();
    }

    /** Start a new stream (a new connection): buffers empty, the last event id kept. */
    reset() {
      this.pending = "";
      this.skipLF = false;
      this.data = "";
      this.type = "";
      this.idBuffer = this.lastEventId;
    }

    /** Feed decoded text; complete lines are processed, a partial one is kept. */
    feed(text) {
      let i = 0;
      const n = text.length;
      if (this.skipLF && n > 0) {
        if (text.charCodeAt(0) === 10) i = 1;
        this.skipLF = false;
      }
      let start = i;
      while (i < n) {
        const c = text.charCodeAt(i);
        if (c !== 10 && c !== 13) {
          i += 1;
          continue;
        }
        const line = this.pending + text.slice(start, i);
        this.pending = "";
        if (c === 13) {
          if (i + 1 < n) {
            if (text.charCodeAt(i + 1) === 10) i += 1;
          } else {
            this.skipLF = true; // the LF of a CRLF may come with the next chunk
          }
        }
        i += 1;
        start = i;
        this.processLine(line);
      }
      this.pending += text.slice(start);
    }

    /** The stream ended: an event not finished by an empty line is discarded. */
    end() {
      this.pending = "";
      this.data = "";
      this.type = "";
      this.skipLF = false;
    }

    processLine(line) {
      if (line === "") {
        this.dispatch();
        return;
      }
      if (line.charCodeAt(0) === 58 /* : */) {
        this.onComment(line.slice(1));
        return;
      }
      const colon = line.indexOf(":");
      let field = line;
      let value = "";
      if (colon !== -1) {
        field = line.slice(0, colon);
        value = line.slice(colon + 1);
        if (value.charCodeAt(0) === 32) value = value.slice(1);
      }
      switch (field) {
        case "event":
          this.type = value;
          break;
        case "data":
          this.data += `${value}\n`;
          break;
        case "id":
          if (!value.includes("\u0000")) this.idBuffer = value;
          break;
        case "retry":
          if (/^[0-9]+$/.test(value)) this.onRetry(parseInt(value, 10));
          break;
        default:
          break; // unknown fields are ignored
      }
    }

    dispatch() {
      this.lastEventId = this.idBuffer;
      if (this.data === "") {
        this.type = "";
        return;
      }
      const data = this.data.endsWith("\n") ? this.data.slice(0, -1) : this.data;
      const event = { type: this.type || "message", data, lastEventId: this.lastEventId };
      this.data = "";
      this.type = "";
      this.onEvent(event);
    }
  }

  class HttpStatusError extends Error {
    constructor(status, serverMessage = "") {
      super(`HTTP ${status}${serverMessage ? `: ${serverMessage}` : ""}`);
      this.status = status;
      this.serverMessage = serverMessage; // the JSON error's "message", when there is one
    }
  }

  /** An EventSource-like client over fetch(), which can send any request header. */
  class FetchEventSource {
    /**
     * @param {string} url
     * @param {{headers?: Object, onOpen?: function(Response), onEvent?: function(Object),
     *          onComment?: function(string), onState?: function(string, Object)}} options
     */
    constructor(url, { headers = {}, onOpen = () => {}, onEvent = () => {}, onComment = () => {},
      onState = () => {}, Backoff = null } = {}) {
      this.url = url;
      this.headers = headers;
      this.onOpen = onOpen;
      this.onState = onState;
      this.retryMs = 2000;
      this.bytes = 0;
      this.closed = true;
      this.controller = null;
      this.backoff = Backoff ? new Backoff(1000, 30000) : null;
      this.parser = new EventStreamParser({
        onEvent,
        onComment,
        onRetry: (ms) => { this.retryMs = ms; },
      });
    }

    get lastEventId() { return this.parser.lastEventId; }

    start() {
      if (!this.closed) return;
      this.closed = false;
      this.loop();
    }

    close() {
      this.closed = true;
      if (this.controller) this.controller.abort();
    }

    nextDelay(failed) {
      if (!failed) return this.retryMs;
      return this.backoff ? Math.max(this.retryMs, this.backoff.next()) : this.retryMs;
    }

    async loop() {
      while (!this.closed) {
        const opened = Date.now();
        let failed = false;
        try {
          await this.connectOnce();
          // A stream that ends at once, again and again, must not become a hot loop.
          failed = Date.now() - opened < 1000;
          if (!this.closed) this.onState("ended", { lastEventId: this.lastEventId });
        } catch (err) {
          if (this.closed) return;
          if (err instanceof HttpStatusError && err.status >= 400 && err.status < 500) {
            this.closed = true;
            this.onState("failed", { error: err });
            return;
          }
          failed = true;
          this.onState("error", { error: err });
        }
        if (this.closed) return;
        const wait = this.nextDelay(failed);
        this.onState("waiting", { wait, lastEventId: this.lastEventId });
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }

    async connectOnce() {
      const headers = new Headers(this.headers);
      headers.set("Accept", "text/event-stream");
      if (this.lastEventId) headers.set("Last-Event-ID", this.lastEventId);
      this.controller = new AbortController();
      this.onState("connecting", { headers });
      const res = await fetch(this.url, { headers, cache: "no-store", signal: this.controller.signal });
      const type = res.headers.get("Content-Type") || "";
      if (res.status !== 200) {
        let message = "";
        try {
          message = String((await res.json()).message || "");
        } catch (err) { /* not a JSON error: the status says enough */ }
        throw new HttpStatusError(res.status, message);
      }
      if (!/^text\/event-stream\s*(;|$)/i.test(type)) {
        if (res.body) res.body.cancel().catch(() => {}); // release the connection
        throw new Error(`not an event stream: ${type}`);
      }
      if (this.backoff) this.backoff.reset();
      this.parser.reset();
      this.onOpen(res);
      const reader = res.body.getReader();
      const decoder = new TextDecoder("utf-8");
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        this.bytes += value.byteLength;
        this.parser.feed(decoder.decode(value, { stream: true }));
      }
      this.parser.feed(decoder.decode());
      this.parser.end();
    }
  }

  const api = { EventStreamParser, FetchEventSource };
  if (typeof module === "object" && module.exports) module.exports = api;
  if (root.Switchboard) Object.assign(root.Switchboard, api);

  // -- the page's fetch pane -------------------------------------------------------------

  if (typeof document === "undefined") return;
  const form = document.querySelector("[data-fetch-form]");
  if (!form || !root.Switchboard) return;
  const S = root.Switchboard;
  const log = document.querySelector("[data-fetch-log]");
  const tokenInput = form.querySelector("input[name=token]");
  const connectButton = form.querySelector("[data-fetch-connect]");
  const disconnectButton = form.querySelector("[data-fetch-disconnect]");
  const tokenNote = document.querySelector("[data-fetch-token-note]");
  const MAX_LINES = 200;
  let client = null;

  // Signed in with the index page's demo sign-in (this tab): start with that token.
  const kept = S.demoToken.load();
  if (kept) {
    tokenInput.value = kept.token;
    if (tokenNote) {
      tokenNote.textContent = `Filled in with ${kept.sub}'s demo token from the index page's sign-in ` +
        "(kept in this tab's sessionStorage: a demo shortcut; a real page keeps tokens out of scripts' reach).";
    }
  }

  /** A token in the log: enough to recognise it, not the whole credential. */
  function abbreviated(token) {
    return token.length > 24 ? `${token.slice(0, 12)}…${token.slice(-6)} (${token.length} chars)` : token;
  }

  /** Why the stream failed for good: a refusal's reason (401: sign in, 403: not allowed). */
  function failure(error) {
    if (error.status === 401 || error.status === 403) {
      return new S.Refusal(error.status, null, error.serverMessage).describe();
    }
    return error.message;
  }

  function write(text, kind = "") {
    const line = document.createElement("div");
    if (kind) line.dataset.kind = kind;
    line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
    log.append(line);
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  }

  function describe(event) {
    try {
      const parsed = JSON.parse(event.data);
      const data = parsed.data;
      const text = data && typeof data === "object" && "text" in data ? String(data.text) : JSON.stringify(data);
      return `${event.type} #${event.lastEventId} from ${parsed.sender || "server"}: ${text}`;
    } catch (err) {
      return `${event.type} #${event.lastEventId}: ${event.data}`;
    }
  }

  function setConnected(connected) {
    connectButton.disabled = connected;
    disconnectButton.disabled = !connected;
    tokenInput.readOnly = connected;
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (client || !form.reportValidity()) return;
    const token = tokenInput.value.trim();
    client = new FetchEventSource(S.data.streamUrl, {
      headers: { Authorization: `Bearer ${token}` },
      Backoff: S.Backoff,
      onOpen: (res) => write(`← ${res.status} ${res.headers.get("Content-Type")}`),
      onComment: (text) => write(`server comment:${text}`, "comment"),
      onEvent: (event) => write(describe(event), event.type === "gap" ? "gap" : "event"),
      onState: (state, info) => {
        if (state === "connecting") {
          const resume = info.headers.get("Last-Event-ID");
          write(`→ GET ${S.data.streamUrl} with Authorization: Bearer ${abbreviated(token)}` +
            (resume ? ` and Last-Event-ID: ${resume}` : ""));
        } else if (state === "ended") {
          write("stream ended by the server");
        } else if (state === "error") {
          write(`error: ${info.error.message}`, "error");
        } else if (state === "waiting") {
          write(`reconnecting in ${(info.wait / 1000).toFixed(1)} s`);
        } else if (state === "failed") {
          write(`gave up: ${failure(info.error)}`, "error");
          client = null;
          setConnected(false);
        }
      },
    });
    setConnected(true);
    client.start();
  });

  disconnectButton.addEventListener("click", () => {
    if (!client) return;
    client.close();
    write(`disconnected by you (received ${S.formatBytes(client.bytes)}; last id ${client.lastEventId || "none"})`);
    client = null;
    setConnected(false);
  });

  window.addEventListener("pagehide", () => {
    if (!client) return;
    client.close();
    client = null;
    setConnected(false);
  });
})(typeof window !== "undefined" ? window : globalThis);
