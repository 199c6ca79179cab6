/* Shared by every demo page: the page's language (t, tn, tx), clock offset, backoff,
 * counters, chat rendering, publishing, and the one way a page says why the server refused
 * it (401: sign in, 403: not allowed). No framework, no build step. Message text is always
 * rendered as text, never as HTML. */
(function () {
  "use strict";

  const body = document.body;

  // -- the page's language -----------------------------------------------------------------
  // The page embeds {"lang", "messages"} as a JSON data block (<script type="application/json"
  // id="i18n">: data, never run), built by app/i18n.py from the same gettext catalog as the
  // templates; the msgids are listed in app/js_messages.py. English sends no messages: the
  // msgids are the English text. Placeholders are {name}.

  const catalog = (() => {
    const block = document.getElementById("i18n");
    try {
      const parsed = JSON.parse(block ? block.textContent : "{}");
      return { lang: parsed.lang || document.documentElement.lang || "en", messages: parsed.messages || {} };
    } catch (err) {
      console.warn("i18n: the message catalog could not be read; showing English", err);
      return { lang: "en", messages: {} };
    }
  })();
  const pluralRules = new Intl.PluralRules(catalog.lang);

  function fill(template, params) {
    return template.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
  }

  /** The page's language's text for msgid, with {name} placeholders filled from params. */
  function t(msgid, params = {}) {
    const text = catalog.messages[msgid];
    return fill(typeof text === "string" && text ? text : msgid, params);
  }

  /** The same for a message with a count: the language's form for n ({n} is filled in). */
  function tn(singular, plural, n, params = {}) {
    const forms = catalog.messages[singular];
    let text;
    if (Array.isArray(forms) && forms.length) {
      text = forms.length === 1 ? forms[0] : forms[pluralRules.select(n) === "one" ? 0 : 1];
    } else {
      text = n === 1 ? singular : plural;
    }
    return fill(text, { n, ...params });
  }

  /** Text the server or the wire wrote (a server's message, a name, an id), shown as it
   *  came: marked translate="no", and never parsed as HTML. */
  function verbatim(text) {
    const span = document.createElement("span");
    span.translate = false;
    span.textContent = String(text);
    return span;
  }

  /** Like t(), as a DocumentFragment: a parameter that is a Node (e.g. verbatim(...)) goes in
   *  as that node, any other as text. Statuses and notices accept either. */
  function tx(msgid, params = {}) {
    const text = catalog.messages[msgid];
    const template = typeof text === "string" && text ? text : msgid;
    const fragment = document.createDocumentFragment();
    let last = 0;
    for (const match of template.matchAll(/\{(\w+)\}/g)) {
      if (!(match[1] in params)) continue;
      fragment.append(template.slice(last, match.index));
      const value = params[match[1]];
      fragment.append(value instanceof Node ? value : String(value));
      last = match.index + match[0].length;
    }
    fragment.append(template.slice(last));
    return fragment;
  }

  /** The translated name of an API error code ({"error": "<code>"}); an unknown code as is. */
  function codeName(code) {
    const names = errorCodeNames();
    return names[code] || code;
  }

  let codeNames = null;
  function errorCodeNames() {
    if (codeNames) return codeNames;
    codeNames = {
      bad_request: t("bad request"),
      bad_json: t("the body is not valid JSON"),
      bad_body: t("the body is not what the server expects"),
      bad_topic: t("not a valid topic name"),
      bad_cursor: t("not a valid cursor"),
      bad_type: t("not a valid event type"),
      bad_limit: t("not a valid limit"),
      bad_timeout: t("not a valid timeout"),
      bad_message: t("not a valid message"),
      bad_ref: t("not a valid ref"),
      unknown_op: t("unknown operation"),
      unknown_user: t("unknown demo user"),
      not_found: t("not found"),
      method_not_allowed: t("method not allowed"),
      too_large: t("too large"),
      unsupported_media_type: t("not JSON"),
      too_many_requests: t("too many requests"),
      rate_limited: t("rate limited: too many messages"),
      too_many_connections: t("too many connections to the server"),
      too_many_client_connections: t("too many connections from this client"),
      too_many_subscriptions: t("too many subscriptions"),
      already_subscribed: t("already subscribed"),
      not_subscribed: t("not subscribed"),
      slow_consumer: t("fell too far behind"),
      subscription_closed: t("subscription closed"),
      unavailable: t("service unavailable"),
      backend_unavailable: t("the event store is unavailable"),
      shutting_down: t("the server is shutting down"),
      upgrade_required: t("a WebSocket upgrade is required"),
      forbidden_origin: t("this origin is not allowed"),
      unauthorized: t("not signed in"),
      forbidden: t("not allowed"),
      cross_origin: t("a request from another site"),
      token_in_url: t("a token in the URL is refused"),
      auth_unavailable: t("access control is unavailable"),
      internal: t("server error"),
    };
    return codeNames;
  }

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

  /** An error whose message the page wrote itself, already in the page's language. */
  class PageError extends Error {
    constructor(message) {
      super(message);
      this.name = "PageError";
    }
  }

  /** An error the server answered with: an HTTP status (or null for a /ws error op), its
   *  error code and its message. The code is shown translated; the message, which the API
   *  keeps in English, is shown as the server wrote it. */
  class ServerError extends Error {
    constructor(status, code, message) {
      super(message || "");
      this.name = "ServerError";
      this.status = status;
      this.code = code || null;
    }

    describe() {
      const params = { status: this.status, code: this.code ? codeName(this.code) : "", message: verbatim(this.message) };
      if (this.status === null) return tx("{code}: {message}", params);
      if (!this.code) return this.message ? tx("HTTP {status}: {message}", params) : tx("HTTP {status}", params);
      return this.message ? tx("HTTP {status} ({code}): {message}", params) : tx("HTTP {status} ({code})", params);
    }
  }

  /** A request refused by access control: 401 = the server does not know who you are (not
   *  signed in, or the token expired or is not valid), 403 = it knows you and you may not.
   *  Every transport's form of both becomes one of these (HTTP status, a /ws error op, a
   *  STOMP ERROR frame), so every page explains a refusal the same way. */
  class Refusal extends Error {
    constructor(status, code, message) {
      super(message || "");
      this.name = "Refusal";
      this.status = status;
      this.code = code || (status === 401 ? "unauthorized" : "forbidden");
    }

    /** What the user can do about it. */
    get reason() { return this.status === 401 ? t("sign in") : t("not allowed"); }

    /** "Refused with 401 (sign in): <the server's message>", in the page's language. */
    describe() {
      const message = this.message ? verbatim(this.message) : codeName(this.code);
      return tx("Refused with {status} ({reason}): {message}", { status: this.status, reason: this.reason, message });
    }

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

  /** The error a failed fetch() response stands for: a Refusal for 401 and 403, else a
   *  ServerError with the status, the code and the server's message (its JSON {"error", "message"}). */
  async function responseError(res) {
    let message = res.statusText;
    let code = null;
    try {
      const body = await res.json();
      if (body && body.message) message = body.message;
      if (body && body.error) code = body.error;
    } catch (err) { /* not JSON: keep statusText */ }
    if (res.status === 401 || res.status === 403) return new Refusal(res.status, code, message);
    return new ServerError(res.status, code, message);
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

  /** A switchboard.js error (SwitchboardError) as the page's own kinds: a Refusal for 401 and
   *  403 (codes unauthorized, forbidden), a ServerError for any other code the server gave;
   *  a network failure or a timeout stays as it is (explain() shows its message). */
  function fromClientError(err) {
    if (!err || err.name !== "SwitchboardError") return err;
    if (err.code === "forbidden" || err.status === 403) return new Refusal(403, err.code, err.message);
    if (err.code === "unauthorized" || err.status === 401) return new Refusal(401, err.code, err.message);
    if (err.fromServer) return new ServerError(err.status, err.code, err.message);
    return err;
  }

  /** Any error, for a status line (a string or a fragment): a refusal's reason, a server
   *  error's code and message, the page's own text, or what the browser said. */
  function explain(err) {
    if (err instanceof Refusal || err instanceof ServerError) return err.describe();
    if (err instanceof PageError) return err.message;
    if (err instanceof TypeError) return tx("network error ({message})", { message: verbatim(err.message) });
    return verbatim((err && err.message) || String(err));
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

  /** Who is here: the users in the chat's topic now, each once (GET .../presence), kept
   *  current by the topic's presence events ({"action": "join" | "leave", "sender"}).
   *
   *  Call reload() once the page's stream or first poll is under way. Every presence event
   *  the page receives after that point is applied in order on top of the answer; those that
   *  arrive while the request is out wait for it, since the answer may predate them. Events
   *  set a sender present or absent, so applying one the answer already counted changes
   *  nothing, and a later event always wins. */
  class PresenceList {
    constructor(root) {
      this.root = root;
      this.list = root ? root.querySelector("[data-presence-list]") : null;
      this.countEl = root ? root.querySelector("[data-presence-count]") : null;
      this.members = new Map(); // sender -> since (server time of the join)
      this.waiting = null; // events received while a reload is out
      this.failure = null; // why the last reload failed, shown under the names
    }

    /** Ask the server who is here; a topic without presence (404) hides the list. */
    async reload() {
      if (!this.root) return;
      const waiting = (this.waiting = []);
      let answer = null;
      try {
        const res = await fetch(this.root.dataset.presenceUrl, { cache: "no-store" });
        if (res.status === 404) {
          this.root.hidden = true;
          return;
        }
        if (!res.ok) throw await responseError(res);
        answer = await res.json();
        this.failure = null;
      } catch (err) {
        this.failure = err;
      } finally {
        if (this.waiting === waiting) { // not overtaken by a newer reload
          this.waiting = null;
          if (answer) this.members = new Map(answer.members.map((m) => [m.sender, m.since]));
          for (const event of waiting) this.set(event);
          this.render();
        }
      }
    }

    /** A presence event the page received (live or replayed on its stream). */
    apply(event) {
      if (this.waiting) {
        this.waiting.push(event);
        return;
      }
      this.set(event);
      this.render();
    }

    set(event) {
      const data = event.data || {};
      if (typeof data.sender !== "string") return;
      if (data.action === "join") this.members.set(data.sender, event.time);
      else if (data.action === "leave") this.members.delete(data.sender);
    }

    render() {
      if (!this.list) return;
      const items = [...this.members].sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1)).map(([sender]) => {
        const li = document.createElement("li");
        li.translate = false; // a name, not words
        li.textContent = sender;
        if (sender === Switchboard.sender) {
          li.classList.add("mine");
          const you = document.createElement("span");
          you.translate = true;
          you.textContent = ` ${t("(you)")}`;
          li.append(you);
        }
        return li;
      });
      if (this.failure) {
        const li = document.createElement("li");
        li.className = "problem";
        li.append(tx("Who is here could not be loaded ({why})", { why: explain(this.failure) }));
        items.push(li);
      }
      this.list.replaceChildren(...items);
      if (this.countEl) this.countEl.textContent = `(${this.members.size})`;
    }
  }

  /** The chat room of a page: renders events, sends what the user types. Presence events
   *  go to its "who is here" list (chat.presence), not among the messages. */
  class ChatRoom {
    constructor(root, { onSend }) {
      this.list = root.querySelector("[data-messages]");
      this.presence = new PresenceList(root.querySelector("[data-presence]"));
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
            if (this.refused(err)) this.notice(tx("Not sent: {why}", { why: err.describe() }));
            else this.status(tx("Send failed: {why}", { why: explain(err) }), "error");
            this.input.value = text;
          }
        });
      }
    }

    /** Show a status line: a string, or a fragment from tx() (with verbatim parts). */
    status(content, kind = "info") {
      if (!this.statusEl) return;
      this.statusEl.replaceChildren(content);
      this.statusEl.dataset.kind = kind;
    }

    /** Say why the server refused (401: sign in, 403: not allowed), with `then` added
     *  (e.g. "; retrying in 4 s"). Returns false, showing nothing, for any other error. */
    refused(err, then = "") {
      if (!(err instanceof Refusal)) return false;
      this.status(join(err.describe(), then), "error");
      return true;
    }

    /** Show one event; returns false if this id was already shown (no duplicates on screen),
     *  and for a presence event, which updates "who is here" instead (unless it comes from
     *  the history read on entry: the list's own request answers for that time). */
    add(event, { replayed = false, history = false, delayMs = null } = {}) {
      if (this.seen.has(event.id)) return false;
      this.seen.add(event.id);
      if (event.type === "presence") {
        if (!history) this.presence.apply(event);
        return false;
      }
      const li = document.createElement("li");
      li.className = "message";
      li.dataset.id = event.id;
      if (event.sender === Switchboard.sender) li.classList.add("mine");
      if (replayed) li.classList.add("replayed");
      if (history) li.classList.add("history");
      const who = document.createElement("span");
      who.className = "sender";
      who.translate = false; // a name, not words
      who.textContent = event.sender || t("server");
      const text = document.createElement("span");
      text.className = "text";
      text.translate = false; // what someone typed
      const data = event.data;
      text.textContent = data && typeof data === "object" && "text" in data ? String(data.text) : JSON.stringify(data);
      const meta = document.createElement("span");
      meta.className = "meta";
      const parts = [`#${event.id}`];
      if (delayMs !== null) parts.push(`${delayMs} ms`);
      if (replayed) parts.push(t("replayed"));
      if (history) parts.push(t("history"));
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
        this.notice(tx("History could not be loaded ({why}); showing new messages only.", { why: explain(err) }));
        return null;
      }
    }

    /** Add a line to the list that is not a message (a string or a fragment). */
    notice(content) {
      const li = document.createElement("li");
      li.className = "notice";
      li.append(content);
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

  /** Strings and nodes as one fragment, in order (for a status made of several parts). */
  function join(...parts) {
    const fragment = document.createDocumentFragment();
    fragment.append(...parts.filter((part) => part !== null && part !== undefined && part !== ""));
    return fragment;
  }

  const Switchboard = {
    sender: body.dataset.sender,
    data: body.dataset,
    Backoff, Counters, ChatRoom, clock, publishHTTP, formatBytes, byteLength, sleep,
    Refusal, ServerError, PageError, responseError, streamError, explain, fromClientError, demoToken,
    lang: catalog.lang, t, tn, tx, verbatim, join, codeName,
  };
  window.Switchboard = Switchboard;
})();
