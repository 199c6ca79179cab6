/* Interval polling: ask "anything after my cursor?" every N ms, with If-None-Match so an
 * empty answer is a body-less 304. The cursor makes sure nothing published between two
 * polls is lost or shown twice. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const eventsUrl = S.data.eventsUrl;
  const counters = new S.Counters();
  const chat = new S.ChatRoom(document.querySelector(".chat"), {
    onSend: (text) => S.publishHTTP(S.data.publishUrl, { text }),
  });
  const slider = document.getElementById("interval");
  const label = document.querySelector("[data-interval-label]");
  const backoff = new S.Backoff(1000, 30000);
  let intervalMs = Number(slider.value);
  let cursor = null;
  let timer = null;

  slider.addEventListener("input", () => {
    intervalMs = Number(slider.value);
    label.textContent = String(intervalMs);
  });

  async function poll() {
    const url = cursor === null ? eventsUrl : `${eventsUrl}?since=${encodeURIComponent(cursor)}`;
    const headers = cursor ? { "If-None-Match": `"${cursor}"` } : {};
    counters.add("requests");
    let wait = intervalMs;
    try {
      const res = await fetch(url, { headers, cache: "no-store" });
      if (res.status === 304) {
        counters.add("empty");
      } else if (res.ok) {
        const text = await res.text();
        counters.add("bytes", S.byteLength(text));
        const page = JSON.parse(text);
        const first = cursor === null;
        if (page.gap) chat.notice(S.t("Some messages are gone from history (gap): showing what is kept."));
        for (const event of page.events) {
          const delayMs = first ? null : S.clock.delayMs(event);
          if (chat.add(event, { history: first, delayMs })) {
            counters.add("messages");
            if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
          }
        }
        cursor = page.cursor;
        if (first) chat.presence.reload(); // present from this poll on; later polls bring the changes
      } else {
        throw await S.responseError(res);
      }
      backoff.reset();
      chat.status(S.t("Polling every {ms} ms", { ms: intervalMs }));
    } catch (err) {
      counters.add("errors");
      wait = backoff.next();
      const then = S.t("; retrying in {s} s", { s: Math.round(wait / 1000) });
      if (!chat.refused(err, then)) chat.status(S.join(S.tx("Request failed ({why})", { why: S.explain(err) }), then), "error");
    }
    timer = setTimeout(poll, wait);
  }

  S.clock.measure().then(poll);
  window.addEventListener("pagehide", () => clearTimeout(timer));
})();
