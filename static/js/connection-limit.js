/* The compare page's "ten streams at once": opens ten EventSource streams to a quiet topic
 * and shows which ones the browser opens and which wait for a free connection.
 *
 * Over HTTP/1.1 a browser keeps at most 6 connections per host and an open stream holds one,
 * so the 7th request waits in the browser's queue (no error, no timeout) until one is freed.
 * Over HTTP/2 every request and stream to the host shares one connection. The page cannot
 * ask the browser about its connection pool: a stream whose `open` event has not fired is
 * "waiting". No framework; all text is set with textContent, in the page's language (t/tn,
 * msgids in app/js_messages.py). */
(function () {
  "use strict";

  const S = window.Switchboard;
  const { t, tn } = S;
  const COUNT = 10;
  const TICK_MS = 250; // how often the "waiting 2.3 s" times are refreshed

  const form = document.querySelector("[data-limit-form]");
  if (!form) return;
  const button = form.querySelector("[data-limit-toggle]");
  const statusEl = document.querySelector("[data-limit-status]");
  const list = document.querySelector("[data-limit-streams]");
  const streamUrl = new URL(S.data.testStreamUrl, location.href).href;
  const openLabel = button.textContent; // "Open 10 test streams", from the template

  let streams = [];
  let ticker = null;
  let closedCount = 0; // how many the last "close" closed, for the status line

  /** One test stream and the list item that shows it. */
  class TestStream {
    constructor(n) {
      this.n = n;
      this.started = performance.now();
      this.openedAfterMs = null;
      this.events = 0;
      this.item = document.createElement("li");
      list.append(this.item);
      this.source = new EventSource(streamUrl);
      this.source.addEventListener("open", () => {
        if (this.openedAfterMs === null) this.openedAfterMs = performance.now() - this.started;
        update();
      });
      this.source.addEventListener("message", () => {
        this.events += 1;
        update();
      });
      this.source.addEventListener("error", () => update());
    }

    /** "open"; "waiting" (never opened); "reconnecting" (opened, then broke); "refused". */
    get state() {
      const ready = this.source.readyState;
      if (ready === EventSource.OPEN) return "open";
      if (ready === EventSource.CONNECTING) return this.openedAfterMs === null ? "waiting" : "reconnecting";
      return "refused"; // CLOSED without close(): the server answered with an error status
    }

    render() {
      const state = this.state;
      const how = {
        open: () => t("open after {ms} ms", { ms: Math.round(this.openedAfterMs) }),
        waiting: () => t("waiting {s} s", { s: ((performance.now() - this.started) / 1000).toFixed(1) }),
        reconnecting: () => t("reconnecting"),
        refused: () => t("refused by the server"),
      }[state]();
      const text = t("Stream {n}: {how}", { n: this.n, how });
      if (this.item.textContent !== text) this.item.textContent = text;
      this.item.dataset.state = state;
      this.item.dataset.events = String(this.events);
    }

    close() { this.source.close(); }
  }

  /** The protocol of this page's requests to this host (Resource Timing's nextHopProtocol):
   *  the test streams' own entries once they exist (a stream's entry appears when it ends),
   *  else the newest request's, else the page's. */
  function protocolUsed() {
    const own = (entry) => entry.name.startsWith(`${location.origin}/`) && entry.nextHopProtocol;
    const mine = performance.getEntriesByName(streamUrl).filter(own);
    const entries = mine.length ? mine : performance.getEntriesByType("resource").filter(own);
    if (entries.length) return entries[entries.length - 1].nextHopProtocol;
    const page = performance.getEntriesByType("navigation")[0];
    return page && page.nextHopProtocol ? page.nextHopProtocol : t("unknown");
  }

  function setStat(key, text) {
    const node = document.querySelector(`[data-limit-stat="${key}"]`);
    if (node.textContent !== text) node.textContent = text;
    node.dataset.value = text;
  }

  function summary(counts, protocol) {
    if (!streams.length) {
      return closedCount ? tn("Closed the {n} test stream.", "Closed the {n} test streams.", closedCount)
        : t("No test streams open.");
    }
    const { open, waiting, refused } = counts;
    const multiplexed = protocol === "h2" || protocol === "h3";
    if (refused) return t("{open} open, {waiting} waiting, {refused} refused by the server (see its limits).", counts);
    if (!waiting) {
      return multiplexed
        ? t("All {open} open over {protocol}: one connection carries every stream, and the page's other requests too.",
          { open, protocol })
        : t("All {open} open over {protocol}.", { open, protocol });
    }
    if (multiplexed) return t("{open} open, {waiting} still opening…", counts);
    return t("{open} open, {waiting} waiting. Over {protocol} the browser keeps at most 6 connections to this host: the panes above hold some (their long poll and SSE stream), these streams the rest, and every other request to this host now queues until one is freed. Close the test streams to free them.",
      { open, waiting, protocol });
  }

  function update() {
    const counts = { open: 0, waiting: 0, reconnecting: 0, refused: 0 };
    for (const stream of streams) {
      stream.render();
      counts[stream.state] += 1;
    }
    counts.waiting += counts.reconnecting; // both are requests without a response yet
    const protocol = protocolUsed();
    setStat("open", String(counts.open));
    setStat("waiting", String(counts.waiting));
    setStat("protocol", protocol);
    const text = summary(counts, protocol);
    if (statusEl.textContent !== text) statusEl.textContent = text;
    statusEl.dataset.kind = counts.refused ? "error" : streams.length && !counts.waiting ? "ok" : "info";
    if (S.connections) S.connections.set("test", counts.open + counts.waiting); // the meter: requests in flight
  }

  function openAll() {
    closedCount = 0;
    list.replaceChildren();
    streams = Array.from({ length: COUNT }, (_, i) => new TestStream(i + 1));
    ticker = setInterval(update, TICK_MS);
    button.textContent = t("Close the test streams");
    button.setAttribute("aria-pressed", "true");
    update();
  }

  function closeAll() {
    for (const stream of streams) stream.close();
    closedCount = streams.length;
    streams = [];
    clearInterval(ticker);
    ticker = null;
    list.replaceChildren();
    button.textContent = openLabel;
    button.setAttribute("aria-pressed", "false");
    update();
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (streams.length) closeAll();
    else openAll();
  });
  window.addEventListener("pagehide", () => { if (streams.length) closeAll(); });
  // A stream's Resource Timing entry appears when it ends: show its protocol once it does.
  if (typeof PerformanceObserver !== "undefined") {
    new PerformanceObserver(() => setStat("protocol", protocolUsed())).observe({ type: "resource" });
  }
  update();
})();
