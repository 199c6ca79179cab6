/* Server-Sent Events, through switchboard.js with the transport forced to "sse" and read
 * with the browser's own EventSource (the library's `eventSource: true`; this page sends no
 * Authorization header: the session cookie, or none).
 *
 * - The library reads the recent history first (the polling endpoint), then opens
 *   /api/stream?topic=chat&last_event_id=<that cursor>: EventSource cannot set the
 *   Last-Event-ID header on a first connection, so the cursor goes in the URL.
 * - Events are typed: the chat is `event: message`, joins and leaves are `event: presence`,
 *   the producer's ticks are `event: tick` and the server's loss signal is `event: gap`;
 *   EventSource dispatches each type to its own addEventListener(type).
 * - When the stream breaks or the server ends it, the browser reconnects by itself after the
 *   server's `retry:` and sends the Last-Event-ID header: the server replays what was missed.
 * - "Drop connection" closes the EventSource. A closed EventSource never reconnects, so the
 *   library opens a new one, again with ?last_event_id=<last id>. Both count as reconnects. */
import { Switchboard as Client } from "./switchboard.js";

const S = window.Switchboard;
const topic = S.data.topic;
const counters = new S.Counters();
const lastIdEl = document.querySelector("[data-last-id]");
const dropButton = document.querySelector("[data-drop]");
const tickEl = document.querySelector("[data-tick]");
const ticksToggle = document.querySelector("[data-ticks-toggle]");
const DROP_SECONDS = 5;
const chat = new S.ChatRoom(document.querySelector(".chat"), {
  onSend: async (text) => {
    try {
      await client.publish(topic, { text });
    } catch (err) {
      throw S.fromClientError(err);
    }
  },
});

let client = null;
let lastId = ""; // the last id delivered: where a reconnect resumes
let opens = 0;
let openedAt = null; // server clock (s) when the current stream opened
let countdown = null; // the drop button's timer

function remember(id) {
  lastId = id;
  lastIdEl.textContent = id;
}

function onEvent(event, { history }) {
  remember(event.id);
  // Published before this stream opened: it came from history, i.e. replayed.
  const replayed = !history && opens > 1 && openedAt !== null && event.time < openedAt;
  const delayMs = history || replayed ? null : S.clock.delayMs(event);
  if (chat.add(event, { history, replayed, delayMs })) {
    counters.add("messages");
    if (replayed) counters.add("replayed");
    if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
  }
}

function onGap({ slow }) {
  counters.add("gaps");
  chat.notice(slow
    ? S.t("This page fell too far behind: the server dropped the stream; reconnecting (gap).")
    : S.t("Some messages are gone from history (gap): continuing with what is kept."));
}

function onState({ state, retryIn, error, browser, lastEventId, dropped }) {
  if (state === "open") {
    stopCountdown();
    opens += 1;
    openedAt = S.clock.now();
    if (opens > 1) counters.add("reconnects");
    chat.status(lastId
      ? S.tx("Connected (stream open, resuming after {id})", { id: S.verbatim(lastId) })
      : S.t("Connected (stream open)"), "ok");
    return;
  }
  if (state !== "reconnecting" || dropped) return;
  if (browser) {
    // The browser retries by itself after the server's `retry:` delay, sending Last-Event-ID.
    chat.status(S.tx("Stream lost; the browser reconnects by itself with Last-Event-ID: {id}",
      { id: lastEventId ? S.verbatim(lastEventId) : S.t("(none)") }), "error");
    return;
  }
  if (retryIn === undefined || !error) return;
  // The browser gave up (an HTTP error): the library opens a new EventSource after a backoff.
  const then = S.t("; reopening in {s} s", { s: (retryIn / 1000).toFixed(1) });
  const why = S.fromClientError(error);
  if (chat.refused(why, then)) return;
  chat.status(error.status
    ? S.join(S.tx("Stream failed ({why})", { why: S.explain(why) }), then)
    : S.join(S.t("Stream failed"), then), "error");
}

