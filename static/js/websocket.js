/* WebSocket: one socket both ways, speaking /ws's JSON ops, through switchboard.js with the
 * WebSocket forced. The library reads the recent history on entry, subscribes with since =
 * its cursor, and on a drop reconnects with capped backoff and jitter and subscribes again
 * with since = the last id delivered, so the server replays what was missed (shown as
 * replayed), exactly once, then goes live. This page only shows what happens. */
import { Switchboard as Client } from "./switchboard.js";

const S = window.Switchboard;
const topic = S.data.topic;
const OFFLINE_MS = 3000; // how long the drop button keeps the page offline
const MAX_LOG_LINES = 60;

const counters = new S.Counters();
const stateEl = document.querySelector("[data-ws-state]");
const framesEl = document.querySelector("[data-frames]");
const dropButton = document.querySelector("[data-drop]");
const chat = new S.ChatRoom(document.querySelector(".chat"), { onSend: (text) => send(text) });

let client = null;
let cursor = null; // the last id delivered: where a page back from the bfcache resumes
let resumedAt = null; // server time of the last resubscribe: older events are replays
let refusal = null; // why the server refused the subscription, shown until it is accepted
let opened = false;

const logLines = [];
function logFrame(arrow, text) {
  logLines.push(`${arrow}\u00a0${text.length > 300 ? `${text.slice(0, 300)}…` : text}`);
  if (logLines.length > MAX_LOG_LINES) logLines.shift();
  framesEl.textContent = logLines.join("\n");
  framesEl.scrollTop = framesEl.scrollHeight;
}

async function send(text) {
  if (!client || client.state !== "open") throw new S.PageError(S.t("not connected; the page is reconnecting"));
  try {
    await client.publish(topic, { text });
  } catch (err) {
    throw S.fromClientError(err);
  }
}

/** What a failed socket means, in the page's language (the server's reason as it came). */
function closeReason(err) {
  if (!err) return S.t("Disconnected ({code})", { code: 1006 });
  if (err.closeCode === 1001) return S.t("Server going away (1001)");
  if (err.closeCode !== null) {
    return err.closeReason
      ? S.tx("Disconnected ({code} {reason})", { code: err.closeCode, reason: S.verbatim(err.closeReason) })
      : S.t("Disconnected ({code})", { code: err.closeCode });
  }
  return S.tx("Server error: {why}", { why: S.explain(S.fromClientError(err)) });
}

function onState({ state, retryIn, error, dropped }) {
  if (state === "connecting") stateEl.textContent = S.t("connecting");
  if (state === "open") stateEl.textContent = S.t("open, subscribing");
  if (state !== "reconnecting") return;
  stateEl.textContent = S.t("closed");
  if (retryIn === undefined) return;
  const then = S.t("; reconnecting in {s} s", { s: (retryIn / 1000).toFixed(1) });
  if (dropped) chat.status(S.join(S.t("Dropped on purpose, offline"), then), "error");
  else if (!chat.refused(refusal || S.fromClientError(error), then)) chat.status(S.join(closeReason(error), then), "error");
}

function onSubscription({ state }) {
  if (state !== "subscribed") return;
  refusal = null;
  if (opened) {
    counters.add("reconnects");
    resumedAt = S.clock.now();
  }
  opened = true;
  chat.presence.reload(); // the subscription resumes after our cursor: it brings every change since
  stateEl.textContent = S.t("open, subscribed");
  chat.status(S.tx("Connected: subscribed to {topic} over one WebSocket", { topic: S.verbatim(topic) }), "ok");
}

function onEvent(event, { history }) {
  cursor = event.id;
  const replayed = !history && resumedAt !== null && event.time <= resumedAt;
  const delayMs = history || replayed ? null : S.clock.delayMs(event);
  if (chat.add(event, { history, replayed, delayMs })) {
    counters.add("messages");
    if (replayed) counters.add("replayed");
    if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
  }
}

function onError(err) {
  const mine = S.fromClientError(err);
  if (mine instanceof S.Refusal) {
    refusal = mine;
    chat.refused(mine);
  } else if (err.code === "slow_consumer") {
    chat.notice(S.t("This page fell too far behind; subscribing again from the last message seen."));
  } else if (err.code === "bad_reply") {
    chat.status(S.tx("Server error: {why}", { why: S.explain(mine) }), "error");
  }
  // Anything else ends the socket: the "reconnecting" state says why.
}

function start() {
  client = new Client(location.origin, { transports: ["websocket"], paths: { ws: S.data.wsPath },
    backoff: { base: 500, cap: 10000 } });
  client.on("state", onState);
  client.on("error", () => {}); // told per subscription (onError) and by the state's error
  client.on("traffic", (t) => {
    if (t.kind !== "websocket" || (t.type !== "in" && t.type !== "out")) return;
    counters.add(t.type === "in" ? "frames-in" : "frames-out");
    counters.add(t.type === "in" ? "bytes-in" : "bytes-out", t.bytes);
    logFrame(t.type === "in" ? "←" : "→", t.text);
  });
  client.subscribe(topic, {
    since: cursor || undefined,
    history: cursor ? undefined : 50,
    onEvent,
    onGap: () => chat.notice(S.t("Some messages are gone from history (gap): showing what is kept.")),
    onError,
    onState: onSubscription,
  });
}

dropButton.addEventListener("click", () => {
  if (client && client.state === "open") client.drop(OFFLINE_MS);
});

window.addEventListener("pagehide", () => {
  if (client) client.close();
  client = null;
});
window.addEventListener("pageshow", (ev) => {
  if (!ev.persisted || client) return; // back from the back/forward cache: the socket is gone
  counters.add("reconnects");
  start();
});

S.clock.measure().then(start);
