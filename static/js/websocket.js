/* WebSocket: one socket both ways, speaking /ws's JSON ops. History comes from the polling
 * endpoint on entry; then "subscribe" with since = its cursor. On a drop the page reconnects
 * with capped backoff and jitter and subscribes again with since = the last id it saw, so
 * the server replays what was missed (shown as replayed), exactly once, then goes live. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const topic = S.data.topic;
  const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${S.data.wsPath}`;
  const OFFLINE_MS = 3000; // how long the drop button keeps the page offline
  const REPLY_TIMEOUT_MS = 10000;
  const MAX_LOG_LINES = 60;

  const counters = new S.Counters();
  const backoff = new S.Backoff(500, 10000);
  const stateEl = document.querySelector("[data-ws-state]");
  const framesEl = document.querySelector("[data-frames]");
  const dropButton = document.querySelector("[data-drop]");
  const chat = new S.ChatRoom(document.querySelector(".chat"), {
    onSend: (text) => request({ op: "publish", topic, data: { text } }, true),
  });

  let ws = null; // the current socket; a closed one is replaced, never reused
  let subscribed = false;
  let cursor = null; // the last event id shown (or the subscription's cursor): where a resume starts
  let resumedAt = null; // server time of the last (re)subscribe with since: older events are replays
  let retryTimer = null;
  let leaving = false;
  let nextRef = 0;
  const waiting = new Map(); // ref -> { resolve, reject, timer }

  function showState(text) {
    stateEl.textContent = text;
  }

  const logLines = [];
  function logFrame(arrow, text) {
    logLines.push(`${arrow}\u00a0${text.length > 300 ? `${text.slice(0, 300)}…` : text}`);
    if (logLines.length > MAX_LOG_LINES) logLines.shift();
    framesEl.textContent = logLines.join("\n");
    framesEl.scrollTop = framesEl.scrollHeight;
  }

  function sendOp(socket, op) {
    const text = JSON.stringify(op);
    socket.send(text);
    counters.add("frames-out");
    counters.add("bytes-out", S.byteLength(text));
    logFrame("→", text);
  }

  /** Send an op with a fresh ref; resolves with its "ok" reply, rejects with its "error". */
  function request(op, needSubscription = false) {
    return new Promise((resolve, reject) => {
      const socket = ws;
      if (!socket || socket.readyState !== WebSocket.OPEN || (needSubscription && !subscribed)) {
        reject(new S.PageError(S.t("not connected; the page is reconnecting")));
        return;
      }
      const ref = `r${++nextRef}`;
      const timer = setTimeout(() => {
        waiting.delete(ref);
        reject(new S.PageError(S.t("no reply within {s} s", { s: REPLY_TIMEOUT_MS / 1000 })));
      }, REPLY_TIMEOUT_MS);
      waiting.set(ref, { resolve, reject, timer });
      sendOp(socket, { ...op, ref });
    });
  }

  function settle(reply) {
    const entry = waiting.get(reply.ref);
    if (!entry) return false;
    waiting.delete(reply.ref);
    clearTimeout(entry.timer);
    if (reply.op === "ok") entry.resolve(reply);
    else entry.reject(S.Refusal.fromWsError(reply) || new S.ServerError(null, reply.error, reply.message));
    return true;
  }

  function failWaiting(reason) {
    for (const entry of waiting.values()) {
      clearTimeout(entry.timer);
      entry.reject(new S.PageError(reason));
    }
    waiting.clear();
  }

  async function loadHistory() {
    cursor = await chat.loadHistory(S.data.eventsUrl);
  }

  async function subscribe() {
    const op = { op: "subscribe", topic };
    if (cursor) op.since = cursor;
    resumedAt = cursor ? S.clock.now() : null;
    const reply = await request(op);
    if (!cursor) cursor = reply.cursor || null;
    subscribed = true;
    backoff.reset();
    chat.presence.reload(); // the subscription resumes after our cursor: it brings every change since
    showState(S.t("open, subscribed"));
    chat.status(S.tx("Connected: subscribed to {topic} over one WebSocket", { topic: S.verbatim(topic) }), "ok");
  }

  function onEvent(event) {
    const replayed = resumedAt !== null && event.time <= resumedAt;
    const delayMs = replayed ? null : S.clock.delayMs(event);
    cursor = event.id;
    if (chat.add(event, { replayed, delayMs })) {
      counters.add("messages");
      if (replayed) counters.add("replayed");
      if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
    }
  }

  function onServerError(message) {
    const refusal = S.Refusal.fromWsError(message); // e.g. the token expired on an open socket
    if (refusal) {
      chat.refused(refusal);
    } else if (message.error === "slow_consumer" && message.topic === topic) {
      // The server dropped this subscription after a gap: take it up again from here.
      subscribed = false;
      chat.notice(S.t("This page fell too far behind; subscribing again from the last message seen."));
      subscribe().catch((err) => chat.status(S.tx("Subscribe failed: {why}", { why: S.explain(err) }), "error"));
    } else {
      chat.status(S.tx("Server error: {why}", { why: S.explain(new S.ServerError(null, message.error, message.message)) }), "error");
    }
  }

  function onMessage(data) {
    counters.add("frames-in");
    counters.add("bytes-in", S.byteLength(data));
    logFrame("←", data);
    let message;
    try {
      message = JSON.parse(data);
    } catch (err) {
      return; // the server only sends JSON; nothing to do with anything else
    }
    if (message.op === "event") {
      if (message.topic === topic) onEvent(message);
    } else if (message.op === "gap") {
      chat.notice(S.t("Some messages are gone from history (gap): showing what is kept."));
    } else if (message.op === "ok" || message.op === "error") {
      if (!settle(message) && message.op === "error") onServerError(message);
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    showState(S.t("connecting"));
    const socket = new WebSocket(wsUrl);
    ws = socket;
    let refusal = null; // why the server refused this socket's subscribe, shown until the next try
    socket.addEventListener("open", () => {
      if (socket !== ws) return;
      showState(S.t("open, subscribing"));
      subscribe().catch((err) => {
        if (socket !== ws) return;
        if (err instanceof S.Refusal) refusal = err;
        else chat.status(S.tx("Subscribe failed: {why}", { why: S.explain(err) }), "error");
        socket.close(4000, "subscribe failed");
      });
    });
    socket.addEventListener("message", (ev) => {
      if (socket === ws) onMessage(ev.data);
    });
    socket.addEventListener("close", (ev) => {
      if (socket !== ws) return;
      ws = null;
      subscribed = false;
      failWaiting(S.t("the connection closed"));
      if (leaving) return;
      const why = closeReason(ev);
      // 4001: the server closed a socket whose token expired and was not renewed in time.
      if (ev.code === 4001 && !refusal) refusal = new S.Refusal(401, "unauthorized", ev.reason || S.t("the token has expired"));
      reconnectLater(why, backoff.next(), refusal);
    });
  }

  /** What a close event means, in the page's language (the server's reason as it came). */
  function closeReason(ev) {
    if (ev.code === 1001) return S.t("Server going away (1001)");
    return ev.reason
      ? S.tx("Disconnected ({code} {reason})", { code: ev.code, reason: S.verbatim(ev.reason) })
      : S.t("Disconnected ({code})", { code: ev.code });
  }

  function reconnectLater(why, waitMs, refusal = null) {
    showState(S.t("closed"));
    const then = S.t("; reconnecting in {s} s", { s: (waitMs / 1000).toFixed(1) });
    if (!chat.refused(refusal, then)) chat.status(S.join(why, then), "error");
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => {
      counters.add("reconnects");
      connect();
    }, waitMs);
  }

  dropButton.addEventListener("click", () => {
    const socket = ws;
    if (!socket) return;
    ws = null; // its close event is ours, not a failure to back off from
    subscribed = false;
    failWaiting(S.t("dropped on purpose"));
    socket.close(4000, "dropped by the demo button");
    reconnectLater(S.t("Dropped on purpose, offline"), OFFLINE_MS);
  });

  window.addEventListener("pagehide", () => {
    leaving = true;
    clearTimeout(retryTimer);
    if (ws) ws.close(1000, "page closed");
  });
  window.addEventListener("pageshow", (ev) => {
    if (!ev.persisted) return; // back from the back/forward cache: the socket is gone
    leaving = false;
    ws = null;
    counters.add("reconnects");
    connect();
  });

  S.clock.measure().then(loadHistory).then(connect);
})();
