/* The study notes' chat client, as its page calls SockJS and stomp.js 2.3.3 (both vendored):
 * Stomp.over(new SockJS("/websocket/stomp")), connect({}), subscribe("/sub/chat") with each body
 * parsed as {"sender", "message"}, send("/pub/chat", {}, text), disconnect() on unload. Around
 * it, this page adds what the seed's page lacks: a transport picker (sockjs-client's
 * `transports` option, kept in ?transport= so a reload keeps it), reconnects with capped
 * backoff and jitter, a frame log, and the meter's counters (sockjs-meter.js). */
(function () {
  "use strict";
  const S = window.Switchboard;
  const url = document.body.dataset.sockjsUrl; // /websocket/stomp
  const MAX_LOG_ENTRIES = 60;
  const MAX_FRAME_CHARS = 400;

  const messageContainer = document.getElementById("message-container");
  const messageInput = document.getElementById("message");
  const sendButton = document.getElementById("send-message-button");
  const picker = document.getElementById("transport");
  const statusEl = document.querySelector("[data-status]");
  const transportEl = document.querySelector("[data-transport]");
  const framesEl = document.querySelector("[data-frames]");
  const counters = new S.Counters();
  const backoff = new S.Backoff(500, 15000);

  const params = new URLSearchParams(location.search);
  const forced = params.get("transport") || "";
  picker.value = [...picker.options].some((o) => o.value === forced) ? forced : "";

  let stompClient = null;
  let messages = 0;
  let sessions = 0;
  let closing = false;

  function status(text, kind = "info") {
    statusEl.textContent = text;
    statusEl.dataset.kind = kind;
  }

  const logEntries = [];
  function log(line) {
    const shown = line.length > MAX_FRAME_CHARS ? `${line.slice(0, MAX_FRAME_CHARS)}…` : line;
    logEntries.push(shown.replace(/\0/g, "^@"));
    if (logEntries.length > MAX_LOG_ENTRIES) logEntries.shift();
    framesEl.textContent = logEntries.join("\n");
  }

  function perMessage() {
    const meter = window.SockJSMeter;
    counters.set("requests", meter.requests);
    counters.set("bytes-in", meter.bytesIn);
    counters.set("bytes-out", meter.bytesOut);
    counters.set("messages", messages);
    counters.set("requests-per-message", messages ? (meter.requests / messages).toFixed(1) : "–");
    counters.set("bytes-per-message", messages ? S.formatBytes(Math.round(meter.bytesIn / messages)) : "–");
  }
  window.SockJSMeter.onChange(perMessage);

  const appendMessage = (message) => {
    const messageElement = document.createElement("li");
    messageElement.textContent = message;
    messageContainer.appendChild(messageElement);
    messageContainer.scrollTop = messageContainer.scrollHeight;
  };

  function connect() {
    const options = picker.value ? { transports: [picker.value] } : {};
    const sock = new SockJS(url, null, options);
    sessions += 1;
    if (sessions > 1) counters.add("reconnects");
    status(S.t("Connecting…"));
    sock.addEventListener("open", () => { transportEl.textContent = sock.transport || "?"; });
    stompClient = Stomp.over(sock);
    stompClient.debug = (line) => {
      if (line.startsWith(">>> ") || line.startsWith("<<< ")) log(`${line.startsWith(">>>") ? "→" : "←"} ${line.slice(4)}`);
    };
    const client = stompClient;
    client.connect({}, () => {
      backoff.reset();
      status(S.t("Connected over {transport}", { transport: sock.transport || "?" }), "ok");
      client.subscribe("/sub/chat", (data) => {
        const message = JSON.parse(data.body);
        messages += 1;
        perMessage();
        appendMessage(`${message.sender} >> ${message.message}`);
      });
    }, (error) => {
      if (client !== stompClient || closing) return;
      // stomp.js 2.3.3 calls this with an ERROR frame, or a string when the socket closed.
      const why = typeof error === "string" ? error : (error.headers && error.headers.message) || "ERROR";
      const wait = backoff.next();
      status(S.t("Disconnected ({why}); reconnecting in {s} s", { why, s: (wait / 1000).toFixed(1) }), "error");
      setTimeout(() => { if (client === stompClient) connect(); }, wait);
    });
  }

  const sendMessage = () => {
    if (!stompClient || !stompClient.connected) {
      status(S.t("Not connected yet: the message was not sent"), "error");
      return;
    }
    stompClient.send("/pub/chat", {}, messageInput.value);
    messageInput.value = "";
  };

  sendButton.addEventListener("click", sendMessage);
  // The seed's page is a form whose only button is type="button": Enter would submit the form
  // and reload the page. Enter sends instead.
  document.querySelector("[data-seed-form]").addEventListener("submit", (ev) => { ev.preventDefault(); sendMessage(); });

  picker.addEventListener("change", () => {
    const next = new URL(location.href);
    if (picker.value) next.searchParams.set("transport", picker.value);
    else next.searchParams.delete("transport");
    history.replaceState(null, "", next);
    const old = stompClient;
    stompClient = null;
    if (old) { try { old.disconnect(); } catch (err) { /* already closed */ } }
    connect();
  });

  window.addEventListener("beforeunload", () => {
    closing = true;
    if (stompClient) stompClient.disconnect();
  });

  connect();
})();
