/* Long polling, through switchboard.js with the transport forced to "long-polling": ask
 * "anything after my cursor?" and let the server hold the question until there is an answer
 * (200) or the hold time runs out (204), then ask again at once.
 *
 * The cursor is what makes it lossless: an event published while no request is parked
 * (between an answer and the next request) is returned by that next request. The library
 * keeps it, reads the recent history on entry, and backs off with capped exponential delays
 * and jitter on errors, never a hot retry loop. This page shows the requests it makes. */
import { followChat } from "./chat-follow.js";

const S = window.Switchboard;
const topic = S.data.topic;
const counters = new S.Counters();
const slider = document.getElementById("hold");
const holdLabel = document.querySelector("[data-hold-label]");
const chat = new S.ChatRoom(document.querySelector(".chat"), {
  onSend: async (text) => {
    try {
      await follower.client.publish(topic, { text });
    } catch (err) {
      throw S.fromClientError(err);
    }
  },
});


function holdSeconds() { return Number(slider.value); }

slider.addEventListener("input", () => {
  holdLabel.textContent = String(holdSeconds());
  if (follower.client) follower.client.options.longPollTimeout = holdSeconds(); // from the next request on
});

function onTraffic(t) {
  if (t.kind !== "long-poll") return;
  if (t.type === "start") {
    counters.add("requests");
    chat.status(S.t("Waiting for news (held up to {s} s)…", { s: holdSeconds() }), "ok");
  } else if (t.type === "end") {
    if (t.status === 200) counters.add("answers");
    else if (t.status === 204) counters.add("timeouts");
    counters.add("bytes", t.bytes);
  }
}

function onState({ state, retryIn, error }) {
  if (state !== "reconnecting" || retryIn === undefined || !error) return;
  counters.add("errors");
  const then = S.t("; retrying in {s} s", { s: (retryIn / 1000).toFixed(1) });
  const why = S.fromClientError(error);
  if (!chat.refused(why, then)) chat.status(S.join(S.tx("Request failed ({why})", { why: S.explain(why) }), then), "error");
}

const follower = followChat({ topic, chat, counters, onTraffic, onState,
  options: () => ({ transports: ["long-polling"], longPollTimeout: holdSeconds(),
    backoff: { base: 500, cap: 15000 } }) });
