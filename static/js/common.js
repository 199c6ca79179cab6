/* Shared by every demo page: clock offset, backoff, counters, chat rendering, publishing.
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
            this.status(`Send failed: ${err.message}`, "error");
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
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const page = await res.json();
        for (const event of page.events) this.add(event, { history: true });
        return page.cursor || null;
      } catch (err) {
        this.notice(`History could not be loaded (${err.message}); showing new messages only.`);
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

  /** POST a chat message over HTTP (the sender comes from the session cookie). */
  async function publishHTTP(url, data, type = "message") {
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type, data }),
    });
    if (!res.ok) {
      let message = res.statusText;
      try { message = (await res.json()).message; } catch (err) { /* keep statusText */ }
      throw new Error(`${res.status} ${message}`);
    }
    return res.json();
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  const Switchboard = {
    sender: body.dataset.sender,
    data: body.dataset,
    Backoff, Counters, ChatRoom, clock, publishHTTP, formatBytes, byteLength, sleep,
  };
  window.Switchboard = Switchboard;
})();
