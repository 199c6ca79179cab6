/* A polling page's chat through switchboard.js: the client, made by the page's options, follows
 * the page's topic; events go into the chat with their delay, gaps and refusals are shown,
 * presence reloads once subscribed, and the last id delivered is kept so that a page back from
 * the bfcache resumes where it was. The page keeps what differs: its transport, its counters of
 * requests, and its status lines. */
import { Switchboard as Client } from "./switchboard.js";

const S = window.Switchboard;

/** Start following; returns a handle whose ``client`` is the current client (null while closed). */
export function followChat({ topic, chat, counters, options, onTraffic, onState }) {
  const handle = { client: null };
  let cursor = null; // the last id delivered

  function onEvent(event, { history }) {
    cursor = event.id;
    const delayMs = history ? null : S.clock.delayMs(event);
    if (chat.add(event, { history, delayMs })) {
      counters.add("messages");
      if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
    }
  }

  function start() {
    const client = new Client(location.origin, options());
    handle.client = client;
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
    if (handle.client) handle.client.close();
    handle.client = null;
  });
  window.addEventListener("pageshow", (ev) => {
    if (ev.persisted && !handle.client) start(); // back from the bfcache: resume with the cursor we had
  });

  S.clock.measure().then(start);
  return handle;
}
