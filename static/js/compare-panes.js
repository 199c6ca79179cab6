/* The compare page's panes: one per technique, each receiving topic "compare" and keeping
 * the numbers the page shows (received, latency, requests, bytes, reconnects, gaps,
 * duplicates), and what a drop test saw come back (Recovery).
 *
 * Four panes are switchboard.js clients with their transport forced (LibraryPane): the
 * library keeps each one's cursor, resumes after it and backs off; the pane only counts
 * what its traffic, state and events say. The STOMP and SockJS panes speak STOMP with
 * @stomp/stompjs (over a WebSocket, or over SockJS's xhr-streaming) and resume with the
 * SUBSCRIBE header last-event-id. */
import { Switchboard as Client } from "./switchboard.js";

const S = window.Switchboard;
const { t, tn, tx } = S;
const D = S.data;
const TOPIC = D.topic;
const WINDOW = 100; // latency percentiles over the last 100 events of a pane
const PAGE_LIMIT = 200; // events per poll / long-poll answer
const LONGPOLL_TIMEOUT_S = 20;
const SEEN_MAX = 5000; // ids remembered per pane to count duplicates
const ignore = () => {};

/** A WebSocket URL from a path or a ws: URL (url_for builds those), on this page's scheme. */
function webSocketUrl(pathOrUrl) {
  const url = new URL(pathOrUrl, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
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

export class Pane {
  constructor(env, key, label) {
    this.env = env; // the page's: {chart, connections, scheduleRender, renderers}
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
    env.renderers.push(() => this.render());
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
    this.env.scheduleRender();
  }

  /** The connection failed; `retryMs` is when the pane tries again. */
  failed(reason, retryMs) {
    this.broken = true;
    this.setState("retrying");
    this.status(S.join(reason, t("; retrying in {s} s", { s: (retryMs / 1000).toFixed(1) })), "error");
    this.env.scheduleRender();
  }

  track(delta) {
    this.inflight = Math.max(0, this.inflight + delta);
    this.env.connections.set(this.key, this.inflight);
  }

  addBytes(n) {
    this.bytes += n;
    this.env.scheduleRender();
  }

  deliver(event) {
    if (!event || typeof event.id !== "string") return;
    if (this.seen.has(event.id)) {
      this.duplicates += 1;
      this.env.scheduleRender();
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
      this.env.chart.add(this.key, ms);
    }
    if (this.recovery) this.recovery.got(event.id);
    this.env.scheduleRender();
  }

  gap() {
    this.gaps += 1;
    if (this.recovery) this.recovery.gap = true;
    this.env.scheduleRender();
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


/** A switchboard.js client with one transport forced. `how` says what it resumes with (for
 *  the recovery note); `texts` its statuses; `options` go to the client. */
export class LibraryPane extends Pane {
  constructor(env, key, label, transport, { how, open, failed, path = null, options = {} }) {
    super(env, key, label);
    this.transport = transport;
    this.how = how;
    this.openText = open;
    this.failedText = failed;
    this.path = path; // what Resource Timing measures for it (polling, long polling)
    this.options = options;
    this.client = null;
  }

  resumeHow(cursor) { return this.how(cursor); }

  /** How long a drop test waits for replays after it reconnects: a poll's interval more. */
  settleMs() { return (this.options.pollInterval || 0) + 2500; }

  open() {
    const client = new Client(location.origin, { transports: [this.transport], pageLimit: PAGE_LIMIT,
      backoff: { base: 500, cap: 10000 }, ...this.options });
    this.client = client;
    client.on("traffic", (detail) => { if (client === this.client) this.traffic(detail); });
    client.on("state", (detail) => { if (client === this.client) this.onState(detail); });
    client.on("error", ignore); // each failure is told by the "reconnecting" state after it
    client.subscribe(TOPIC, {
      since: this.cursor || undefined,
      // Without a cursor, polling re-reads the newest events (the others start live).
      history: !this.cursor && this.transport === "polling" ? PAGE_LIMIT : undefined,
      onEvent: (event) => this.deliver(event),
      onGap: () => this.gap(),
      onState: ({ state }) => { if (state === "subscribed") this.connected(this.openText()); },
    });
  }

  close() {
    if (this.client) this.client.close();
    this.client = null;
    this.inflight = 0;
    this.track(0);
  }

  /** The library's traffic: requests, the connections they hold, and bytes. */
  traffic({ type, kind, status, bytes, reconnect }) {
    const own = { polling: "poll", "long-polling": "long-poll", sse: "stream", websocket: "websocket" }[this.transport];
    if (kind !== own) return;
    if (type === "start" || (type === "open" && reconnect)) this.requests += 1;
    if (type === "start") this.track(+1);
    if (type === "end") this.track(-1);
    if (kind === "long-poll" && type === "start" && this.root.dataset.state === "open") this.status(t("Waiting for the next event (parked)"), "ok");
    if (kind === "long-poll" && type === "end" && status === 200) this.status(t("Answered; asking again at once"), "ok");
    if (kind === "poll" && type === "end" && (status === 200 || status === 304)) this.status(this.openText(), "ok");
    if (this.bytesMeasured) return;
    if (kind === "websocket" && (type === "in" || type === "out")) this.addBytes(frameBytes(bytes, type === "out"));
    else if ((kind === "stream" && type === "in") || (kind !== "stream" && type === "end")) this.addBytes(bytes || 0);
  }

  onState({ state, retryIn, error, browser, dropped }) {
    if (state !== "reconnecting" || dropped) return;
    if (browser) {
      // EventSource reconnects by itself after `retry:` ms, sending Last-Event-ID.
      this.broken = true;
      this.setState("retrying");
      this.status(t("Stream broke; the browser reconnects with Last-Event-ID"), "error");
    } else if (retryIn !== undefined) {
      this.failed(this.failedText(S.fromClientError(error)), retryIn);
    }
  }
}

/** The four switchboard.js panes. */
export function libraryPanes(env, measured) {
  const ws = new URL(D.wsUrl, location.href).pathname;
  const why = (err) => ({ why: err ? S.explain(err) : t("unknown") });
  return [
    new LibraryPane(env, "polling", t("Interval polling"), "polling", {
      how: (cursor) => `since=${cursor}`, path: D.eventsUrl, options: { pollInterval: 1000 },
      open() { return t("Polling every {ms} ms", { ms: this.options.pollInterval }); },
      failed: (err) => tx("Poll failed ({why})", why(err)),
    }),
    new LibraryPane(env, "longpoll", t("Long polling"), "long-polling", {
      how: (cursor) => `since=${cursor}`, path: "/api/long-poll", options: { longPollTimeout: LONGPOLL_TIMEOUT_S },
      open: () => t("Waiting for the next event (parked)"),
      failed: (err) => tx("Long poll failed ({why})", why(err)),
    }),
    new LibraryPane(env, "sse", t("Server-Sent Events"), "sse", {
      how: (cursor) => `last_event_id=${cursor}`, options: { eventSource: true, eventTypes: ["message"] },
      open: () => t("Stream open"),
      failed: () => t("Stream refused"),
    }),
    new LibraryPane(env, "websocket", t("WebSocket"), "websocket", {
      how: (cursor) => `subscribe since=${cursor}`, options: { paths: { ws } },
      open: () => t("Subscribed"),
      failed: () => t("Socket closed"),
    }),
  ].map((pane) => Object.assign(pane, { bytesMeasured: measured && pane.path !== null }));
}

/** STOMP over WebSocket with @stomp/stompjs; SUBSCRIBE carries last-event-id to resume. */
export class StompPane extends Pane {
  constructor(env, key = "stomp", label = t("STOMP")) {
    super(env, key, label);
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
export class SockJSPane extends StompPane {
  constructor(env) {
    super(env, "sockjs", t("STOMP over SockJS"));
    this.url = new URL(D.sockjsUrl, location.href).href;
  }

  socket() {
    const sock = new window.SockJS(this.url, null, { transports: ["xhr-streaming"] });
    sock.addEventListener("message", (ev) => this.addBytes(S.byteLength(JSON.stringify([ev.data])) + 2)); // a[…]\n
    return sock;
  }
}

