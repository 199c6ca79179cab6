/* STOMP over WebSocket with @stomp/stompjs 7 (vendored, global StompJs): CONNECT, SUBSCRIBE
 * to the chat topic, SEND to the chat handler, MESSAGE frames back. History comes from the
 * polling endpoint on entry; the SUBSCRIBE then carries last-event-id = its cursor, and after
 * a drop the library reconnects (exponential delay, capped; jitter added in beforeConnect)
 * and subscribes again with the last event-id seen, so what was missed is replayed once.
 * The frame log shows every frame in and out, raw, from the library's debug hook. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const StompJs = window.StompJs;
  const subscribeTo = S.data.subscribeDestination; // e.g. /topic/chat
  const sendTo = S.data.sendDestination; // e.g. /app/chat
  const brokerUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${new URL(S.data.stompUrl).pathname}`;
  const OFFLINE_MS = 3000; // how long the drop button keeps the page offline
  const RECEIPT_TIMEOUT_MS = 10000;
  const MAX_LOG_ENTRIES = 80;
  const MAX_FRAME_CHARS = 600;

  const counters = new S.Counters();
  const stateEl = document.querySelector("[data-stomp-state]");
  const framesEl = document.querySelector("[data-frames]");
  const dropButton = document.querySelector("[data-drop]");
  const heartBeatSelect = document.getElementById("heart-beat");
  const chat = new S.ChatRoom(document.querySelector(".chat"), { onSend: send });

  let lastEventId = null; // where a resume starts: the last event-id shown, or history's cursor
  let resumedAt = null; // server time of a resuming SUBSCRIBE: events not newer are replays
  let attempts = 0; // sockets opened (or tried)
  let connections = 0; // CONNECTED frames received
  let offlineUntil = 0;
  let nextReceipt = 0;
  const pendingSends = new Map(); // receipt -> reject: a SEND the server may refuse with an ERROR
  let refusal = null; // the last ERROR that refused a destination, shown until the next CONNECTED

  // -- the frame log ---------------------------------------------------------------------

  const logEntries = [];
  function log(arrow, text) {
    const shown = text.length > MAX_FRAME_CHARS
      ? `${text.slice(0, MAX_FRAME_CHARS)}${S.t("… ({n} characters)", { n: text.length })}` : text;
    logEntries.push(`${arrow} ${shown}`);
    if (logEntries.length > MAX_LOG_ENTRIES) logEntries.shift();
    framesEl.textContent = logEntries.join("\n");
    framesEl.scrollTop = framesEl.scrollHeight;
  }

  /** A raw frame as text a reader can follow: the NUL shown as ^@ (caret notation), trailing EOLs trimmed. */
  function showFrame(raw) {
    return raw.replace(/\0/g, "^@").replace(/\n+$/, "");
  }

  function isHeartBeat(raw) {
    return /^(\r?\n)+$/.test(raw);
  }

  /** stompjs's debug hook; with logRawCommunication every chunk in and out passes here. */
  function onDebug(line) {
    if (line === ">>> PING") { // an outgoing heart-beat (the library writes it without _transmit)
      counters.add("heartbeats-out");
      counters.add("bytes-out", 1);
      log("→", S.t("(EOL) heart-beat"));
    } else if (line.startsWith(">>> ")) {
      const raw = line.slice(4);
      counters.add("frames-out");
      counters.add("bytes-out", S.byteLength(raw));
      log("→", showFrame(raw));
    } else if (line.startsWith("<<< ")) {
      const raw = line.slice(4);
      counters.add("bytes-in", S.byteLength(raw));
      if (isHeartBeat(raw)) {
        counters.add("heartbeats-in");
        log("←", S.t("(EOL) heart-beat"));
      } else {
        counters.add("frames-in", (raw.match(/\0/g) || []).length || 1);
        log("←", showFrame(raw));
      }
    } else {
      const said = libraryLine(line);
      if (said) log("·", said);
    }
  }

  /** The few stompjs debug lines worth showing, in the page's language (null for the rest). */
  function libraryLine(line) {
    let match;
    if (/^Opening Web Socket/.test(line)) return S.t("stompjs: opening the WebSocket…");
    if (/^Web Socket Opened/.test(line)) return S.t("stompjs: WebSocket open");
    if ((match = /^Connection closed to (\S+)/.exec(line))) return S.t("stompjs: connection to {url} closed", { url: match[1] });
    if ((match = /^STOMP: scheduling reconnection in (\d+)ms/.exec(line))) {
      return S.t("stompjs: reconnecting in {ms} ms", { ms: match[1] });
    }
    return null;
  }

  // -- messages --------------------------------------------------------------------------

  function eventOf(message) {
    const headers = message.headers;
    const type = headers["content-type"] || "";
    let data;
    if (type.startsWith("application/json")) {
      try {
        data = JSON.parse(message.body);
      } catch (err) {
        data = message.body;
      }
    } else if (type.startsWith("text/")) {
      data = message.body;
    } else {
      data = type
        ? S.t("({n} bytes of {type})", { n: message.binaryBody.length, type })
        : S.t("({n} bytes of binary data)", { n: message.binaryBody.length });
    }
    return {
      id: headers["event-id"], type: headers["event-type"], data,
      sender: headers.sender || null, time: Number(headers.time),
    };
  }

  function onMessage(message) {
    if (message.headers.gap === "true") {
      chat.notice(S.t("Some messages are gone from history (gap): showing what is kept."));
      return;
    }
    const event = eventOf(message);
    const replayed = resumedAt !== null && event.time <= resumedAt;
    const delayMs = replayed ? null : S.clock.delayMs(event);
    lastEventId = event.id;
    if (chat.add(event, { replayed, delayMs })) {
      counters.add("messages");
      if (replayed) counters.add("replayed");
      if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
    }
  }

  // -- the client ------------------------------------------------------------------------

  const client = new StompJs.Client({
    brokerURL: brokerUrl,
    reconnectDelay: 1000,
    maxReconnectDelay: 15000,
    reconnectTimeMode: StompJs.ReconnectionTimeMode.EXPONENTIAL,
    logRawCommunication: true,
    debug: onDebug,
    beforeConnect: async () => {
      // Awaited by the library before each new socket: the place to wait out a drop, add
      // jitter to its exponential delay, and pick this connection's settings.
      attempts += 1;
      if (attempts > 1) {
        await S.sleep(Math.max(0, offlineUntil - Date.now()) + Math.random() * 500);
        counters.add("reconnects");
      }
      const heartBeat = Number(heartBeatSelect.value);
      client.heartbeatIncoming = heartBeat;
      client.heartbeatOutgoing = heartBeat;
      stateEl.textContent = S.t("connecting");
    },
    onConnect: (frame) => {
      connections += 1;
      refusal = null;
      const headers = { id: "sub-0" };
      if (lastEventId) headers["last-event-id"] = lastEventId;
      resumedAt = lastEventId && connections > 1 ? S.clock.now() : null;
      client.subscribe(subscribeTo, onMessage, headers);
      chat.presence.reload(); // the subscription resumes after our event-id: it brings every change since
      stateEl.textContent = S.t("connected, STOMP {version}", { version: frame.headers.version });
      chat.status(lastEventId
        ? S.tx("Connected: subscribed to {destination} (resuming)", { destination: S.verbatim(subscribeTo) })
        : S.tx("Connected: subscribed to {destination}", { destination: S.verbatim(subscribeTo) }), "ok");
    },
    onStompError: (frame) => {
      // A refused SUBSCRIBE or SEND (401: sign in, 403: not allowed) or a protocol error; the
      // server closes the connection after it, so no RECEIPT will come for a pending SEND.
      refusal = S.Refusal.fromStompError(frame);
      const said = S.verbatim(frame.headers.message || "?");
      const error = refusal || new S.PageError(S.t("ERROR from the server: {message}", { message: frame.headers.message || "?" }));
      for (const reject of pendingSends.values()) reject(error);
      pendingSends.clear();
      if (!chat.refused(refusal, S.t("; the server closes the connection"))) {
        chat.status(S.tx("ERROR from the server: {message}; it closes the connection", { message: said }), "error");
      }
    },
    onWebSocketClose: (event) => {
      stateEl.textContent = S.t("closed");
      if (!client.active) return;
      let why;
      if (event.code === 1001) why = S.t("Server going away (1001)");
      else if (event.reason) why = S.tx("Disconnected ({code} {reason})", { code: event.code, reason: S.verbatim(event.reason) });
      else why = S.t("Disconnected ({code})", { code: event.code });
      const then = S.t("; reconnecting");
      if (!chat.refused(refusal, then)) chat.status(S.join(why, then), "error");
    },
  });

  /** Send a chat message to the handler and wait for its RECEIPT. */
  function send(text) {
    if (!client.connected) return Promise.reject(new S.PageError(S.t("not connected; the page is reconnecting")));
    const receipt = `send-${++nextReceipt}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pendingSends.delete(receipt);
        reject(new S.PageError(S.t("no RECEIPT within {s} s", { s: RECEIPT_TIMEOUT_MS / 1000 })));
      }, RECEIPT_TIMEOUT_MS);
      pendingSends.set(receipt, (error) => {
        clearTimeout(timer);
        reject(error);
      });
      client.watchForReceipt(receipt, () => {
        clearTimeout(timer);
        pendingSends.delete(receipt);
        resolve();
      });
      client.publish({
        destination: sendTo,
        body: JSON.stringify({ text }),
        headers: { "content-type": "application/json", receipt },
      });
    });
  }

  async function loadHistory() {
    lastEventId = await chat.loadHistory(S.data.eventsUrl);
  }

  dropButton.addEventListener("click", () => {
    if (!client.connected) return;
    offlineUntil = Date.now() + OFFLINE_MS;
    chat.status(S.t("Dropped on purpose: offline for {s} s, then resuming", { s: OFFLINE_MS / 1000 }), "error");
    client.forceDisconnect();
  });

  heartBeatSelect.addEventListener("change", () => {
    const seconds = heartBeatSelect.value / 1000;
    chat.notice(seconds
      ? S.t("Heart-beats every {s} s from the next connection on.", { s: seconds })
      : S.t("No heart-beats from the next connection on."));
  });

  window.addEventListener("pagehide", () => {
    client.deactivate();
  });
  window.addEventListener("pageshow", (ev) => {
    if (ev.persisted) client.activate(); // back from the back/forward cache
  });

  S.clock.measure().then(loadHistory).then(() => client.activate());
})();
