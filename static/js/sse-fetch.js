/* The SSE page's second reader: @microsoft/fetch-event-source (vendored, an ES module), for
 * what EventSource cannot do: send request headers (Authorization: Bearer ...). The seed
 * notes name it as the simple way; this is the library used as its README says, beside
 * the native EventSource the page's chat uses, so the two can be compared.
 *
 * What the library does, and what this page adds:
 * - It sends Last-Event-ID by itself when it reconnects (the last `id:` it read).
 * - It retries on any error, forever, after the server's `retry:` (1 s before one came);
 *   onerror may return another delay (here: capped, jittered backoff) or throw to stop
 *   (here: on a 4xx, where asking again will not help; the server's message is kept).
 * - A stream the server ends is not reopened unless onclose throws (here it does).
 * - It dispatches an empty message for every blank line, comments included; the spec (and
 *   EventSource) dispatches nothing without data, so this page skips them.
 * - It drops comments; this page reads them from a tap on the response body (the `fetch`
 *   option), to show the server's opening comment and count the bytes.
 * - By default it closes the stream while the tab is hidden and reopens it, with
 *   Last-Event-ID, when the tab is shown again (EventSource keeps it open).
 */
import { fetchEventSource } from "../vendor/fetch-event-source/index.js";

const S = window.Switchboard;
const form = document.querySelector("[data-fetch-form]");

/** The server refused the stream with a 4xx: reconnecting will not help. */
class Refused extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The server ended the stream: thrown from onclose, so that the library reconnects. */
class StreamEnded extends Error {}

/** Calls onComment(text) for every comment line (":text") in a byte stream. */
function commentWatcher(onComment) {
  const decoder = new TextDecoder("utf-8");
  let pending = "";
  return (bytes) => {
    pending += decoder.decode(bytes, { stream: true });
    const lines = pending.split(/\r\n|\r|\n/);
    pending = lines.pop(); // a line not finished yet (a lone CR at the end splits early: harmless here)
    for (const line of lines) if (line.startsWith(":")) onComment(line.slice(1).replace(/^ /, ""));
  };
}

