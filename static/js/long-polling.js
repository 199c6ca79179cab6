/* Long polling: ask "anything after my cursor?" and let the server hold the question until
 * there is an answer (200) or the hold time runs out (204), then ask again at once.
 *
 * The cursor is what makes it lossless: an event published while no request is parked
 * (between an answer and the next request) is returned by that next request. Errors back
 * off with capped exponential delays and jitter, never a hot retry loop. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const counters = new S.Counters();
  const chat = new S.ChatRoom(document.querySelector(".chat"), {
    onSend: (text) => S.publishHTTP(S.data.publishUrl, { text }),
  });
  const slider = document.getElementById("hold");
  const holdLabel = document.querySelector("[data-hold-label]");
  const backoff = new S.Backoff(500, 15000);
  let holdSeconds = Number(slider.value);
  let cursor = null; // null: not known yet; "": the topic had no event when the page opened
  let controller = null;
  let stopped = false;

  slider.addEventListener("input", () => {
    holdSeconds = Number(slider.value);
    holdLabel.textContent = String(holdSeconds);
  });

  async function getPage(url, holdMs = 0) {
    controller = new AbortController();
    // A connection that died without a word (a network change) would hang forever:
    // give up a while after the server's longest hold and try again.
    const watchdog = setTimeout(() => controller.abort(), holdMs + 15000);
    try {
      const res = await fetch(url, { cache: "no-store", signal: controller.signal });
      if (res.status === 204) return null;
      if (!res.ok) throw await S.responseError(res);
      const text = await res.text();
      counters.add("bytes", S.byteLength(text));
      return JSON.parse(text);
    } finally {
      clearTimeout(watchdog);
    }
  }

  function show(page, { history = false } = {}) {
    if (page.gap) chat.notice(S.t("Some messages are gone from history (gap): showing what is kept."));
    for (const event of page.events) {
      const delayMs = history ? null : S.clock.delayMs(event);
      if (chat.add(event, { history, delayMs })) {
        counters.add("messages");
        if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
      }
    }
    cursor = page.cursor;
  }

  /** Recent history on entry: the polling endpoint without `since` gives the newest events. */
  async function loadHistory() {
    show(await getPage(S.data.eventsUrl), { history: true });
    chat.presence.reload(); // the polls after this cursor bring every change since
  }

  async function longPoll() {
    const params = new URLSearchParams({ timeout: String(holdSeconds) });
    if (cursor) params.set("since", cursor);
    counters.add("requests");
    chat.status(S.t("Waiting for news (held up to {s} s)…", { s: holdSeconds }), "ok");
    const page = await getPage(`${S.data.longPollUrl}?${params}`, holdSeconds * 1000);
    if (page === null) {
      counters.add("timeouts");
      return;
    }
    counters.add("answers");
    if (!cursor) {
      // The topic was empty on entry, so there was no cursor to wait after: re-read the
      // newest history, which holds this answer and anything published just before it.
      show(await getPage(S.data.eventsUrl));
      return;
    }
    show(page);
  }

  async function run() {
    await S.clock.measure();
    while (!stopped) {
      try {
        if (cursor === null) await loadHistory();
        await longPoll();
        backoff.reset();
      } catch (err) {
        if (stopped) return;
        counters.add("errors");
        const wait = backoff.next();
        const then = S.t("; retrying in {s} s", { s: (wait / 1000).toFixed(1) });
        if (!chat.refused(err, then)) chat.status(S.join(S.tx("Request failed ({why})", { why: S.explain(err) }), then), "error");
        await S.sleep(wait);
      }
    }
  }

  window.addEventListener("pagehide", () => {
    stopped = true;
    if (controller) controller.abort();
  });
  window.addEventListener("pageshow", (ev) => {
    if (ev.persisted && stopped) { // back from the bfcache: resume with the cursor we had
      stopped = false;
      run();
    }
  });
  run();
})();
