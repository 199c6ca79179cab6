/* Interval polling, through switchboard.js with the transport forced to "polling": ask
 * "anything after my cursor?" every N ms, with If-None-Match so an empty answer is a
 * body-less 304. The cursor makes sure nothing published between two polls is lost or shown
 * twice; the library keeps it, reads the recent history on entry, and backs off with capped,
 * jittered delays on errors. This page shows the requests it makes. */
import { Switchboard as Client } from "./switchboard.js";

const S = window.Switchboard;
const topic = S.data.topic;
const counters = new S.Counters();
const slider = document.getElementById("interval");
const label = document.querySelector("[data-interval-label]");
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
let cursor = null; // the last id delivered: where a page back from the bfcache resumes

function intervalMs() { return Number(slider.value); }

slider.addEventListener("input", () => {
  label.textContent = String(intervalMs());
  if (client) client.options.pollInterval = intervalMs(); // from the next round on
});

function onTraffic(t) {
  if (t.kind !== "poll") return;
  if (t.type === "start") {
    counters.add("requests");
  } else if (t.type === "end") {
    if (t.status === 304) counters.add("empty");
    counters.add("bytes", t.bytes);
    if (t.status === 200 || t.status === 304) chat.status(S.t("Polling every {ms} ms", { ms: intervalMs() }));
  }
}

function onState({ state, retryIn, error }) {
  if (state !== "reconnecting" || retryIn === undefined || !error) return;
  counters.add("errors");
  const then = S.t("; retrying in {s} s", { s: Math.round(retryIn / 1000) });
  const why = S.fromClientError(error);
  if (!chat.refused(why, then)) chat.status(S.join(S.tx("Request failed ({why})", { why: S.explain(why) }), then), "error");
}

function onEvent(event, { history }) {
  cursor = event.id;
  const delayMs = history ? null : S.clock.delayMs(event);
  if (chat.add(event, { history, delayMs })) {
    counters.add("messages");
    if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
  }
}

function start() {
  client = new Client(location.origin, { transports: ["polling"], pollInterval: intervalMs(),
    backoff: { base: 1000, cap: 30000 } });
  client.on("traffic", onTraffic);
  client.on("state", onState);
  client.on("error", () => {}); // shown by the state that follows it, or by the subscription's onError
  client.subscribe(topic, {
    since: cursor || undefined,
    history: cursor ? undefined : 50,
    onEvent,
    onGap: () => chat.notice(S.t("Some messages are gone from history (gap): showing what is kept.")),
    onError: (err) => chat.refused(S.fromClientError(err)),
    // The polls after this cursor bring every change since.
    onState: ({ state }) => { if (state === "subscribed") chat.presence.reload(); },
  });
}

window.addEventListener("pagehide", () => {
  if (client) client.close();
  client = null;
});
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted && !client) start(); // back from the bfcache: resume with the cursor we had
});

S.clock.measure().then(start);