function onError(err) {
  if (!err.expired) return; // anything else ends the stream: the "reconnecting" state says why
  // The token behind the cookie expired: the server ends the stream, and the browser
  // reconnects with whatever credentials it still has (none: its cookie expired too).
  const refusal = S.fromClientError(err);
  chat.notice(refusal.describe());
  chat.refused(refusal);
}

function start() {
  client = new Client(location.origin, { transports: ["sse"], eventSource: true,
    backoff: { base: 1000, cap: 30000 } });
  client.on("state", onState);
  client.on("error", onError);
  client.subscribe(topic, {
    since: lastId || undefined,
    history: lastId ? undefined : 50,
    onEvent,
    onGap,
    onError: (err) => {
      const why = S.fromClientError(err);
      if (!chat.refused(why)) chat.notice(S.tx("Could not load recent messages ({why}); showing new ones.", { why: S.explain(why) }));
    },
    // The stream resumes after our cursor: it brings every change since.
    onState: ({ state }) => { if (state === "subscribed") chat.presence.reload(); },
  });
}

function stopCountdown() {
  clearTimeout(countdown);
  countdown = null;
  dropButton.disabled = false;
  dropButton.textContent = S.t("Drop connection for {s} s", { s: DROP_SECONDS });
}

dropButton.addEventListener("click", () => {
  if (!client || client.state !== "open") return;
  client.drop(DROP_SECONDS * 1000); // closes the EventSource; a new one after the wait
  dropButton.disabled = true;
  let left = DROP_SECONDS;
  const tick = () => {
    if (left === 0) {
      chat.status(S.tx("Reopening with ?last_event_id={id}…", { id: lastId ? S.verbatim(`${topic}~${lastId}`) : S.t("(none)") }));
      return;
    }
    dropButton.textContent = S.t("Reconnecting in {s} s…", { s: left });
    chat.status(lastId
      ? S.tx("Disconnected by you. Messages sent now will be replayed after {id}.", { id: S.verbatim(lastId) })
      : S.t("Disconnected by you. Messages sent now will be replayed from the start."), "error");
    left -= 1;
    countdown = setTimeout(tick, 1000);
  };
  tick();
});

// -- ticks: a second EventSource, typed events only (onmessage would never fire) --------

let ticks = null;

function listenToTicks() {
  const es = new EventSource(S.data.ticksUrl);
  ticks = es;
  ticks.addEventListener("tick", (ev) => {
    const event = JSON.parse(ev.data);
    counters.add("ticks");
    tickEl.textContent = S.t("tick {n} · id {id} · worker {worker} · {ms} ms after publish",
      { n: event.data.n, id: ev.lastEventId, worker: event.data.worker, ms: S.clock.delayMs(event) });
  });
  ticks.addEventListener("error", async () => {
    if (es !== ticks) return;
    if (es.readyState === EventSource.CONNECTING) {
      tickEl.textContent = S.t("Ticks: reconnecting…"); // the browser does it, with Last-Event-ID
      return;
    }
    const why = await S.streamError(es.url); // closed for good: say why (a refusal, most likely)
    if (es === ticks) tickEl.replaceChildren(S.tx("Ticks: {why}", { why: why ? S.explain(why) : S.t("the stream failed") }));
  });
  ticksToggle.textContent = S.t("Stop listening to ticks");
  ticksToggle.setAttribute("aria-pressed", "true");
}

function stopTicks() {
  if (ticks) ticks.close();
  ticks = null;
  tickEl.textContent = S.t("Not listening: the server stops ticking once nobody listens.");
  ticksToggle.textContent = S.t("Listen to ticks");
  ticksToggle.setAttribute("aria-pressed", "false");
}

ticksToggle.addEventListener("click", () => (ticks ? stopTicks() : listenToTicks()));

window.addEventListener("pagehide", () => {
  if (client) client.close();
  client = null;
  stopCountdown();
  if (ticks) ticks.close();
});
window.addEventListener("pageshow", (ev) => {
  if (!ev.persisted) return; // back from the bfcache: the streams were closed on pagehide
  if (!client) start();
  if (ticks) listenToTicks();
});

S.clock.measure().then(start);
listenToTicks();
