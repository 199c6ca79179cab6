/* What a SockJS transport costs on the wire, counted in this page: requests, bytes in and out.
 * Loaded before sockjs-client, it wraps XMLHttpRequest, EventSource and WebSocket, and watches
 * script and iframe loads (JSONP, htmlfile) with a PerformanceObserver, for URLs under the
 * SockJS endpoint only. Bytes are payload bytes as the browser hands them over (UTF-8), not
 * HTTP headers. window.SockJSMeter.onChange(fn) hears every change. */
(function () {
  "use strict";
  const base = new URL(document.body.dataset.sockjsUrl, location.href).pathname;
  const meter = { requests: 0, bytesIn: 0, bytesOut: 0, listeners: [] };
  const encoder = new TextEncoder();
  const bytes = (text) => (typeof text === "string" ? encoder.encode(text).length : (text && text.byteLength) || 0);
  const ours = (url) => {
    try { return new URL(url, location.href).pathname.startsWith(base); } catch (err) { return false; }
  };
  function changed() { for (const fn of meter.listeners) fn(meter); }
  meter.onChange = (fn) => { meter.listeners.push(fn); fn(meter); };

  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.sockjsMetered = ours(url);
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (body) {
    if (this.sockjsMetered) {
      meter.requests += 1;
      meter.bytesOut += bytes(body);
      let seen = 0;
      const count = () => {
        // A streaming response grows in place: count only what is new.
        let text = "";
        try { text = this.responseText || ""; } catch (err) { return; }
        if (text.length > seen) {
          meter.bytesIn += bytes(text.slice(seen));
          seen = text.length;
          changed();
        }
      };
      this.addEventListener("progress", count);
      this.addEventListener("load", count);
      changed();
    }
    return send.call(this, body);
  };

  if (window.EventSource) {
    const Native = window.EventSource;
    window.EventSource = function (url, init) {
      const source = new Native(url, init);
      if (ours(url)) {
        meter.requests += 1;
        changed();
        source.addEventListener("message", (ev) => { meter.bytesIn += bytes(ev.data) + 8; changed(); }); // "data: " + CRLFs
      }
      return source;
    };
    window.EventSource.prototype = Native.prototype;
    Object.assign(window.EventSource, { CONNECTING: 0, OPEN: 1, CLOSED: 2 });
  }

  if (window.WebSocket) {
    const Native = window.WebSocket;
    window.WebSocket = function (url, protocols) {
      const socket = protocols === undefined ? new Native(url) : new Native(url, protocols);
      if (ours(url)) {
        meter.requests += 1; // the upgrade request
        changed();
        socket.addEventListener("message", (ev) => { meter.bytesIn += bytes(ev.data); changed(); });
        const nativeSend = socket.send.bind(socket);
        socket.send = (data) => { meter.bytesOut += bytes(data); changed(); return nativeSend(data); };
      }
      return socket;
    };
    window.WebSocket.prototype = Native.prototype;
    Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  }

  if (window.PerformanceObserver) {
    // JSONP polls are <script> loads and htmlfile an <iframe>: counted when they finish.
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        if ((entry.initiatorType === "script" || entry.initiatorType === "iframe") && ours(entry.name)) {
          meter.requests += 1;
          meter.bytesIn += entry.encodedBodySize || 0;
          changed();
        }
      }
    }).observe({ type: "resource", buffered: false });
  }

  window.SockJSMeter = meter;
})();