if (form && S) {
  const { t, tx, verbatim } = S;
  const log = document.querySelector("[data-fetch-log]");
  const tokenInput = form.querySelector("input[name=token]");
  const connectButton = form.querySelector("[data-fetch-connect]");
  const disconnectButton = form.querySelector("[data-fetch-disconnect]");
  const tokenNote = document.querySelector("[data-fetch-token-note]");
  const MAX_LINES = 200;
  let session = null; // {controller, bytes, lastId} while connected

  // Signed in with the index page's demo sign-in (this tab): start with that token.
  const kept = S.demoToken.load();
  if (kept) {
    tokenInput.value = kept.token;
    if (tokenNote) {
      tokenNote.textContent = t("Filled in with {user}'s demo token from the index page's sign-in (kept in this tab's sessionStorage: a demo shortcut; a real page keeps tokens out of scripts' reach).", { user: kept.sub });
    }
  }

  /** A token in the log: enough to recognise it, not the whole credential. */
  const abbreviated = (token) => (token.length > 24
    ? t("{start}…{end} ({n} chars)", { start: token.slice(0, 12), end: token.slice(-6), n: token.length })
    : token);

  function write(content, kind = "") {
    const line = document.createElement("div");
    if (kind) line.dataset.kind = kind;
    line.append(`${new Date().toLocaleTimeString(S.lang)}  `, content);
    log.append(line);
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  }

  function describe(message) {
    const type = message.event || "message";
    try {
      const parsed = JSON.parse(message.data);
      if (!parsed || typeof parsed !== "object" || !("data" in parsed)) throw new Error("not an event");
      const data = parsed.data;
      const text = data && typeof data === "object" && "text" in data ? String(data.text) : JSON.stringify(data);
      return tx("{type} #{id} from {sender}: {text}", {
        type: verbatim(type), id: verbatim(message.id), sender: verbatim(parsed.sender || t("server")), text: verbatim(text),
      });
    } catch (err) {
      return tx("{type} #{id}: {data}", { type: verbatim(type), id: verbatim(message.id), data: verbatim(message.data) });
    }
  }

  function setConnected(connected) {
    connectButton.disabled = connected;
    disconnectButton.disabled = !connected;
    tokenInput.readOnly = connected;
  }

  function connect(token) {
    const controller = new AbortController();
    const backoff = new S.Backoff(1000, 30000);
    const current = { controller, bytes: 0, lastId: "", openedAt: 0 };
    session = current;

    // The library's `fetch` option: log what goes out (the headers the library chose),
    // and tap the body for comments and bytes before the library reads it.
    const tappedFetch = async (input, init) => {
      const sent = new Headers(init.headers);
      const resume = sent.get("Last-Event-ID");
      const params = { url: verbatim(S.data.streamUrl), token: verbatim(abbreviated(token)) };
      write(resume
        ? tx("→ GET {url} with Authorization: Bearer {token} and Last-Event-ID: {id}", { ...params, id: verbatim(resume) })
        : tx("→ GET {url} with Authorization: Bearer {token}", params));
      const res = await fetch(input, { ...init, cache: "no-store" });
      if (!res.ok || !res.body) return res;
      const onBytes = commentWatcher((text) => write(tx("server comment: {text}", { text: verbatim(text) }), "comment"));
      const body = res.body.pipeThrough(new TransformStream({
        transform(chunk, out) {
          current.bytes += chunk.byteLength;
          onBytes(chunk);
          out.enqueue(chunk);
        },
      }));
      return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
    };

    fetchEventSource(S.data.streamUrl, {
      headers: { Authorization: `Bearer ${token}` },
      signal: controller.signal,
      fetch: tappedFetch,
      async onopen(res) {
        const type = res.headers.get("Content-Type") || "";
        if (res.status === 200 && type.startsWith("text/event-stream")) {
          write(verbatim(`← ${res.status} ${type}`));
          current.openedAt = Date.now();
          backoff.reset();
          return;
        }
        let body = {};
        try { body = await res.json(); } catch (err) { /* not a JSON error: the status says enough */ }
        if (res.status >= 400 && res.status < 500) throw new Refused(res.status, body.error, body.message || "");
        throw new S.ServerError(res.status, body.error, body.message || res.statusText);
      },
      onmessage(message) {
        if (message.data === "") return; // a blank line with no data: nothing, as in the spec
        if (message.id) current.lastId = message.id;
        write(describe(message), message.event === "gap" ? "gap" : "event");
      },
      onclose() {
        write(t("stream ended by the server"));
        throw new StreamEnded();
      },
      onerror(err) {
        if (err instanceof Refused) {
          const why = err.status === 401 || err.status === 403
            ? new S.Refusal(err.status, err.code, err.message).describe()
            : new S.ServerError(err.status, err.code, err.message).describe();
          write(tx("gave up: {why}", { why }), "error");
          throw err; // stops the library: the promise below rejects
        }
        // A stream that ends at once, again and again, must not become a hot loop.
        const quick = Date.now() - current.openedAt < 1000;
        let wait;
        if (err instanceof StreamEnded && !quick) {
          wait = undefined; // the library waits the server's retry: (2 s here)
        } else {
          if (!(err instanceof StreamEnded)) write(tx("error: {why}", { why: S.explain(err) }), "error");
          wait = backoff.next();
        }
        write(wait === undefined
          ? t("reconnecting after the server's retry: delay")
          : t("reconnecting in {s} s", { s: (wait / 1000).toFixed(1) }));
        return wait;
      },
    }).catch(() => {
      // Stopped for good (a refusal, logged above): the form can be used again.
      if (session === current) {
        session = null;
        setConnected(false);
      }
    });
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (session || !form.reportValidity()) return;
    setConnected(true);
    connect(tokenInput.value.trim());
  });

  disconnectButton.addEventListener("click", () => {
    if (!session) return;
    const { controller, bytes, lastId } = session;
    session = null;
    controller.abort();
    write(lastId
      ? tx("disconnected by you (received {bytes}; last id {id})", { bytes: S.formatBytes(bytes), id: verbatim(lastId) })
      : t("disconnected by you (received {bytes}; no id yet)", { bytes: S.formatBytes(bytes) }));
    setConnected(false);
  });

  window.addEventListener("pagehide", () => {
    if (!session) return;
    session.controller.abort();
    session = null;
    setConnected(false);
  });
}
