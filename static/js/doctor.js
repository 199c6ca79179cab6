/* The proxy doctor in the browser: each check measures something through whatever sits
 * between this page and the server (EventSource, fetch, WebSocket, Resource Timing), then
 * judges it: ok, problem or unknown ("could not tell"), with the nginx line that fixes it.
 * The judgements and their words follow app/doctor/judges.py, the command-line doctor's
 * (which stays English: it is a CI tool); here the words come from the page's catalog
 * (t/tx, msgids in app/js_messages.py), and what the server or the wire said (a protocol,
 * an address, a reply) goes in as it came (verbatim). The checks only a browser can make
 * (its HTTP version and connection limit) are here alone. Every wait is bounded; text goes
 * into the page as text nodes only. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const { t, tn, tx, verbatim } = S;
  const data = S.data;
  const OK = "ok", PROBLEM = "problem", UNKNOWN = "unknown";
  const FORGED_ADDRESS = "203.0.113.7"; // RFC 5737 TEST-NET-3: no real client has it
  const STOMP_PROTOCOLS = ["v12.stomp", "v11.stomp", "v10.stomp"];
  const EVENTS = 6, INTERVAL = 0.5; // the timed stream: 6 events, 500 ms apart
  const CLUMP_SHARE = 0.5; // a clump: arrivals spread over less than half the sending time
  const CLOCK_TOLERANCE = 1.0;
  const PARALLEL = 8, HOLD = 1.5; // the connection-limit check: 8 requests held 1.5 s at once
  const GRACE = 10; // seconds allowed beyond each wait, and for a quick answer

  // Each fix: the configuration line (shown as code, never translated) and a note on where
  // it goes (in the page's language). No line at all for the clock: nothing in nginx fixes it.
  const FIX = {
    upgrade: { line: "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; " +
      "proxy_set_header Connection $connection_upgrade;", note: t("(in the /ws and /stomp location)") },
    buffering: { line: "proxy_buffering off; gzip off;",
      note: t("(in the SSE location; do not ignore X-Accel-Buffering)") },
    upstream: { line: 'proxy_http_version 1.1; proxy_set_header Connection "";',
      note: t("(and keepalive 32; in the upstream block)") },
    forwarded: { line: "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; " +
      "proxy_set_header X-Forwarded-Proto $scheme;", note: "" },
    host: { line: "proxy_set_header Host $http_host; proxy_set_header X-Forwarded-Host $http_host;", note: "" },
    trust: { line: "SWITCHBOARD_BEHIND_PROXY=1", note: t("on the app (the proxy's lines are right)") },
    forged: { line: "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
      note: t("(or unset SWITCHBOARD_BEHIND_PROXY when nothing is in front)") },
    clock: { line: "", note: t("no nginx line: keep both clocks in sync with NTP (chrony, systemd-timesyncd)") },
    http2: { line: "listen 443 ssl; http2 on;", note: t("(HTTP/2 carries every stream over one connection)") },
    readTimeout: (seconds, note) => ({ line: `proxy_read_timeout ${Math.max(60, Math.ceil(2 * seconds))}s;`, note }),
  };

  const form = document.querySelector("[data-doctor-form]");
  const runButton = form.querySelector("[data-run]");
  const summary = document.querySelector("[data-summary]");
  const rows = new Map([...document.querySelectorAll("[data-check]")].map((li) => [li.dataset.check, li]));
  const verdictLabel = { pending: t("not run"), running: t("running…"), ok: t("ok"), problem: t("problem"),
    unknown: t("could not tell") };

  /** Show a check's verdict; the explanation is a string or a fragment from tx(). */
  function show(name, verdict, explanation = "", fix = null) {
    const row = rows.get(name);
    row.dataset.verdict = verdict;
    row.querySelector("[data-verdict-label]").textContent = verdictLabel[verdict] || verdict;
    row.querySelector("[data-explain]").replaceChildren(explanation);
    const line = row.querySelector("[data-fix]");
    line.textContent = fix ? fix.line : "";
    line.hidden = !line.textContent;
    row.querySelector("[data-fix-note]").textContent = fix ? fix.note : "";
    row.querySelector("[data-fix-label]").textContent = verdict === OK ? t("The line that keeps it so:") : t("Fix:");
    row.querySelector("[data-fix-line]").hidden = !fix;
  }

  /** A command or a name in a message, as code (never translated). */
  function code(text) {
    const el = document.createElement("code");
    el.textContent = text;
    return el;
  }

  function ms(seconds) { return `${Math.round(seconds * 1000)} ms`; }
  function secs(seconds) { return t("{s} s", { s: seconds.toFixed(1) }); }
  function url(base, params) { return `${base}?${new URLSearchParams(params)}`; }
  // Flask builds WebSocket rules' URLs absolute (ws://host/stomp): keep the path, use this page's host.
  function wsUrl(path) {
    const { pathname } = new URL(path, location.href);
    return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${pathname}`;
  }
  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  // ------------------------------------------------------------------------------ echo

  /** GET the echo; the answer, its timing (wall clock, seconds) and the Server header. */
  async function echo(headers = {}) {
    const sent = Date.now() / 1000;
    const res = await fetch(data.echoUrl, { cache: "no-store", headers });
    if (!res.ok) throw new Error(t("{url} answered {status}", { url: data.echoUrl, status: res.status }));
    const body = await res.json();
    return { body, sent, received: Date.now() / 1000, server: res.headers.get("server") };
  }

  function judgeUpstream(plain, again) {
    const { protocol, connection } = plain.body.upstream;
    const said = () => (connection
      ? tx("{protocol} with Connection: {connection}", { protocol: verbatim(protocol), connection: verbatim(connection) })
      : verbatim(protocol));
    const closes = connection && connection.split(",").some((t) => t.trim().toLowerCase() === "close");
    if (protocol === "HTTP/1.0" || closes) {
      return [PROBLEM, tx("the app was spoken to in {said}: every request opens and closes an upstream connection, and keep-alive and chunked streaming are lost (the study notes' HTTP/1.0 pitfall)", { said: said() }),
      FIX.upstream];
    }
    if (protocol !== "HTTP/1.1") {
      return [UNKNOWN, tx("the app's server read the request as {protocol}", { protocol: verbatim(protocol) }),
        FIX.upstream];
    }
    const ports = [plain.body.upstream.peer_port, again.body.upstream.peer_port];
    const reuse = ports.includes(null) ? t("reuse could not be seen")
      : ports[0] === ports[1] ? t("the upstream connection was reused")
        : t("the upstream connection was not reused (keepalive 32; in the upstream block reuses it)");
    return [OK, tx("the app was spoken to in {said}, keep-alive; {reuse}", { said: said(), reuse }), FIX.upstream];
  }

  function judgeForwarded(plain, forged) {
    const forwarded = plain.body.forwarded, seen = plain.body.seen;
    const arrived = [["X-Forwarded-For", "for"], ["-Proto", "proto"], ["-Host", "host"]]
      .filter(([, key]) => forwarded[key]).map(([label]) => label);
    const headers = () => verbatim(arrived.join(", "));
    const client = () => verbatim(seen.client);
    const scheme = location.protocol.replace(":", "");
    if (forwarded.trusted && forged.body.seen.client === FORGED_ADDRESS) {
      const how = arrived.length ? t("the proxy passes the client's own header on instead of adding its hop")
        : t("nothing in front adds its own hop");
      return [PROBLEM, tx("the app trusts X-Forwarded-For, and a forged {address} became the client address: {how}; anyone can dodge the per-client limits", { address: FORGED_ADDRESS, how }), FIX.forged];
    }
    const proxied = Boolean(plain.server) && !plain.server.toLowerCase().startsWith("gunicorn");
    if (!arrived.length) {
      if (proxied) {
        return [PROBLEM, tx("a proxy answers (Server: {server}) but no X-Forwarded-* reach the app: it sees every client as {client}", { server: verbatim(plain.server), client: client() }), FIX.forwarded];
      }
      if (forwarded.trusted) return [UNKNOWN, t("the app trusts X-Forwarded-* but none arrived"), FIX.forwarded];
      return [OK, tx("no X-Forwarded-* arrived and none are trusted: a direct connection; the app sees you as {client}", { client: client() }), FIX.forwarded];
    }
    if (!forwarded.trusted) {
      return [PROBLEM, tx("{headers} reach the app but are not trusted: it counts every client as {client} (the proxy) in its limits", { headers: headers(), client: client() }), FIX.trust];
    }
    if (seen.scheme !== scheme) {
      return [PROBLEM, tx("the app sees {seen} where you used {used}: X-Forwarded-Proto is {proto}",
        { seen: verbatim(seen.scheme), used: verbatim(scheme),
          proto: forwarded.proto ? verbatim(forwarded.proto) : t("missing") }), FIX.forwarded];
    }
    if (String(seen.host).toLowerCase() !== location.host.toLowerCase()) {
      return [PROBLEM, tx("the app answers for host {seen} where you used {used}: its WebSocket Origin check compares against it", { seen: verbatim(seen.host), used: verbatim(location.host) }), FIX.host];
    }
    return [OK, tx("{headers} reach the app and are trusted: it sees you as {client} over {scheme}; a forged X-Forwarded-For is ignored", { headers: headers(), client: client(), scheme: verbatim(scheme) }),
    FIX.forwarded];
  }

  function judgeClock(samples) {
    const best = samples.reduce((a, b) => (b.received - b.sent < a.received - a.sent ? b : a));
    const rtt = best.received - best.sent;
    const offset = best.body.time - (best.sent + best.received) / 2;
    const signed = Math.round(offset * 1000);
    const said = t("the server's clock is {offset} ms from this browser's (±{rtt} ms)",
      { offset: `${signed >= 0 ? "+" : ""}${signed}`, rtt: Math.round(rtt * 500) });
    if (Math.abs(offset) <= CLOCK_TOLERANCE + rtt / 2) {
      return [OK, t("{said}; the pages take it out of their latency figures", { said }), FIX.clock];
    }
    return [PROBLEM, t("{said}: every latency figure measured against it is off by that much", { said }), FIX.clock];
  }

  // ------------------------------------------------------------------------- WebSocket

  /** Open a WebSocket, send one message once open, wait for one reply; never longer than GRACE s. */
  function exchange(path, protocols, message) {
    return new Promise((resolve) => {
      const started = performance.now();
      const ws = new WebSocket(wsUrl(path), protocols);
      const outcome = { opened: false, protocol: "", reply: null, code: null, rtt: null };
      const finish = (extra) => {
        clearTimeout(timer);
        Object.assign(outcome, extra);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (ws.readyState <= WebSocket.OPEN) ws.close();
        resolve(outcome);
      };
      const timer = setTimeout(() => finish({ code: "timeout" }), GRACE * 1000);
      ws.onopen = () => {
        outcome.opened = true;
        outcome.protocol = ws.protocol;
        ws.send(message);
      };
      ws.onmessage = (ev) => finish({ reply: String(ev.data), rtt: (performance.now() - started) / 1000 });
      ws.onclose = (ev) => finish({ code: ev.code });
    });
  }

  function notOpened(path, outcome) {
    const how = outcome.code === "timeout" ? t("no answer within {s} s", { s: GRACE })
      : t("closed (code {code})", { code: outcome.code });
    return [PROBLEM, tx("{path}: the socket {how} before it opened, so no 101 came back: the proxy drops the Upgrade and Connection headers (the browser does not show the status; {command} does)",
    { path, how, command: code("python -m app.doctor") }), FIX.upgrade];
  }

  async function checkWebSocket() {
    const outcome = await exchange(data.wsPath, [], JSON.stringify({ op: "ping", ref: "doctor" }));
    if (!outcome.opened) return notOpened("/ws", outcome);
    if (outcome.reply === null) {
      return [PROBLEM, t("/ws answered 101 but the socket then closed (code {code}): frames do not pass",
        { code: outcome.code }), FIX.upgrade];
    }
    let op = null;
    try { op = JSON.parse(outcome.reply).op; } catch (err) { /* not JSON: said below */ }
    if (op !== "ok") {
      return [UNKNOWN, tx("/ws answered 101, but the ping got {reply}", { reply: verbatim(outcome.reply.slice(0, 80)) }),
        FIX.upgrade];
    }
    return [OK, t("101 Switching Protocols, and a ping op went both ways in {time}", { time: ms(outcome.rtt) }),
      FIX.upgrade];
  }

  async function checkStomp() {
    const connect = `CONNECT\naccept-version:1.0,1.1,1.2\nhost:${location.hostname}\nheart-beat:0,0\n\n\0`;
    const outcome = await exchange(data.stompPath, STOMP_PROTOCOLS, connect);
    if (!outcome.opened) return notOpened("/stomp", outcome);
    const protocol = () => verbatim(outcome.protocol);
    if (!STOMP_PROTOCOLS.includes(outcome.protocol)) {
      return [PROBLEM, tx("/stomp opened without a STOMP sub-protocol (got \"{protocol}\")", { protocol: protocol() }),
        FIX.upgrade];
    }
    if (outcome.reply === null) {
      return [PROBLEM, tx("/stomp answered 101 ({protocol}) but the socket then closed", { protocol: protocol() }),
        FIX.upgrade];
    }
    const command = outcome.reply.split("\n", 1)[0];
    if (command !== "CONNECTED" && command !== "ERROR") {
      return [UNKNOWN, tx("/stomp answered 101 ({protocol}), but CONNECT got {reply}",
        { protocol: protocol(), reply: verbatim(outcome.reply.slice(0, 60)) }), FIX.upgrade];
    }
    return [OK, tx("101 with sub-protocol {protocol} echoed, and CONNECT was answered {command}",
      { protocol: protocol(), command: verbatim(command) }), FIX.upgrade];
  }

  // ------------------------------------------------------------------------------- SSE

  /** Read an EventSource until an event of type ``until``, an error, or ``within`` s.
   *  Times are seconds from the start; ``ended`` is complete, cut, error or timeout. */
  function readStream(streamUrl, type, until, within) {
    return new Promise((resolve) => {
      const start = performance.now();
      const since = () => (performance.now() - start) / 1000;
      const es = new EventSource(streamUrl);
      const result = { openedAt: null, arrivals: [], ended: "timeout", endedAt: null };
      const finish = (ended) => {
        clearTimeout(timer);
        es.close();
        result.ended = ended;
        result.endedAt = since();
        resolve(result);
      };
      const timer = setTimeout(() => finish("timeout"), within * 1000);
      es.onopen = () => { result.openedAt = since(); };
      es.addEventListener(type, () => result.arrivals.push(since()));
      es.addEventListener(until, () => finish("complete"));
      // The first error ends the reading: an EventSource would reconnect on its own.
      es.onerror = () => finish(result.openedAt === null ? "error" : "cut");
    });
  }

  async function checkBuffering() {
    const reading = await readStream(url(data.timedUrl, { count: EVENTS, interval: INTERVAL }), "tick", "done",
      EVENTS * INTERVAL + GRACE);
    const sentOver = (EVENTS - 1) * INTERVAL;
    const arrivals = reading.arrivals;
    if (reading.ended === "error") return [UNKNOWN, t("the timed stream could not be opened"), FIX.buffering];
    if (!arrivals.length) {
      if (reading.ended === "timeout") {
        return [PROBLEM, t("none of {n} events sent {interval} apart arrived before the wait ran out: the proxy holds the stream back", { n: EVENTS, interval: ms(INTERVAL) }), FIX.buffering];
      }
      return [UNKNOWN, reading.ended === "cut" ? t("the stream was cut before any event arrived")
        : t("the stream ended before any event arrived"), FIX.buffering];
    }
    if (arrivals.length < EVENTS && reading.ended !== "complete") {
      const params = { n: arrivals.length, total: EVENTS };
      return [PROBLEM, reading.ended === "cut" ? t("the stream was cut after {n} of {total} events", params)
        : t("the wait ran out after {n} of {total} events", params), FIX.buffering];
    }
    const spread = arrivals[arrivals.length - 1] - arrivals[0];
    if (spread >= CLUMP_SHARE * sentOver) {
      const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]);
      return [OK, t("{n} events sent {interval} apart arrived a median {gap} apart, the first after {first} s: each event is passed on at once",
      { n: arrivals.length, interval: ms(INTERVAL), gap: ms(median(gaps)), first: arrivals[0].toFixed(2) }),
      FIX.buffering];
    }
    return [PROBLEM, t("{n} events sent {interval} apart over {over} arrived in one clump after {after}: the proxy buffers the stream",
    { n: arrivals.length, interval: ms(INTERVAL), over: secs(sentOver), after: secs(arrivals[arrivals.length - 1]) }),
    FIX.buffering];
  }

  async function checkIdle(seconds, heartbeat) {
    const fix = FIX.readTimeout(heartbeat, t("(in the SSE location, above {setting} ({s} s))",
      { setting: "SWITCHBOARD_SSE_HEARTBEAT", s: heartbeat }));
    const reading = await readStream(url(data.idleUrl, { seconds }), "still-here", "still-here", seconds + GRACE);
    if (reading.ended === "error") return [UNKNOWN, t("the idle stream could not be opened"), fix];
    if (reading.ended === "complete") {
      if (seconds > heartbeat) {
        return [OK, t("a silent stream survived {s} s, longer than the server's heartbeat ({heartbeat} s): quiet streams stay open", { s: seconds, heartbeat }), fix];
      }
      return [UNKNOWN, t("a silent stream survived {s} s, but heartbeats come every {heartbeat} s: wait longer than that to know", { s: seconds, heartbeat }), fix];
    }
    if (reading.ended === "timeout") {
      return [UNKNOWN, t("nothing came and nothing ended within {s} s and the grace time", { s: seconds }), fix];
    }
    const cutAfter = reading.endedAt - reading.openedAt;
    if (cutAfter < heartbeat) {
      return [PROBLEM, t("a silent stream was cut after {after}; heartbeats come every {heartbeat} s, so every quiet stream is cut and reconnects", { after: secs(cutAfter), heartbeat }), fix];
    }
    return [OK, t("a silent stream was cut after {after}, later than the heartbeat ({heartbeat} s) that keeps real streams talking", { after: secs(cutAfter), heartbeat }), fix];
  }

  // ------------------------------------------------------------------- held requests

  async function hold(seconds, n = 0) {
    const started = performance.now();
    try {
      const res = await fetch(url(data.slowPollUrl, { seconds, n }), { cache: "no-store" });
      return { status: res.status, body: res.ok ? await res.json() : null,
        elapsed: (performance.now() - started) / 1000 };
    } catch (err) {
      return { status: null, body: null, elapsed: (performance.now() - started) / 1000 };
    }
  }

  async function checkLongPoll(seconds, longpoll) {
    const fix = FIX.readTimeout(longpoll, t("(in the long-poll location, above {setting} ({s} s))",
      { setting: "SWITCHBOARD_LONGPOLL_TIMEOUT", s: longpoll }));
    const { status, elapsed } = await hold(seconds);
    if (status === 200) {
      if (seconds > longpoll) {
        return [OK, t("a response held silent for {s} s came back, longer than a long poll is parked ({longpoll} s)", { s: seconds, longpoll }), fix];
      }
      return [UNKNOWN, t("a response held {s} s came back, but long polls are parked up to {longpoll} s: wait longer than that to know", { s: seconds, longpoll }), fix];
    }
    if (status === 429 || status === 503) {
      return [UNKNOWN, t("the server refused the slow poll ({status}); try again later", { status }), fix];
    }
    if (status === null || status === 502 || status === 504) {
      const what = status ? t("answered {status}", { status }) : t("closed the connection");
      if (elapsed < longpoll) {
        return [PROBLEM, t("the proxy {what} after {after} of silence; a long poll is parked up to {longpoll} s, so idle polls fail instead of answering 204", { what, after: secs(elapsed), longpoll }), fix];
      }
      return [OK, t("the proxy {what} after {after}, later than a long poll is parked ({longpoll} s)",
        { what, after: secs(elapsed), longpoll }), fix];
    }
    return [UNKNOWN, t("the slow poll answered {status} after {after}", { status, after: secs(elapsed) }), fix];
  }

  /** The protocol the browser used for this page's requests to the server, from Resource Timing. */
  function nextHopProtocol() {
    const entries = performance.getEntriesByType("resource").filter((e) => e.name.includes(data.echoUrl));
    const last = entries[entries.length - 1];
    return last ? last.nextHopProtocol : "";
  }

  async function checkHttpVersion() {
    const protocol = nextHopProtocol();
    const held = await Promise.all(Array.from({ length: PARALLEL }, (_, i) => hold(HOLD, i)));
    const failed = held.filter((h) => h.status !== 200).length;
    if (failed) {
      return [UNKNOWN, t("{failed} of {total} held requests failed (a limit, or the proxy); try again later",
        { failed, total: PARALLEL }), FIX.http2];
    }
    // When did the server receive each one? Those that waited for a free connection came a hold later.
    const received = held.map((h) => h.body.received).sort((a, b) => a - b);
    const atOnce = received.filter((t) => t - received[0] < HOLD / 2).length;
    const name = { "http/1.1": "HTTP/1.1", h2: "HTTP/2", h3: "HTTP/3" }[protocol] || protocol || t("an unknown version");
    const measured = atOnce < PARALLEL
      ? t("{n} of {total} requests went at once, the others waited for a free connection", { n: atOnce, total: PARALLEL })
      : t("all {total} requests went at once", { total: PARALLEL });
    if (protocol === "http/1.1") {
      if (atOnce === 6) {
        return [OK, t("this browser uses HTTP/1.1: {measured}, so at most 6 streams per host across all tabs (SSE, long polls); HTTP/2 lifts that", { measured }), FIX.http2];
      }
      if (atOnce < 6) {
        return [UNKNOWN, t("HTTP/1.1, but only {n} requests went at once: other tabs or requests hold the rest of this browser's 6 connections to this host", { n: atOnce }), FIX.http2];
      }
      return [UNKNOWN, t("HTTP/1.1, yet {measured}: this browser allows more than 6 per host", { measured }), FIX.http2];
    }
    if (protocol === "h2" || protocol === "h3") {
      if (atOnce === PARALLEL) {
        return [OK, t("this browser uses {name}: {measured} over one connection; no per-host limit of 6",
          { name, measured }), FIX.http2];
      }
      return [UNKNOWN, t("{name}, but {measured}: the server limits concurrent streams", { name, measured }), FIX.http2];
    }
    return [UNKNOWN, t("the browser did not say which HTTP version it used ({name}); {measured}", { name, measured }),
      FIX.http2];
  }

  // ------------------------------------------------------------------------------- run

  async function step(name, work) {
    show(name, "running");
    try {
      const [verdict, explanation, fix] = await work();
      show(name, verdict, explanation, fix);
    } catch (err) {
      show(name, UNKNOWN, tx("the check failed: {why}", { why: verbatim(err.message) }));
    }
  }

  function bounded(input) {
    const value = Number(input.value);
    const max = Number(data.maxWait);
    return Number.isFinite(value) ? Math.min(Math.max(value, 1), max) : Math.min(15, max);
  }

  async function run() {
    runButton.disabled = true;
    summary.dataset.state = "running";
    summary.dataset.kind = "info";
    summary.textContent = t("Running…");
    for (const name of rows.keys()) show(name, "pending");
    const idleSeconds = bounded(form.querySelector("[data-idle-seconds]"));
    const pollSeconds = bounded(form.querySelector("[data-poll-seconds]"));
    try {
      // Three echoes: as the browser sends it, with a forged X-Forwarded-For, and again.
      let echoes = null;
      await step("upstream", async () => {
        const plain = await echo();
        const forged = await echo({ "X-Forwarded-For": FORGED_ADDRESS });
        const again = await echo();
        echoes = { plain, forged, again };
        return judgeUpstream(plain, again);
      });
      if (!echoes) throw new Error(t("the echo endpoint did not answer; nothing else can be checked"));
      const server = echoes.plain.body.server;
      await step("forwarded", async () => judgeForwarded(echoes.plain, echoes.forged));
      await step("clock", async () => judgeClock([echoes.plain, echoes.forged, echoes.again]));
      await Promise.all([step("websocket", checkWebSocket), step("stomp", checkStomp)]);
      await step("buffering", checkBuffering);
      await step("http-version", checkHttpVersion); // alone: it counts connections
      await Promise.all([step("idle-cut", () => checkIdle(idleSeconds, server.sse_heartbeat)),
        step("long-poll", () => checkLongPoll(pollSeconds, server.longpoll_timeout))]);
      const counts = { ok: 0, problem: 0, unknown: 0 };
      for (const row of rows.values()) counts[row.dataset.verdict] += 1;
      summary.textContent = tn("Done: {ok} ok, {n} problem, {unknown} could not tell.",
        "Done: {ok} ok, {n} problems, {unknown} could not tell.", counts.problem,
        { ok: counts.ok, unknown: counts.unknown });
      summary.dataset.kind = counts.problem ? "error" : "ok";
    } catch (err) {
      summary.textContent = t("Stopped: {why}", { why: err.message });
      summary.dataset.kind = "error";
    } finally {
      summary.dataset.state = "done";
      runButton.disabled = false;
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    run();
  });
})();
