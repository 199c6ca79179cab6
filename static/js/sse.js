/* Server-Sent Events with the browser's EventSource.
 *
 * - Recent history first (the polling endpoint), then the stream opened with
 *   ?last_event_id=<that cursor>, so nothing published in between is lost or doubled.
 * - Events are typed: the chat is `event: message` (onmessage would do), the producer's
 *   ticks are `event: tick` and the server's loss signal is `event: gap`, both of which
 *   need addEventListener(type).
 * - "Drop connection" closes the EventSource. A closed EventSource never reconnects, so
 *   the page opens a new one with ?last_event_id=<last id> (EventSource cannot set the
 *   Last-Event-ID header itself on a first connection). When the server ends a stream,
 *   the browser reconnects by itself and sends the header; both count as reconnects. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const counters = new S.Counters();
  const chat = new S.ChatRoom(document.querySelector(".chat"), {
    onSend: (text) => S.publishHTTP(S.data.publishUrl, { text }),
  });
  const lastIdEl = document.querySelector("[data-last-id]");
  const dropButton = document.querySelector("[data-drop]");
  const tickEl = document.querySelector("[data-tick]");
  const ticksToggle = document.querySelector("[data-ticks-toggle]");
  const DROP_SECONDS = 5;
  const backoff = new S.Backoff(1000, 30000);

  let source = null;
  let lastId = "";
  let opens = 0;
  let openedAt = null; // server clock (s) when the current connection opened
  let reopenTimer = null;
  let backfill = false; // the topic was empty on entry: re-read history once the stream is open

  function withResume(url, id) {
    return id ? `${url}?last_event_id=${encodeURIComponent(id)}` : url;
  }

  function remember(id) {
    if (!id) return;
    lastId = id;
    lastIdEl.textContent = id;
  }

  function onMessage(ev) {
    const event = JSON.parse(ev.data);
    remember(ev.lastEventId);
    // Published before this connection opened: it came from history, i.e. replayed.
    const replayed = opens > 1 && openedAt !== null && event.time < openedAt;
    const delayMs = replayed ? null : S.clock.delayMs(event);
    if (chat.add(event, { replayed, delayMs })) {
      counters.add("messages");
      if (replayed) counters.add("replayed");
      if (delayMs !== null) counters.set("delay", `${delayMs} ms`);
    }
  }

  function onGap(ev) {
    counters.add("gaps");
    const info = JSON.parse(ev.data);
    chat.notice(info.slow
      ? S.t("This page fell too far behind: the server dropped the stream; reconnecting (gap).")
      : S.t("Some messages are gone from history (gap): continuing with what is kept."));
  }

  function open(resumeId) {
    const es = new EventSource(withResume(S.data.streamUrl, resumeId));
    source = es;
    es.addEventListener("open", () => {
      if (es !== source) return;
      opens += 1;
      openedAt = S.clock.now();
      if (opens > 1) counters.add("reconnects");
      backoff.reset();
      chat.presence.reload(); // the stream resumes after our cursor: it brings every change since
      if (backfill) {
        // No cursor to resume after: anything published between the history read and
        // this open would be missed, so read the newest history once more (no duplicates:
        // the chat shows each id once).
        backfill = false;
        loadHistory(false);
      }
      chat.status(lastId
        ? S.tx("Connected (stream open, resuming after {id})", { id: S.verbatim(lastId) })
        : S.t("Connected (stream open)"), "ok");
    });
    es.addEventListener("message", (ev) => { if (es === source) onMessage(ev); });
    es.addEventListener("presence", (ev) => { if (es === source) onMessage(ev); }); // joins and leaves
    es.addEventListener("gap", (ev) => { if (es === source) onGap(ev); });
    es.addEventListener("expired", (ev) => {
      // The token behind the cookie expired: the server ends the stream, and the browser
      // reconnects with whatever credentials it still has (none: its cookie expired too).
      if (es !== source) return;
      const refusal = new S.Refusal(401, "unauthorized", JSON.parse(ev.data).message);
      chat.notice(refusal.describe());
      chat.refused(refusal);
    });
    es.addEventListener("error", async () => {
      if (es !== source) return;
      if (es.readyState === EventSource.CONNECTING) {
        // The browser retries by itself after the server's `retry:` delay, sending
        // Last-Event-ID: the server replays what was missed.
        chat.status(S.tx("Stream lost; the browser reconnects by itself with Last-Event-ID: {id}",
          { id: lastId ? S.verbatim(lastId) : S.t("(none)") }), "error");
        return;
      }
      // CLOSED: the browser gave up (an HTTP error or a wrong content type). Reopen
      // ourselves, with capped, jittered backoff.
      const wait = backoff.next();
      const then = S.t("; reopening in {s} s", { s: (wait / 1000).toFixed(1) });
      chat.status(S.join(S.t("Stream failed"), then), "error");
      clearTimeout(reopenTimer);
      reopenTimer = setTimeout(() => open(lastId), wait);
      // EventSource shows no status: ask once with fetch() why (401 sign in, 403 not allowed).
      const why = await S.streamError(es.url);
      if (es !== source || !why) return;
      if (!chat.refused(why, then)) chat.status(S.join(S.tx("Stream failed ({why})", { why: S.explain(why) }), then), "error");
    });
  }

  /** The newest chat events (polling endpoint, no `since`); returns their cursor. */
  async function loadHistory(history = true) {
    try {
      const res = await fetch(S.data.eventsUrl, { cache: "no-store" });
      if (!res.ok) throw await S.responseError(res);
      const page = await res.json();
      for (const event of page.events) {
        if (chat.add(event, { history })) counters.add("messages");
      }
      return page.cursor;
    } catch (err) {
      chat.notice(S.tx("Could not load recent messages ({why}); showing new ones.", { why: S.explain(err) }));
      return "";
    }
  }

  async function start() {
    await S.clock.measure();
    const cursor = await loadHistory();
    backfill = !cursor;
    remember(cursor);
    open(cursor);
  }

  dropButton.addEventListener("click", () => {
    if (!source) return;
    source.close(); // a closed EventSource is done for good: it will not reconnect
    source = null;
    clearTimeout(reopenTimer);
    dropButton.disabled = true;
    let left = DROP_SECONDS;
    const tick = () => {
      if (left === 0) {
        dropButton.disabled = false;
        dropButton.textContent = S.t("Drop connection for {s} s", { s: DROP_SECONDS });
        chat.status(S.tx("Reopening with ?last_event_id={id}…", { id: lastId ? S.verbatim(lastId) : S.t("(none)") }));
        open(lastId);
        return;
      }
      dropButton.textContent = S.t("Reconnecting in {s} s…", { s: left });
      chat.status(lastId
        ? S.tx("Disconnected by you. Messages sent now will be replayed after {id}.", { id: S.verbatim(lastId) })
        : S.t("Disconnected by you. Messages sent now will be replayed from the start."), "error");
      left -= 1;
      reopenTimer = setTimeout(tick, 1000);
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
        tickEl.textContent = S.t("Ticks: reconnecting…");
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
    clearTimeout(reopenTimer);
    if (source) source.close();
    if (ticks) ticks.close();
  });
  window.addEventListener("pageshow", (ev) => {
    if (!ev.persisted) return; // back from the bfcache: the streams were closed on pagehide
    open(lastId);
    if (ticks) listenToTicks();
  });

  start();
  listenToTicks();
})();
