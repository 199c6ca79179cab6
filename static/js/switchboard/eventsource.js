/* switchboard.js, part: the SSE stream read with the platform's own EventSource.
 *
 * Used instead of fetch() when the application asks for it (option `eventSource: true`) and
 * the stream needs no Authorization header (a session cookie, or anonymous): EventSource
 * cannot send headers. What it changes:
 * - The first connection carries its resume cursor as ?last_event_id=<compound cursor>; when
 *   the stream breaks or the server ends it, the browser reconnects by itself after the
 *   server's `retry:` and sends the Last-Event-ID header, which resumes every topic. The
 *   client reports that as state "reconnecting" with `browser: true`, and "open" again after.
 * - Only the event types in `eventTypes` are heard (EventSource dispatches by type; "gap"
 *   and "expired" always are).
 * - "open" (the response's headers) proves the stream: a proxy that buffers the body is not
 *   found out, and the stream's heartbeats are not seen (no idle timeout).
 * - A stream the browser gave up on (an HTTP error) is asked once more with fetch() for its
 *   status, so the failure is a typed error with the server's code like any other. */

import { SwitchboardError, httpError, networkError } from "./errors.js";
import { byteLength, compound, eventOf } from "./util.js";

const CLOSED = 2;

/** One EventSource on `subs`; the outcomes of SseTransport._stream (see there). */
export function eventSourceStream(T, subs, gen, state, ES) {
  const c = T.client;
  const params = new URLSearchParams();
  for (const sub of subs) params.append("topic", sub.topic);
  const resume = compound(subs);
  if (resume) params.set("last_event_id", resume); // EventSource cannot send the header the first time
  const url = `${c._url("stream")}?${params}`;
  let lastEventId = resume;
  let opens = 0;
  let bytes = 0;
  let es = null;
  c._traffic({ type: "start", transport: T.name, kind: "stream", url, reader: "eventsource" });

  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (fn, value) => {
      if (settled) return;
      settled = true;
      if (es) es.close();
      T._clearTimers();
      c._traffic({ type: "end", transport: T.name, kind: "stream", url, status: opens ? 200 : 0, bytes });
      fn(value);
    };
    // Abandoned for new topics, or stopped (HttpTransport._kick aborts its controller).
    T.controller = { abort: () => finish(resolve, "again") };
    if (gen !== T.gen) {
      finish(resolve, "again");
      return;
    }
    const connectMs = c.options.connectTimeout;
    T._after(connectMs, () => {
      if (!opens) finish(reject, new SwitchboardError("timeout", `the stream did not open within ${connectMs} ms`, { transport: T.name }));
    });
    try {
      es = new ES(url, { withCredentials: Boolean(c.options.withCredentials) });
    } catch (err) {
      finish(reject, networkError(err, url, T.name));
      return;
    }

    es.addEventListener("open", () => {
      opens += 1;
      T._clearTimers();
      if (opens > 1) c._established(T); // back after the browser's own reconnect
      T._prove(subs);
      for (const sub of subs) sub._positioned = true; // a topic without a cursor is an empty one
      c._traffic({ type: "open", transport: T.name, kind: "stream", url, reader: "eventsource", reconnect: opens > 1 });
    });

    const onMessage = (ev) => {
      bytes += byteLength(ev.data);
      c._traffic({ type: "in", transport: T.name, kind: "stream", bytes: byteLength(ev.data) });
      if (ev.lastEventId) lastEventId = ev.lastEventId;
      let message;
      try {
        message = JSON.parse(ev.data);
      } catch (err) {
        c._report(new SwitchboardError("bad_reply", `not JSON in an SSE event: ${ev.data.slice(0, 80)}`, { transport: T.name }));
        return;
      }
      const sub = message && c._subs.get(message.topic);
      if (!sub || !subs.includes(sub)) return;
      if (ev.type === "gap") sub._gap(message.slow, T.name);
      else sub._deliver(eventOf(message), T.name);
    };
    for (const type of new Set([...c.options.eventTypes, "gap"])) es.addEventListener(type, onMessage);

    es.addEventListener("expired", (ev) => {
      // The token behind the cookie ran out: the server ends the stream, and the browser's
      // reconnect is refused (401) unless the cookie was renewed meanwhile.
      let message = "the token has expired";
      try {
        message = JSON.parse(ev.data).message || message;
      } catch (err) { /* the default */ }
      const err = new SwitchboardError("unauthorized", message, { status: 401, transport: T.name, fromServer: true });
      c._report(Object.assign(err, { expired: true }));
    });

    es.addEventListener("error", async () => {
      if (settled) return;
      if (es.readyState !== CLOSED) {
        // CONNECTING: the browser reconnects by itself with Last-Event-ID. Left to it when
        // that resumes every topic; a topic still without a cursor needs this client's
        // reconnect, which reads its history first (client._catchUp).
        if (opens && subs.every((sub) => sub.cursor || !sub.active)) {
          c._lost();
          c._setState("reconnecting", { browser: true, lastEventId });
          T._after(c.options.streamIdleTimeout, () => {
            if (es.readyState !== 1) finish(reject, new SwitchboardError("network", "the browser's reconnect did not get through", { transport: T.name }));
          });
          return;
        }
        finish(reject, new SwitchboardError("network", `the stream ${url} failed`, { transport: T.name }));
        return;
      }
      // CLOSED: the browser gave up (an HTTP error, a wrong content type). It shows no
      // status: ask once with fetch() why.
      es.close();
      let err;
      try {
        err = await why(c, url, T.name);
      } catch (failure) {
        finish(reject, failure);
        return;
      }
      if (settled) return;
      if (!err) {
        finish(reject, new SwitchboardError("network", `the stream ${url} failed`, { transport: T.name }));
        return;
      }
      const again = await T._refused(err, subs, state);
      finish(resolve, again ? "again" : "ended");
    });
  });
}

/** The error of a stream request that failed, asked with fetch(); null when it now succeeds. */
async function why(c, url, transport) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), c.options.connectTimeout);
  try {
    const res = await c._fetch(url, { headers: { Accept: "text/event-stream" }, signal: controller.signal, cache: "no-store" });
    if (res.ok) return null;
    const body = await res.text().catch(() => "");
    return httpError({ status: res.status, headers: res.headers, body }, transport);
  } catch (err) {
    throw networkError(err, url, transport);
  } finally {
    clearTimeout(timer);
    controller.abort(); // an open stream is not wanted: this was only a question
  }
}
