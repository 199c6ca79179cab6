/* A small SVG chart of delivery latency per transport over a sliding time window.
 * Log scale (1 ms .. 10 s), one dot per delivered event; no library, no inline style
 * (presentation attributes only, so a strict CSP holds). */
(function () {
  "use strict";

  const { t } = window.Switchboard;
  const SVG = "http://www.w3.org/2000/svg";
  const HEIGHT = 220;
  const PAD = { left: 52, right: 10, top: 10, bottom: 26 };
  const TICKS_MS = [1, 10, 100, 1000, 10000];

  function el(name, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  function tickLabel(ms) {
    return ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`;
  }

  class LatencyChart {
    /**
     * @param {Element} container where the SVG and its legend go
     * @param {{key: string, label: string, color: string}[]} series one per transport
     * @param {{windowSec?: number, minMs?: number, maxMs?: number, describedBy?: string}} options
     */
    constructor(container, series, { windowSec = 60, minMs = 1, maxMs = 10000, describedBy = null } = {}) {
      this.container = container;
      this.series = series;
      this.windowSec = windowSec;
      this.minLog = Math.log10(minMs);
      this.maxLog = Math.log10(maxMs);
      this.points = new Map(series.map((s) => [s.key, []]));
      this.svg = el("svg", {
        role: "img", height: HEIGHT,
        "aria-label": t("Latency of each delivered event, per transport, over the last {s} seconds (log scale)", { s: windowSec }),
      });
      if (describedBy) this.svg.setAttribute("aria-describedby", describedBy);
      this.frame = el("g");
      this.paths = new Map();
      for (const s of series) {
        const path = el("path", {
          fill: "none", stroke: s.color, "stroke-width": 5, "stroke-linecap": "round", "stroke-opacity": 0.8,
        });
        this.paths.set(s.key, path);
      }
      this.svg.append(this.frame, ...this.paths.values());
      container.append(this.svg, this.legend());
      this.width = 0;
      this.resize();
      if ("ResizeObserver" in window) {
        new ResizeObserver(() => this.resize()).observe(container);
      }
    }

    legend() {
      const list = document.createElement("ul");
      list.className = "chart-legend";
      list.setAttribute("aria-label", t("Chart legend"));
      // CSSOM, not a style attribute: allowed under the pages' CSP (style-src 'self').
      Object.assign(list.style, { display: "flex", flexWrap: "wrap", gap: ".25rem 1rem", listStyle: "none",
                                  padding: "0", margin: ".5rem 0 0" });
      for (const s of this.series) {
        const item = document.createElement("li");
        item.append(LatencyChart.swatch(s.color), document.createTextNode(` ${s.label}`));
        list.append(item);
      }
      return list;
    }

    /** A small coloured dot (decorative) that ties a label to its series. */
    static swatch(color) {
      const dot = el("svg", { width: 12, height: 12, "aria-hidden": "true", focusable: "false" });
      dot.append(el("circle", { cx: 6, cy: 6, r: 5, fill: color }));
      return dot;
    }

    /** Record one delivery: `ms` of latency, arriving now. */
    add(key, ms) {
      const list = this.points.get(key);
      if (!list) return;
      list.push([performance.now() / 1000, ms]);
    }

    resize() {
      const width = Math.max(200, Math.floor(this.container.clientWidth));
      if (width === this.width) return;
      this.width = width;
      this.svg.setAttribute("width", width);
      this.svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
      this.drawFrame();
      this.render();
    }

    x(ageSec) {
      const span = this.width - PAD.left - PAD.right;
      return PAD.left + span * (1 - ageSec / this.windowSec);
    }

    y(ms) {
      const span = HEIGHT - PAD.top - PAD.bottom;
      const value = Math.min(this.maxLog, Math.max(this.minLog, Math.log10(Math.max(ms, 10 ** this.minLog))));
      return PAD.top + span * (1 - (value - this.minLog) / (this.maxLog - this.minLog));
    }

    drawFrame() {
      this.frame.replaceChildren();
      const right = this.width - PAD.right;
      for (const ms of TICKS_MS) {
        const y = this.y(ms).toFixed(1);
        this.frame.append(
          el("line", { x1: PAD.left, x2: right, y1: y, y2: y, stroke: "#d9dbde", "stroke-width": 1 }),
          el("text", { x: PAD.left - 6, y, "text-anchor": "end", "dominant-baseline": "middle",
                       "font-size": 11, fill: "#5c6166" }, tickLabel(ms)));
      }
      const bottom = HEIGHT - PAD.bottom;
      const half = Math.round(this.windowSec / 2);
      for (const [age, label] of [[this.windowSec, `-${this.windowSec} s`], [half, `-${half} s`], [0, t("now")]]) {
        const anchor = age === 0 ? "end" : age === this.windowSec ? "start" : "middle";
        this.frame.append(el("text", { x: this.x(age).toFixed(1), y: bottom + 18, "text-anchor": anchor,
                                       "font-size": 11, fill: "#5c6166" }, label));
      }
      this.frame.append(el("line", { x1: PAD.left, x2: right, y1: bottom, y2: bottom, stroke: "#5c6166" }));
    }

    /** Redraw the dots; drops those older than the window. */
    render() {
      const now = performance.now() / 1000;
      for (const [key, list] of this.points) {
        while (list.length && now - list[0][0] > this.windowSec) list.shift();
        // One zero-length round-capped segment per point draws a dot; one path per series.
        const d = list.map(([t, ms]) => `M${this.x(now - t).toFixed(1)} ${this.y(ms).toFixed(1)}h0`).join("");
        const path = this.paths.get(key);
        if (d) path.setAttribute("d", d); else path.removeAttribute("d");
      }
    }
  }

  window.Switchboard.LatencyChart = LatencyChart;
})();
