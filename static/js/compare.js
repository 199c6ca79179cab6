/* The compare page: one publisher, six panes receiving topic "compare" with six
 * techniques (compare-panes.js), a latency chart, a connection meter and a "drop all
 * connections" test.
 *
 * Every pane keeps the id of the last event it got (its cursor) and hands it back when it
 * reconnects, each in its own technique's way; the drop test shows whether the events
 * published while it was offline come back. No framework, no inline script. */
import { SockJSPane, StompPane, libraryPanes } from "./compare-panes.js";

const S = window.Switchboard;
const { t, tx } = S;
const D = S.data;
const START_QUERY = "?limit=1"; // where the topic is now: every pane starts from there
const COLORS = {
  polling: "#c45200", longpoll: "#8a6d00", sse: "#00845f", websocket: "#0061a3", stomp: "#9c3f8a",
  sockjs: "#5b5b5b",
};

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
      if (pane.bytesMeasured && url.pathname === new URL(pane.path, location.href).pathname) {
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
const env = { connections, scheduleRender, renderers, chart: null };
const panes = [...libraryPanes(env, resourceTiming.supported), new StompPane(env), new SockJSPane(env)];
const chart = new S.LatencyChart(chartHost, panes.map((p) => ({ key: p.key, label: p.label, color: COLORS[p.key] })),
                                 { windowSec: 30, describedBy: "chart-help" });
for (const pane of panes) pane.root.querySelector("h3").prepend(S.LatencyChart.swatch(COLORS[pane.key]), " ");
env.chart = chart;
renderers.push(() => chart.render());
setInterval(() => chart.render(), 1000); // dots slide left even when nothing arrives

const polling = panes[0];
const slider = document.getElementById("poll-interval");
slider.addEventListener("input", () => {
  polling.options.pollInterval = Number(slider.value); // from the next round on
  if (polling.client) polling.client.options.pollInterval = Number(slider.value);
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
