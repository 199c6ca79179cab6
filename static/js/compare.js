/* The compare page: one publisher, six panes receiving topic "compare" with six
 * techniques, a latency chart, a connection meter and a "drop all connections" test.
 *
 * Every pane keeps the id of the last event it got (its cursor) and hands it back when it
 * reconnects, each in its own technique's way; the drop test shows whether the events
 * published while it was offline come back. No framework, no inline script. */
(function () {
  "use strict";

  const S = window.Switchboard;
  const { t, tn, tx } = S;
  const D = S.data;
  const TOPIC = D.topic;
  const WINDOW = 100; // latency percentiles over the last 100 events of a pane
  const PAGE_LIMIT = 200; // events per poll / long-poll answer
  const LONGPOLL_TIMEOUT_S = 20;
  const SEEN_MAX = 5000; // ids remembered per pane to count duplicates
  const START_QUERY = "?limit=1"; // where the topic is now: every pane starts from there
  const COLORS = {
    polling: "#c45200", longpoll: "#8a6d00", sse: "#00845f", websocket: "#0061a3", stomp: "#9c3f8a",
    sockjs: "#5b5b5b",
  };

  /** A WebSocket URL from a path or a ws: URL (url_for builds those), on this page's scheme. */
  function webSocketUrl(pathOrUrl) {
    const url = new URL(pathOrUrl, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  // ---- rendering is batched: many events a second must not mean many layouts --------

  let renderTimer = null;
  const renderers = [];
  function scheduleRender() {
    if (renderTimer === null) renderTimer = setTimeout(renderAll, 80);
  }
  function renderAll() {
    renderTimer = null;
    for (const render of renderers) render();
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  /** Nearest-rank percentile of a list of numbers (not sorted in place). */
  function percentile(values, p) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
  }

  /** Latency of an event, in ms on the server's clock (offset measured at load). */
  function latencyMs(event) {
    const time = Number(event.time);
    if (!Number.isFinite(time)) return null;
    return Math.max(0, Math.round((S.clock.now() - time) * 10000) / 10);
  }

  /** WebSocket frame size for a payload of n bytes (RFC 6455 §5.2; client frames are masked). */
  function frameBytes(n, masked) {
    return n + (n < 126 ? 2 : n < 65536 ? 4 : 10) + (masked ? 4 : 0);
  }

  function payloadBytes(data) {
    if (typeof data === "string") return S.byteLength(data);
    if (data instanceof ArrayBuffer) return data.byteLength;
    if (data && typeof data.size === "number") return data.size; // Blob
    return 0;
  }

  /** A WebSocket whose traffic is counted into pane.bytes (frames, not the handshake). */
  function countedWebSocket(pane, url, protocols) {
    const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    ws.addEventListener("message", (ev) => pane.addBytes(frameBytes(payloadBytes(ev.data), false)));
    const send = ws.send.bind(ws);
    ws.send = (data) => {
      pane.addBytes(frameBytes(payloadBytes(data), true));
      send(data);
    };
    return ws;
  }

  // ---- connections: how many of the browser's 6 per host this page uses ------------

  // Each kind counts its HTTP requests in flight; "test" is the streams of the "ten streams
  // at once" section (connection-limit.js). Over HTTP/1.1 a request in flight holds one of
  // the browser's 6 connections to the host, or waits in its queue for one.
  const HTTP_KINDS = ["polling", "longpoll", "sse", "publish", "test", "sockjs"];
  const connections = {
    now: { polling: 0, longpoll: 0, sse: 0, publish: 0, test: 0, websocket: 0, stomp: 0, sockjs: 0 },
    peak: 0,
    limit: 6, // per host over HTTP/1.1; none when the page came over HTTP/2 (showProtocol)
    set(kind, count) {
      this.now[kind] = count;
      this.peak = Math.max(this.peak, this.inUse());
      scheduleRender();
    },
    http() { return HTTP_KINDS.reduce((sum, kind) => sum + this.now[kind], 0); },
    inUse() { return Math.min(this.limit, this.http()); },
    ws() { return this.now.websocket + this.now.stomp; },
    render() {
      const queued = this.http() - this.inUse();
      setText('[data-conn="http"]', String(this.inUse()));
      setText('[data-conn="queued"]', String(queued));
      for (const node of document.querySelectorAll("[data-conn-queued]")) node.hidden = queued === 0;
      setText('[data-conn="peak"]', String(this.peak));
      setText('[data-conn="ws"]', String(this.ws()));
      for (const [kind, count] of Object.entries(this.now)) setText(`[data-conn-of="${kind}"]`, String(count));
    },
  };
  renderers.push(() => connections.render());
  S.connections = connections; // connection-limit.js reports its test streams here

  function setText(selector, text, root = document) {
    for (const node of root.querySelectorAll(selector)) {
      if (node.textContent !== text) node.textContent = text;
    }
  }

  // ---- one pane per transport ------------------------------------------------------

  class Pane {
    constructor(key, label) {
      this.key = key;
      this.label = label;
      this.root = document.querySelector(`[data-pane="${key}"]`);
      this.statusEl = this.root.querySelector("[data-pane-status]");
      this.recoveryEl = this.root.querySelector("[data-recovery]");
      this.seen = new Set();
      this.seenOrder = [];
      this.latencies = [];
      this.last = null;
      this.received = 0;
      this.requests = 0;
      this.bytes = 0;
      this.bytesMeasured = false; // true when the Resource Timing API reports this pane's bytes
      this.reconnects = 0;
      this.gaps = 0;
      this.duplicates = 0;
      this.cursor = null; // id of the last event this pane got
      this.gen = 0; // bumped on every drop and resume: stale callbacks compare and bail out
      this.dropped = false;
      this.broken = false; // the connection broke; the next success is a reconnect
      this.inflight = 0;
      this.backoff = new S.Backoff(500, 10000);
      this.recovery = null;
      renderers.push(() => this.render());
    }

    /** Where this pane resumes from, as its technique sends it (for the recovery note). */
    resumeHow() { return ""; }

    /** Show the pane's status: a string, or a fragment from tx() (with verbatim parts). */
    status(content, kind = "info") {
      const text = typeof content === "string" ? content : content.textContent;
      if (this.statusEl.textContent !== text) this.statusEl.replaceChildren(content);
      this.statusEl.dataset.kind = kind;
    }

    setState(state) { this.root.dataset.state = state; }

    /** The connection works (again): count a reconnect if it had broken. */
    connected(text) {
      if (this.broken) {
        this.reconnects += 1;
        this.broken = false;
      }
      this.backoff.reset();
      this.setState("open");
      this.status(text, "ok");
      if (this.recovery) this.recovery.connected();
      scheduleRender();
    }

    /** The connection failed; `retryMs` is when the pane tries again. */
    failed(reason, retryMs) {
      this.broken = true;
      this.setState("retrying");
      this.status(S.join(reason, t("; retrying in {s} s", { s: (retryMs / 1000).toFixed(1) })), "error");
      scheduleRender();
    }

    track(delta) {
      this.inflight = Math.max(0, this.inflight + delta);
      connections.set(this.key, this.inflight);
    }

    addBytes(n) {
      this.bytes += n;
      scheduleRender();
    }

    deliver(event) {
      if (!event || typeof event.id !== "string") return;
      if (this.seen.has(event.id)) {
        this.duplicates += 1;
        scheduleRender();
        return;
      }
      this.seen.add(event.id);
      this.seenOrder.push(event.id);
      if (this.seenOrder.length > SEEN_MAX) this.seen.delete(this.seenOrder.shift());
      this.cursor = event.id;
      this.received += 1;
      const ms = latencyMs(event);
      if (ms !== null) {
        this.last = ms;
        this.latencies.push(ms);
        if (this.latencies.length > WINDOW) this.latencies.shift();
        chart.add(this.key, ms);
      }
      if (this.recovery) this.recovery.got(event.id);
      scheduleRender();
    }

    gap() {
      this.gaps += 1;
      if (this.recovery) this.recovery.gap = true;
      scheduleRender();
    }

    /** Cut the connection now, as a network failure would (no goodbye). */
    drop() {
      this.gen += 1;
      this.dropped = true;
      this.broken = true;
      this.close();
      this.setState("dropped");
      this.status(t("Dropped: offline"), "error");
    }

    /** Reconnect after drop(); with `useCursor` false, forget the cursor first. */
    resume(useCursor) {
      this.gen += 1;
      this.dropped = false;
      if (!useCursor) this.cursor = null;
      this.setState("connecting");
      this.status(t("Reconnecting…"));
      this.open();
    }

    expectRecovery(ids, useCursor) {
      if (this.recovery) this.recovery.cancel();
      this.recovery = new Recovery(this, ids, useCursor, this.cursor);
    }

    setStat(key, value, text) {
      const node = this.root.querySelector(`[data-stat="${key}"]`);
      if (!node) return;
      if (node.textContent !== text) node.textContent = text;
      node.dataset.value = value === null ? "" : String(value);
    }

    render() {
      this.setStat("received", this.received, String(this.received));
      this.setStat("last", this.last, formatMs(this.last));
      const p50 = percentile(this.latencies, 50);
      const p95 = percentile(this.latencies, 95);
      this.setStat("p50", p50, formatMs(p50));
      this.setStat("p95", p95, formatMs(p95));
      this.setStat("requests", this.requests, String(this.requests));
      this.setStat("bytes", this.bytes, `${S.formatBytes(this.bytes)} ${this.bytesMeasured ? t("(measured)") : t("(counted)")}`);
      this.setStat("reconnects", this.reconnects, String(this.reconnects));
      this.setStat("gaps", this.gaps, String(this.gaps));
      this.setStat("duplicates", this.duplicates, String(this.duplicates));
    }
  }

  /** After a drop: which of the events published while offline came back to one pane. */
  class Recovery {
    constructor(pane, ids, useCursor, cursor) {
      this.pane = pane;
      this.expected = new Set(ids);
      this.total = ids.length;
      this.useCursor = useCursor;
      this.how = useCursor && cursor ? pane.resumeHow(cursor) : "";
      this.gap = false;
      this.timer = null;
      this.done = false;
      this.promise = new Promise((resolve) => { this.resolve = resolve; });
      // A pane that never reconnects still gets a verdict.
      this.deadline = setTimeout(() => this.finish(), 20000);
      this.show("waiting", t("Offline: {total} events are being published without this pane…", { total: this.total }));
    }

    show(result, text) {
      const el = this.pane.recoveryEl;
      el.hidden = false;
      el.textContent = text;
      el.dataset.result = result;
      this.pane.root.dataset.recovery = result;
    }

    got(id) {
      if (this.done || !this.expected.delete(id)) return;
      if (this.expected.size === 0) this.finish();
      else {
        this.show("waiting", t("Recovering: {back} of {total} missed events back…",
          { back: this.total - this.expected.size, total: this.total }));
      }
    }

    /** The pane reconnected: replays come at once; give the slowest technique its turn. */
    connected() {
      if (this.done) return;
      if (this.expected.size === 0) {
        this.finish();
        return;
      }
      if (this.timer !== null) return; // polling reports every poll: start the clock once
      const settleMs = this.pane.settleMs ? this.pane.settleMs() : 2500;
      this.timer = setTimeout(() => this.finish(), settleMs);
    }

    finish() {
      if (this.done) return;
      this.done = true;
      clearTimeout(this.timer);
      clearTimeout(this.deadline);
      const back = this.total - this.expected.size;
      if (this.expected.size === 0) {
        let text;
        if (this.how) text = tn("Recovered {n} missed event with {how}.", "Recovered {n} missed events with {how}.", back, { how: this.how });
        else if (this.useCursor) text = tn("Recovered {n} missed event.", "Recovered {n} missed events.", back);
        else {
          text = tn("Recovered {n} missed event by re-reading the newest events (no cursor).",
            "Recovered {n} missed events by re-reading the newest events (no cursor).", back);
        }
        this.show("recovered", text);
      } else if (this.gap) {
        this.show("gap", t("Gap: {missed} of {total} events were no longer in the server's history.",
          { missed: this.expected.size, total: this.total }));
      } else {
        const params = { missed: this.expected.size, total: this.total };
        this.show("missed", this.useCursor
          ? t("Missed {missed} of {total} events: they never came back.", params)
          : t("Missed {missed} of {total} events: it reconnected without its last event id, so the server had nothing to replay.", params));
      }
      this.pane.recovery = null;
      this.resolve(this);
    }

    cancel() {
      this.done = true;
      clearTimeout(this.timer);
      clearTimeout(this.deadline);
      this.resolve(this);
    }
  }

  /** Interval polling: GET events?since=<cursor> on a timer, If-None-Match for a cheap 304. */
  class PollingPane extends Pane {
    constructor() {
      super("polling", t("Interval polling"));
      this.url = D.eventsUrl;
      this.intervalMs = 1000;
      this.timer = null;
      this.controller = null;
      this.bytesMeasured = resourceTiming.supported;
    }

    resumeHow(cursor) { return `since=${cursor}`; }
    settleMs() { return this.intervalMs + 2500; }

    open() {
      clearTimeout(this.timer);
      this.poll(this.gen);
    }

    close() {
      clearTimeout(this.timer);
      if (this.controller) this.controller.abort();
    }

    async poll(gen) {
      const params = new URLSearchParams({ limit: String(PAGE_LIMIT) });
      if (this.cursor) params.set("since", this.cursor);
      const headers = this.cursor ? { "If-None-Match": `"${this.cursor}"` } : {};
      const controller = new AbortController();
      this.controller = controller;
      let wait = this.intervalMs;
      this.requests += 1;
      this.track(+1);
      try {
        const res = await fetch(`${this.url}?${params}`, { headers, cache: "no-store", signal: controller.signal });
        if (res.status !== 304) {
          if (!res.ok) throw await S.responseError(res);
          const text = await res.text();
          if (gen !== this.gen) return;
          if (!this.bytesMeasured) this.addBytes(S.byteLength(text));
          const page = JSON.parse(text);
          if (page.gap) this.gap();
          for (const event of page.events) this.deliver(event);
          if (page.cursor) this.cursor = page.cursor;
          if (page.events.length >= PAGE_LIMIT) wait = 0; // more are waiting: ask again now
        }
        if (gen !== this.gen) return;
        this.connected(t("Polling every {ms} ms", { ms: this.intervalMs }));
      } catch (err) {
        if (gen !== this.gen) return; // dropped on purpose
        wait = this.backoff.next();
        this.failed(tx("Poll failed ({why})", { why: S.explain(err) }), wait);
      } finally {
        this.track(-1);
      }
      if (gen === this.gen) this.timer = setTimeout(() => this.poll(gen), wait);
    }
  }

  /** Long polling: the server parks the request until an event (200) or its timeout (204). */
  class LongPollPane extends Pane {
    constructor() {
      super("longpoll", t("Long polling"));
      this.url = D.longpollUrl;
      this.controller = null;
      this.bytesMeasured = resourceTiming.supported;
    }

    resumeHow(cursor) { return `since=${cursor}`; }

    open() { this.loop(this.gen); }

    close() {
      if (this.controller) this.controller.abort();
    }

    async loop(gen) {
      while (gen === this.gen) {
        const params = new URLSearchParams({ timeout: String(LONGPOLL_TIMEOUT_S), limit: String(PAGE_LIMIT) });
        if (this.cursor) params.set("since", this.cursor);
        const controller = new AbortController();
        this.controller = controller;
        this.requests += 1;
        this.track(+1);
        // Parked at the server: the connection counts as open and healthy.
        const parked = setTimeout(() => { if (gen === this.gen) this.connected(t("Waiting for the next event (parked)")); }, 300);
        try {
          const res = await fetch(`${this.url}?${params}`, { cache: "no-store", signal: controller.signal });
          if (res.status === 200) {
            const text = await res.text();
            if (gen !== this.gen) return;
            if (!this.bytesMeasured) this.addBytes(S.byteLength(text));
            const page = JSON.parse(text);
            if (page.gap) this.gap();
            for (const event of page.events) this.deliver(event);
            if (page.cursor) this.cursor = page.cursor;
          } else if (res.status !== 204) {
            throw await S.responseError(res);
          }
          if (gen !== this.gen) return;
          this.connected(t("Answered; asking again at once"));
        } catch (err) {
          if (gen !== this.gen) return;
          const wait = this.backoff.next();
          this.failed(tx("Long poll failed ({why})", { why: S.explain(err) }), wait);
          await S.sleep(wait);
        } finally {
          clearTimeout(parked);
          this.track(-1);
        }
      }
    }
  }

  /** Server-Sent Events: one EventSource; the browser reconnects with Last-Event-ID itself. */
  class SSEPane extends Pane {
    constructor() {
      super("sse", t("Server-Sent Events"));
      this.url = D.streamUrl;
      this.source = null;
      this.retryTimer = null;
    }

    resumeHow(cursor) { return `last_event_id=${cursor}`; }

    open() {
      clearTimeout(this.retryTimer);
      const url = this.cursor ? `${this.url}?last_event_id=${encodeURIComponent(this.cursor)}` : this.url;
      const source = new EventSource(url);
      this.source = source;
      this.requests += 1;
      this.track(+1);
      source.addEventListener("open", () => {
        if (source === this.source) this.connected(t("Stream open"));
      });
      source.addEventListener("message", (ev) => {
        if (source !== this.source) return;
        // What the server wrote for this event: id, event and data lines and a blank line.
        this.addBytes(S.byteLength(`id: ${ev.lastEventId}\nevent: message\ndata: ${ev.data}\n\n`));
        this.deliver(JSON.parse(ev.data));
      });
      source.addEventListener("gap", (ev) => {
        if (source !== this.source) return;
        this.addBytes(S.byteLength(`event: gap\ndata: ${ev.data}\n\n`));
        this.gap();
      });
      source.addEventListener("error", () => {
        if (source !== this.source) return;
        if (source.readyState === EventSource.CLOSED) {
          // The browser gave up (an HTTP error status): retry on our own, with backoff.
          this.source = null;
          this.track(-1);
          const wait = this.backoff.next();
          this.failed(t("Stream refused"), wait);
          const gen = this.gen;
          this.retryTimer = setTimeout(() => { if (gen === this.gen) this.open(); }, wait);
        } else {
          // EventSource reconnects by itself after `retry:` ms, sending Last-Event-ID.
          this.broken = true;
          this.requests += 1;
          this.setState("retrying");
          this.status(t("Stream broke; the browser reconnects with Last-Event-ID"), "error");
        }
      });
    }

    close() {
      clearTimeout(this.retryTimer);
      if (this.source) {
        this.source.close();
        this.source = null;
        this.track(-1);
      }
    }
  }

  /** WebSocket with the /ws JSON protocol: subscribe {topic, since}, receive {op: event}. */
  class WebSocketPane extends Pane {
    constructor() {
      super("websocket", t("WebSocket"));
      this.url = webSocketUrl(D.wsUrl);
      this.ws = null;
      this.ref = 0;
      this.retryTimer = null;
    }

    resumeHow(cursor) { return `subscribe since=${cursor}`; }

    open() {
      clearTimeout(this.retryTimer);
      const ws = countedWebSocket(this, this.url);
      this.ws = ws;
      this.requests += 1;
      this.track(+1);
      const subscribeRef = `sub-${++this.ref}`;
      ws.addEventListener("open", () => {
        const op = { op: "subscribe", topic: TOPIC, ref: subscribeRef };
        if (this.cursor) op.since = this.cursor;
        ws.send(JSON.stringify(op));
      });
      ws.addEventListener("message", (ev) => {
        if (ws !== this.ws) return;
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch (err) {
          return;
        }
        if (msg.op === "event" && msg.topic === TOPIC) {
          this.deliver(msg);
        } else if (msg.op === "gap") {
          this.gap();
        } else if (msg.op === "ok" && msg.ref === subscribeRef) {
          if (!this.cursor && msg.cursor) this.cursor = msg.cursor;
          this.connected(t("Subscribed"));
        } else if (msg.op === "error") {
          this.status(tx("Server error: {why}", { why: S.explain(new S.ServerError(null, msg.error, msg.message)) }), "error");
        }
      });
      ws.addEventListener("close", () => {
        if (ws !== this.ws) return;
        this.ws = null;
        this.track(-1);
        const wait = this.backoff.next();
        this.failed(t("Socket closed"), wait);
        const gen = this.gen;
        this.retryTimer = setTimeout(() => { if (gen === this.gen) this.open(); }, wait);
      });
    }

    close() {
      clearTimeout(this.retryTimer);
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        this.track(-1);
        ws.close();
      }
    }
  }

  /** STOMP over WebSocket with @stomp/stompjs; SUBSCRIBE carries last-event-id to resume. */
  class StompPane extends Pane {
    constructor(key = "stomp", label = t("STOMP")) {
      super(key, label);
      this.url = webSocketUrl(D.stompUrl);
      this.destination = D.stompDestination;
      this.client = null;
      this.retryTimer = null;
    }

    resumeHow(cursor) { return `SUBSCRIBE last-event-id:${cursor}`; }

    open() {
      clearTimeout(this.retryTimer);
      if (!window.StompJs) {
        this.setState("error");
        this.status(t("The STOMP client library (static/vendor/stompjs) did not load"), "error");
        return;
      }
      // One client per connection, automatic reconnect off: this pane decides when and
      // from where (its cursor) to reconnect, with the page's capped, jittered backoff.
      const client = new window.StompJs.Client({
        webSocketFactory: () => this.socket(),
        reconnectDelay: 0,
        heartbeatIncoming: 10000,
        heartbeatOutgoing: 10000,
        debug: () => {},
      });
      client.onConnect = () => {
        if (client !== this.client) return;
        const headers = {};
        if (this.cursor) headers["last-event-id"] = this.cursor;
        client.subscribe(this.destination, (message) => this.onMessage(client, message), headers);
        this.connected(t("Subscribed to {destination}", { destination: this.destination }));
      };
      client.onStompError = (frame) => {
        if (client === this.client) this.status(tx("STOMP ERROR: {message}", { message: S.verbatim(frame.headers.message || frame.body) }), "error");
      };
      client.onWebSocketClose = () => {
        if (client !== this.client) return;
        this.client = null;
        this.track(-1);
        client.deactivate().catch(ignore);
        const wait = this.backoff.next();
        this.failed(t("Socket closed"), wait);
        const gen = this.gen;
        this.retryTimer = setTimeout(() => { if (gen === this.gen) this.open(); }, wait);
      };
      this.client = client;
      this.requests += 1;
      this.track(+1);
      client.activate();
    }

    /** The socket the STOMP client speaks over. */
    socket() { return countedWebSocket(this, this.url, ["v12.stomp", "v11.stomp", "v10.stomp"]); }

    onMessage(client, message) {
      if (client !== this.client) return;
      const h = message.headers;
      if (h.gap === "true") {
        this.gap();
        return;
      }
      const type = h["content-type"] || "";
      let data = message.body;
      if (type.startsWith("application/json")) {
        try {
          data = JSON.parse(message.body);
        } catch (err) {
          data = message.body;
        }
      }
      this.deliver({ id: h["event-id"], type: h["event-type"], sender: h.sender, time: Number(h.time), data });
    }

    close() {
      clearTimeout(this.retryTimer);
      if (this.client) {
        const client = this.client;
        this.client = null;
        this.track(-1);
        // No DISCONNECT frame: the socket just goes, as in a network failure.
        client.deactivate({ force: true }).catch(ignore);
      }
    }
  }

  /** The same STOMP session over SockJS, forced onto xhr-streaming: one streaming response
   * holds one of the browser's HTTP connections, and every frame the client sends (its
   * SUBSCRIBE, its heart-beats) is a POST of its own. Bytes are SockJS's payload, framing included. */
  class SockJSPane extends StompPane {
    constructor() {
      super("sockjs", t("STOMP over SockJS"));
      this.url = new URL(D.sockjsUrl, location.href).href;
    }

    socket() {
      const sock = new window.SockJS(this.url, null, { transports: ["xhr-streaming"] });
      sock.addEventListener("message", (ev) => this.addBytes(S.byteLength(JSON.stringify([ev.data])) + 2)); // a[…]\n
      return sock;
    }
  }

  // ---- bytes from the Resource Timing API (response headers and bodies as received) --

  const resourceTiming = {
    supported: typeof PerformanceObserver !== "undefined"
      && (PerformanceObserver.supportedEntryTypes || []).includes("resource")
      && "transferSize" in PerformanceResourceTiming.prototype,
    panes: [],
    start(panes) {
      if (!this.supported) return;
      this.panes = panes;
      performance.setResourceTimingBufferSize(500);
      performance.addEventListener("resourcetimingbufferfull", () => performance.clearResourceTimings());
      new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) this.account(entry);
      }).observe({ type: "resource" });
    },
    account(entry) {
      let url;
      try {
        url = new URL(entry.name);
      } catch (err) {
        return;
      }
      // Polls always carry a query (limit=...); publishes to the same path never do, and
      // the one-off read of the topic's position at start-up is nobody's traffic.
      if (!url.search || url.search === START_QUERY) return;
      for (const pane of this.panes) {
        if (pane.bytesMeasured && url.pathname === new URL(pane.url, location.href).pathname) {
          pane.addBytes(entry.transferSize || 0);
        }
      }
    },
  };

  // ---- the publisher: one POST at a time, so it never needs a second connection ------

  const publisher = {
    queue: [],
    busy: false,
    published: 0,
    failed: 0,
    n: 0,
    rateTimer: null,
    statusEl: document.querySelector("[data-publisher-status]"),

    /** Queue one event; resolves with the stored event (201 body). */
    enqueue(text) {
      this.n += 1;
      const data = { n: this.n, text };
      return new Promise((resolve, reject) => {
        this.queue.push({ data, resolve, reject });
        scheduleRender();
        this.pump();
      });
    },

    async pump() {
      if (this.busy) return;
      this.busy = true;
      while (this.queue.length) {
        const item = this.queue.shift();
        connections.set("publish", 1);
        try {
          const event = await S.publishHTTP(D.publishUrl, item.data);
          this.published += 1;
          item.resolve(event);
        } catch (err) {
          this.failed += 1;
          this.status(tx("Publish failed: {why}", { why: S.explain(err) }), "error");
          item.reject(err);
        } finally {
          connections.set("publish", 0);
        }
      }
      this.busy = false;
      scheduleRender();
    },

    status(content, kind = "info") {
      this.statusEl.replaceChildren(content);
      this.statusEl.dataset.kind = kind;
    },

    render() {
      setText('[data-pub="published"]', String(this.published));
      setText('[data-pub="queued"]', String(this.queue.length));
      setText('[data-pub="failed"]', String(this.failed));
    },
  };
  renderers.push(() => publisher.render());

  const ignore = () => {}; // a failed publish is counted and shown; nothing else to do

  function text() {
    return document.getElementById("pub-text").value.trim() || t("hello");
  }

  function numberInput(id, fallback) {
    const input = document.getElementById(id);
    const value = Number(input.value);
    if (!Number.isFinite(value) || value < Number(input.min) || value > Number(input.max)) return fallback;
    return value;
  }

  document.querySelector("[data-publish-form]").addEventListener("submit", (ev) => {
    ev.preventDefault();
    publisher.enqueue(text()).then((event) => publisher.status(tx("Published event {id}", { id: S.verbatim(event.id) }), "ok"), ignore);
  });

  document.querySelector("[data-burst-form]").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const size = Math.round(numberInput("burst-size", 20));
    const sent = [];
    for (let i = 0; i < size; i += 1) {
      sent.push(publisher.enqueue(t("{text} (burst {i}/{n})", { text: text(), i: i + 1, n: size })));
    }
    publisher.status(t("Sending a burst of {n}…", { n: size }));
    Promise.allSettled(sent).then((results) => {
      const ok = results.filter((r) => r.status === "fulfilled").length;
      publisher.status(t("Burst done: {ok} of {n} published", { ok, n: size }), ok === size ? "ok" : "error");
    });
  });

  const rateForm = document.querySelector("[data-rate-form]");
  const rateButton = rateForm.querySelector("[data-rate-toggle]");
  function startRate() {
    clearInterval(publisher.rateTimer);
    const rate = numberInput("rate", 5);
    publisher.rateTimer = setInterval(() => {
      if (publisher.queue.length < 50) publisher.enqueue(text()).catch(ignore); // else: the server is behind; skip
    }, 1000 / rate);
    rateButton.textContent = t("Stop");
    rateButton.setAttribute("aria-pressed", "true");
    publisher.status(t("Publishing {rate} events per second", { rate }));
  }
  function stopRate() {
    clearInterval(publisher.rateTimer);
    publisher.rateTimer = null;
    rateButton.textContent = t("Start");
    rateButton.setAttribute("aria-pressed", "false");
    publisher.status(t("Steady rate stopped"));
  }
  rateForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (publisher.rateTimer === null) startRate();
    else stopRate();
  });
  document.getElementById("rate").addEventListener("change", () => {
    if (publisher.rateTimer !== null) startRate();
  });

  // ---- the panes, the chart and the drop test ---------------------------------------

  const chartHost = document.querySelector("[data-chart]");
  const panes = [new PollingPane(), new LongPollPane(), new SSEPane(), new WebSocketPane(), new StompPane(),
                 new SockJSPane()];
  const chart = new S.LatencyChart(chartHost, panes.map((p) => ({ key: p.key, label: p.label, color: COLORS[p.key] })),
                                   { windowSec: 30, describedBy: "chart-help" });
  for (const pane of panes) pane.root.querySelector("h3").prepend(S.LatencyChart.swatch(COLORS[pane.key]), " ");
  renderers.push(() => chart.render());
  setInterval(() => chart.render(), 1000); // dots slide left even when nothing arrives

  const polling = panes[0];
  const slider = document.getElementById("poll-interval");
  slider.addEventListener("input", () => {
    polling.intervalMs = Number(slider.value);
    document.querySelector("[data-interval-label]").textContent = slider.value;
  });

  const dropForm = document.querySelector("[data-drop-form]");
  const dropStatus = document.querySelector("[data-drop-status]");
  const dropButton = dropForm.querySelector("[data-drop]");
  dropForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const count = Math.round(numberInput("drop-count", 5));
    const useCursor = document.getElementById("drop-resume").checked;
    dropButton.disabled = true;
    document.body.dataset.drop = "running";
    for (const pane of panes) pane.drop();
    dropStatus.textContent = t("All panes dropped; publishing {n} events while they are offline…", { n: count });
    const ids = [];
    for (let i = 0; i < count; i += 1) {
      try {
        ids.push((await publisher.enqueue(t("published while disconnected ({i}/{n})", { i: i + 1, n: count }))).id);
      } catch (err) {
        /* counted as failed by the publisher */
      }
    }
    for (const pane of panes) pane.expectRecovery(ids, useCursor);
    for (const pane of panes) pane.resume(useCursor);
    dropStatus.textContent = t("Published {n} while offline; the panes are reconnecting…", { n: ids.length });
    const results = await Promise.all(panes.map((pane) => (pane.recovery ? pane.recovery.promise : null)));
    const recovered = results.filter((r) => r && r.expected.size === 0).map((r) => r.pane.label);
    dropStatus.textContent = recovered.length === panes.length
      ? t("Every pane recovered all {n} events it missed.", { n: ids.length })
      : t("Recovered everything: {panes}. The others lost events (see each pane).",
        { panes: recovered.join(t(", ")) || t("none") });
    document.body.dataset.drop = "done";
    dropButton.disabled = false;
  });

  // ---- start: clock offset, where the topic is now, then every pane from there -------

  function showProtocol() {
    const nav = performance.getEntriesByType("navigation")[0];
    const protocol = nav && nav.nextHopProtocol ? nav.nextHopProtocol : t("unknown");
    const multiplexed = protocol === "h2" || protocol === "h3";
    const note = multiplexed ? t(" (multiplexed: the limit of 6 does not apply)") : "";
    setText('[data-conn="protocol"]', protocol + note);
    if (multiplexed) {
      connections.limit = Infinity;
      // The HTTP/1.1 wording ("of the browser's 6 connections") comes from the template; over
      // HTTP/2 these take its place (data-h2-text names which sentence the span is in).
      const h2Texts = {
        intro: t("HTTP requests, all on one HTTP/2 connection to this host,"),
        meter: t("HTTP requests open now, all on one HTTP/2 connection"),
      };
      for (const node of document.querySelectorAll("[data-h2-text]")) {
        if (node.dataset.h2Text in h2Texts) node.textContent = h2Texts[node.dataset.h2Text];
      }
    }
  }

  async function topicCursor() {
    try {
      const res = await fetch(`${D.eventsUrl}${START_QUERY}`, { cache: "no-store" });
      if (res.ok) return (await res.json()).cursor || null;
    } catch (err) {
      console.warn("compare: could not read the topic's cursor", err);
    }
    return null;
  }

  async function start() {
    showProtocol();
    resourceTiming.start(panes.filter((p) => p.bytesMeasured));
    const offset = await S.clock.measure(D.healthUrl);
    setText("[data-clock-offset]", `${offset >= 0 ? "+" : ""}${(offset * 1000).toFixed(1)} ms`);
    // Every pane starts after the topic's newest event, so each counts the same events.
    const cursor = await topicCursor();
    for (const pane of panes) {
      pane.cursor = cursor;
      pane.open();
    }
    document.body.dataset.ready = "true";
    scheduleRender();
  }

  window.addEventListener("pagehide", () => {
    stopRate();
    for (const pane of panes) pane.drop();
  });

  start();
})();
