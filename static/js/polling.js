/* Interval polling, through switchboard.js with the transport forced to "polling": ask
 * "anything after my cursor?" every N ms, with If-None-Match so an empty answer is a
 * body-less 304. The cursor makes sure nothing published between two polls is lost or shown
 * twice; the library keeps it, reads the recent history on entry, and backs off with capped,
 * jittered delays on errors. This page shows the requests it makes. */
import { followChat } from "./chat-follow.js";

const S = window.Switchboard;
const topic = S.data.topic;
const counters = new S.Counters();
const slider = document.getElementById("interval");
const label = document.querySelector("[data-interval-label]");
const chat = new S.ChatRoom(document.querySelector(".chat"), {
  onSend: async (text) => {
    try {
      await follower.client.publish(topic, { text });
    } catch (err) {
      throw S.fromClientError(err);
    }
  },
});


function intervalMs() { return Number(slider.value); }

slider.addEventListener("input", () => {
  label.textContent = String(intervalMs());
  if (follower.client) follower.client.options.pollInterval = intervalMs(); // from the next round on
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

const follower = followChat({ topic, chat, counters, onTraffic, onState,
  options: () => ({ transports: ["polling"], pollInterval: intervalMs(),
    backoff: { base: 1000, cap: 30000 } }) });
