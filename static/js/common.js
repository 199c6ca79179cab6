/* Shared by every demo page: clock offset, backoff, counters, chat rendering, publishing,
 * and the one way a page says why the server refused it (401: sign in, 403: not allowed).
 * No framework, no build step. Message text is always rendered as text, never as HTML. */
(function () {
  "use strict";

  const body = document.body;

  /** Capped exponential backoff with full jitter: never a hot retry loop. */
  class Backoff {
    constructor(baseMs = 500, capMs = 15000) {
      this.baseMs = baseMs;
      this.capMs = capMs;
      this.attempt = 0;
    }
    /** Milliseconds to wait before the next attempt. */
    next() {
      const ceiling = Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
      this.attempt += 1;
      return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    }
    reset() { this.attempt = 0; }
  }

  /** Live numbers bound to elements with data-counter="name". */
  class Counters {
    constructor(root = document) {
      this.values = {};
      this.root = root;
    }
    add(key, amount = 1) { this.set(key, (this.values[key] || 0) + amount); }
    set(key, value) {
      this.values[key] = value;
      for (const el of this.root.querySelectorAll(`[data-counter="${key}"]`)) {
        el.textContent = typeof value === "number" && key.includes("bytes") ? formatBytes(value) : String(value);
      }
    }
    get(key) { return this.values[key] || 0; }
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(2)} MB`;
  }

  function byteLength(text) {
    return new TextEncoder().encode(text).length;
  }

  const clock = {
    offset: 0, // server clock minus this browser's clock, seconds
    /** Estimate the offset to the server clock from the fastest of a few /healthz round trips. */
    async measure(url = "/healthz") {
      let best = null;
      for (let i = 0; i < 3; i += 1) {
        const t0 = Date.now() / 1000;
        try {
          const res = await fetch(url, { cache: "no-store" });
          const data = await res.json();
          const t1 = Date.now() / 1000;
          if (best === null || t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: data.time - (t0 + t1) / 2 };
        } catch (err) {
          console.warn("clock offset: /healthz failed", err);
        }
      }
      if (best) this.offset = best.offset;
      return this.offset;
    },
    now() { return Date.now() / 1000 + this.offset; },
    /** Milliseconds from the event's server time to now, on the server's clock. */
    delayMs(event) { return Math.max(0, Math.round((this.now() - event.time) * 1000)); },
  };

  /** A request refused by access control: 401 = the server does not know who you are (not
   *  signed in, or the token expired or is not valid), 403 = it knows you and you may not.
   *  Every transport's form of both becomes one of these (HTTP status, a /ws error op, a
   *  STOMP ERROR frame), so every page explains a refusal the same way. */
  class Refusal extends Error {
    constructor(status, code, message) {
      super(message || (status === 401 ? "not signed in" : "not allowed"));
      this.name = "Refusal";
      this.status = status;
      this.code = code || (status === 401 ? "unauthorized" : "forbidden");
    }

    /** What the user can do about it. */
    get reason() { return this.status === 401 ? "sign in" : "not allowed"; }

    describe() { return `Refused with ${this.status} (${this.reason}): ${this.message}`; }

    /** A /ws error op ({"op": "error", "error": "unauthorized" | "forbidden", "message"}), or null. */
    static fromWsError(op) {
      const status = { unauthorized: 401, forbidden: 403 }[op && op.error];
      return status ? new Refusal(status, op.error, op.message) : null;
    }

    /** A STOMP ERROR frame that refuses a destination, or null for any other ERROR. The
     *  frame names no status: its code words say which (an explicit one first), then its
     *  wording ("sign in", "expired" before "may not", which a 401's message also holds). */
    static fromStompError(frame) {
      const headers = frame.headers || {};
      const text = [headers.error, headers.code, headers.message, frame.body].filter(Boolean).join("\n");
      let status = null;
      if (/\bforbidden\b|\b403\b/i.test(text)) status = 403;
      else if (/\bunauthori[sz]ed\b|\b401\b/i.test(text)) status = 401;
      else if (/sign in|authentication failed|token (has )?expired|token is not valid|invalid_token/i.test(text)) status = 401;
      else if (/you may not|not allowed to/i.test(text)) status = 403;
      return status ? new Refusal(status, null, headers.message || frame.body) : null;
    }
  }

  /** The error a failed fetch() response stands for: a Refusal for 401 and 403, else an
   *  Error with the status and the server's message (its JSON {"error", "message"}). */
  async function responseError(res) {
    let message = res.statusText;
    let code = null;
    try {
      const body = await res.json();
      if (body && body.message) message = body.message;
      if (body && body.error) code = body.error;
    } catch (err) { /* not JSON: keep statusText */ }
    if (res.status === 401 || res.status === 403) return new Refusal(res.status, code, message);
    const error = new Error(`HTTP ${res.status}${message ? ` ${message}` : ""}`);
    error.status = res.status;
    return error;
  }

  /** Why a stream URL was refused: EventSource never shows a status, so ask once with
   *  fetch(). Resolves to a Refusal or another Error, or null when the stream would open. */
  async function streamError(url) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 10000);
    try {
      const res = await fetch(url, { cache: "no-store", signal: controller.signal,
        headers: { Accept: "text/event-stream" } });
      return res.ok ? null : await responseError(res);
    } catch (err) {
      return err;
    } finally {
      clearTimeout(timer);
      controller.abort(); // an open stream is not wanted: this was only a question
    }
  }

  /** One line for any error: a refusal's reason, else its message. */
  function explain(err) {
    return err instanceof Refusal ? err.describe() : (err && err.message) || String(err);
  }

  /** The demo sign-in's token, kept in this tab's sessionStorage for the SSE page's fetch()
   *  reader (a Bearer header). A demo shortcut: a real page keeps tokens out of scripts' reach. */
  const demoToken = {
    key: "switchboard.demo-token",
    save(token, sub, expiresIn) {
      try {
        sessionStorage.setItem(this.key, JSON.stringify({ token, sub, expiresAt: Date.now() / 1000 + expiresIn }));
      } catch (err) { /* storage off: the fetch reader just starts empty */ }
    },
    /** {token, sub, expiresAt} while it lives, else null. */
    load() {
      try {
        const kept = JSON.parse(sessionStorage.getItem(this.key) || "null");
        return kept && kept.token && kept.expiresAt > Date.now() / 1000 ? kept : null;
      } catch (err) {
        return null;
      }
    },
    clear() {
      try { sessionStorage.removeItem(this.key); } catch (err) { /* nothing kept */ }
    },
  };

  /** The chat room of a page: renders events, sends what the user types. */
  class ChatRoom {
    constructor(root, { onSend }) {
      this.list = root.querySelector("[data-messages]");
      this.statusEl = root.querySelector("[data-status]");
      this.form = root.querySelector("[data-chat-form]");
      this.input = this.form ? this.form.querySelector("input") : null;
      this.seen = new Set();
      if (this.form) {
        this.form.addEventListener("submit", async (ev) => {
          ev.preventDefault();
          const text = this.input.value.trim();
          if (!text) return;
          this.input.value = "";
          try {
            await onSend(text);
          } catch (err) {
            // A refusal also stays in the list: a polling page rewrites its status each poll.
            if (this.refused(err)) this.notice(`Not sent: ${err.describe()}`);
            else this.status(`Send failed: ${err.message}`, "error");
            this.input.value = text;
          }
        });
      }
    }

    status(text, kind = "info") {
      if (!this.statusEl) return;
      this.statusEl.textContent = text;
      this.statusEl.dataset.kind = kind;
    }

    /** Say why the server refused (401: sign in, 403: not allowed), with `then` added
     *  (e.g. "; retrying in 4 s"). Returns false, showing nothing, for any other error. */
    refused(err, then = "") {
      if (!(err instanceof Refusal)) return false;
      this.status(`${err.describe()}${then}`, "error");
      return true;
    }

    /** Show one event; returns false if this id was already shown (no duplicates on screen). */
    add(event, { replayed = false, history = false, delayMs = null } = {}) {
      if (this.seen.has(event.id)) return false;
      this.seen.add(event.id);
      const li = document.createElement("li");
      li.className = "message";
      li.dataset.id = event.id;
      if (event.sender === Switchboard.sender) li.classList.add("mine");
      if (replayed) li.classList.add("replayed");
      if (history) li.classList.add("history");
      const who = document.createElement("span");
      who.className = "sender";
      who.textContent = event.sender || "server";
      const text = document.createElement("span");
      text.className = "text";
      const data = event.data;
      text.textContent = data && typeof data === "object" && "text" in data ? String(data.text) : JSON.stringify(data);
      const meta = document.createElement("span");
      meta.className = "meta";
      const parts = [`#${event.id}`];
      if (delayMs !== null) parts.push(`${delayMs} ms`);
      if (replayed) parts.push("replayed");
      if (history) parts.push("history");
      meta.textContent = parts.join(" · ");
      li.append(who, text, meta);
      this.list.append(li);
      li.scrollIntoView({ block: "nearest" });
      return true;
    }

    /** Show the topic's recent messages (GET the polling URL without since).
     *  Returns the cursor to resume after, or null if there is none or the read failed. */
    async loadHistory(url) {
      try {
        const res = await fetch(url, { cache: "no-store" });
        if (!res.ok) throw await responseError(res);
        const page = await res.json();
        for (const event of page.events) this.add(event, { history: true });
        return page.cursor || null;
      } catch (err) {
        this.notice(`History could not be loaded (${explain(err)}); showing new messages only.`);
        return null;
      }
    }

    notice(text) {
      const li = document.createElement("li");
      li.className = "notice";
      li.textContent = text;
      this.list.append(li);
    }
  }

  /** POST a chat message over HTTP (the sender comes from the session or the token cookie).
   *  Rejects with a Refusal on 401 and 403. */
  async function publishHTTP(url, data, type = "message") {
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type, data }),
    });
    if (!res.ok) throw await responseError(res);
    return res.json();
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  const Switchboard = {
    sender: body.dataset.sender,
    data: body.dataset,
    Backoff, Counters, ChatRoom, clock, publishHTTP, formatBytes, byteLength, sleep,
    Refusal, responseError, streamError, explain, demoToken,
  };
  window.Switchboard = Switchboard;
})();
