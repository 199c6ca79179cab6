"""Every message the pages' JavaScript shows, as gettext msgids: the one list.

``make translations`` extracts these (``N_`` and ``NP_`` mark them) into the same catalog
as the templates; ``app.i18n.js_catalog`` hands each page their translations, and
``static/js/common.js`` looks them up with ``t(msgid, params)``, ``tn(singular, plural, n)``
and ``tx(...)``. Placeholders are ``{name}``, filled in by the JavaScript. A test checks
that every literal msgid the JavaScript uses is listed here.
"""

from __future__ import annotations


def N_(message: str) -> str:
    """Mark a JavaScript message for extraction; it is translated per request, not here."""
    return message


def NP_(singular: str, plural: str) -> tuple[str, str]:
    """Mark a JavaScript message with a count (its singular and plural) for extraction."""
    return singular, plural


JS_MESSAGES: tuple[str | tuple[str, str], ...] = (
    # static/js/common.js
    N_("bad request"),
    N_("the body is not valid JSON"),
    N_("the body is not what the server expects"),
    N_("not a valid topic name"),
    N_("not a valid cursor"),
    N_("not a valid event type"),
    N_("not a valid limit"),
    N_("not a valid timeout"),
    N_("not a valid message"),
    N_("not a valid ref"),
    N_("unknown operation"),
    N_("unknown demo user"),
    N_("not found"),
    N_("method not allowed"),
    N_("too large"),
    N_("not JSON"),
    N_("too many requests"),
    N_("rate limited: too many messages"),
    N_("too many connections to the server"),
    N_("too many connections from this client"),
    N_("too many subscriptions"),
    N_("already subscribed"),
    N_("not subscribed"),
    N_("fell too far behind"),
    N_("subscription closed"),
    N_("service unavailable"),
    N_("the event store is unavailable"),
    N_("the server is shutting down"),
    N_("a WebSocket upgrade is required"),
    N_("this origin is not allowed"),
    N_("not signed in"),
    N_("not allowed"),
    N_("a request from another site"),
    N_("a token in the URL is refused"),
    N_("access control is unavailable"),
    N_("server error"),
    N_("{code}: {message}"),
    N_("HTTP {status}: {message}"),
    N_("HTTP {status}"),
    N_("HTTP {status} ({code}): {message}"),
    N_("HTTP {status} ({code})"),
    N_("sign in"),
    N_("Refused with {status} ({reason}): {message}"),
    N_("network error ({message})"),
    N_("Not sent: {why}"),
    N_("Send failed: {why}"),
    N_("server"),
    N_("replayed"),
    N_("history"),
    N_("History could not be loaded ({why}); showing new messages only."),
    N_("(you)"),
    N_("Who is here could not be loaded ({why})"),
    # static/js/polling.js
    N_("Some messages are gone from history (gap): showing what is kept."),
    N_("Polling every {ms} ms"),
    N_("; retrying in {s} s"),
    N_("Request failed ({why})"),
    # static/js/long-polling.js
    N_("Waiting for news (held up to {s} s)…"),
    # static/js/sse.js
    N_("This page fell too far behind: the server dropped the stream; reconnecting (gap)."),
    N_("Some messages are gone from history (gap): continuing with what is kept."),
    N_("Connected (stream open, resuming after {id})"),
    N_("Connected (stream open)"),
    N_("Stream lost; the browser reconnects by itself with Last-Event-ID: {id}"),
    N_("(none)"),
    N_("; reopening in {s} s"),
    N_("Stream failed"),
    N_("Stream failed ({why})"),
    N_("Could not load recent messages ({why}); showing new ones."),
    N_("Drop connection for {s} s"),
    N_("Reopening with ?last_event_id={id}…"),
    N_("Reconnecting in {s} s…"),
    N_("Disconnected by you. Messages sent now will be replayed after {id}."),
    N_("Disconnected by you. Messages sent now will be replayed from the start."),
    N_("tick {n} · id {id} · worker {worker} · {ms} ms after publish"),
    N_("Ticks: reconnecting…"),
    N_("Ticks: {why}"),
    N_("the stream failed"),
    N_("Stop listening to ticks"),
    N_("Not listening: the server stops ticking once nobody listens."),
    N_("Listen to ticks"),
    # static/js/sse-fetch.js
    N_(
        "Filled in with {user}'s demo token from the index page's sign-in (kept in this tab's sessionStorage: a demo shortcut; a real page keeps tokens out of scripts' reach)."
    ),
    N_("{start}…{end} ({n} chars)"),
    N_("{type} #{id} from {sender}: {text}"),
    N_("{type} #{id}: {data}"),
    N_("→ GET {url} with Authorization: Bearer {token} and Last-Event-ID: {id}"),
    N_("→ GET {url} with Authorization: Bearer {token}"),
    N_("server comment: {text}"),
    N_("stream ended by the server"),
    N_("gave up: {why}"),
    N_("error: {why}"),
    N_("reconnecting after the server's retry: delay"),
    N_("reconnecting in {s} s"),
    N_("disconnected by you (received {bytes}; last id {id})"),
    N_("disconnected by you (received {bytes}; no id yet)"),
    # static/js/websocket.js
    N_("not connected; the page is reconnecting"),
    N_("open, subscribed"),
    N_("Connected: subscribed to {topic} over one WebSocket"),
    N_("This page fell too far behind; subscribing again from the last message seen."),
    N_("Server error: {why}"),
    N_("connecting"),
    N_("open, subscribing"),
    N_("Server going away (1001)"),
    N_("Disconnected ({code} {reason})"),
    N_("Disconnected ({code})"),
    N_("closed"),
    N_("; reconnecting in {s} s"),
    N_("Dropped on purpose, offline"),
    # static/js/stomp.js
    N_("… ({n} characters)"),
    N_("(EOL) heart-beat"),
    N_("stompjs: opening the WebSocket…"),
    N_("stompjs: WebSocket open"),
    N_("stompjs: connection to {url} closed"),
    N_("stompjs: reconnecting in {ms} ms"),
    N_("({n} bytes of {type})"),
    N_("({n} bytes of binary data)"),
    N_("connected, STOMP {version}"),
    N_("Connected: subscribed to {destination} (resuming)"),
    N_("Connected: subscribed to {destination}"),
    N_("ERROR from the server: {message}"),
    N_("; the server closes the connection"),
    N_("ERROR from the server: {message}; it closes the connection"),
    N_("; reconnecting"),
    N_("no RECEIPT within {s} s"),
    N_("Dropped on purpose: offline for {s} s, then resuming"),
    N_("Heart-beats every {s} s from the next connection on."),
    N_("No heart-beats from the next connection on."),
    # static/js/chart.js
    N_("Latency of each delivered event, per transport, over the last {s} seconds (log scale)"),
    N_("Chart legend"),
    N_("now"),
    # static/js/compare.js
    N_("Dropped: offline"),
    N_("Reconnecting…"),
    N_("(measured)"),
    N_("(counted)"),
    N_("Offline: {total} events are being published without this pane…"),
    N_("Recovering: {back} of {total} missed events back…"),
    NP_("Recovered {n} missed event with {how}.", "Recovered {n} missed events with {how}."),
    NP_("Recovered {n} missed event.", "Recovered {n} missed events."),
    NP_(
        "Recovered {n} missed event by re-reading the newest events (no cursor).",
        "Recovered {n} missed events by re-reading the newest events (no cursor).",
    ),
    N_("Gap: {missed} of {total} events were no longer in the server's history."),
    N_("Missed {missed} of {total} events: they never came back."),
    N_(
        "Missed {missed} of {total} events: it reconnected without its last event id, so the server had nothing to replay."
    ),
    N_("Interval polling"),
    N_("Poll failed ({why})"),
    N_("Long polling"),
    N_("Waiting for the next event (parked)"),
    N_("Answered; asking again at once"),
    N_("Long poll failed ({why})"),
    N_("Server-Sent Events"),
    N_("Stream open"),
    N_("Stream refused"),
    N_("Stream broke; the browser reconnects with Last-Event-ID"),
    N_("WebSocket"),
    N_("Subscribed"),
    N_("Socket closed"),
    N_("STOMP"),
    N_("The STOMP client library (static/vendor/stompjs) did not load"),
    N_("Subscribed to {destination}"),
    N_("STOMP ERROR: {message}"),
    N_("Publish failed: {why}"),
    N_("hello"),
    N_("Published event {id}"),
    N_("{text} (burst {i}/{n})"),
    N_("Sending a burst of {n}…"),
    N_("Burst done: {ok} of {n} published"),
    N_("Stop"),
    N_("Publishing {rate} events per second"),
    N_("Start"),
    N_("Steady rate stopped"),
    N_("All panes dropped; publishing {n} events while they are offline…"),
    N_("STOMP over SockJS"),
    N_("published while disconnected ({i}/{n})"),
    N_("Published {n} while offline; the panes are reconnecting…"),
    N_("Every pane recovered all {n} events it missed."),
    N_("Recovered everything: {panes}. The others lost events (see each pane)."),
    N_(", "),
    N_("none"),
    N_("unknown"),
    N_(" (multiplexed: the limit of 6 does not apply)"),
    N_("HTTP requests, all on one HTTP/2 connection to this host,"),
    N_("HTTP requests open now, all on one HTTP/2 connection"),
    # static/js/connection-limit.js (the compare page's "ten streams at once")
    N_("open after {ms} ms"),
    N_("waiting {s} s"),
    N_("reconnecting"),
    N_("refused by the server"),
    N_("Stream {n}: {how}"),
    NP_("Closed the {n} test stream.", "Closed the {n} test streams."),
    N_("No test streams open."),
    N_("{open} open, {waiting} waiting, {refused} refused by the server (see its limits)."),
    N_("All {open} open over {protocol}: one connection carries every stream, and the page's other requests too."),
    N_("All {open} open over {protocol}."),
    N_("{open} open, {waiting} still opening…"),
    N_(
        "{open} open, {waiting} waiting. Over {protocol} the browser keeps at most 6 connections "
        "to this host: the panes above hold some (their long poll and SSE stream), these streams "
        "the rest, and every other request to this host now queues until one is freed. Close the "
        "test streams to free them."
    ),
    N_("Close the test streams"),
    # static/js/index-auth.js
    N_("nothing"),
    N_("{min} min {s} s"),
    N_("nobody (anonymous)"),
    N_("the HttpOnly cookie"),
    N_("an Authorization header"),
    N_("a single-use ticket"),
    N_("none (anonymous)"),
    N_("none needed (access control is off)"),
    N_("no token"),
    N_("Signed in as {user}: the token travels in an HttpOnly cookie (document.cookie cannot see it)."),
    N_("Not signed in: you get what anonymous visitors may do."),
    N_(
        " Your cookie holds a token the server no longer accepts (expired, or signed with the key of an earlier start): sign in again, or sign out to clear it."
    ),
    N_("Who am I? {why}."),
    N_("{sender}: {text} (#{id})"),
    N_("connecting…"),
    N_("allowed: listening"),
    N_("stream lost; the browser reconnects by itself"),
    N_("the stream failed, but it would open now: reload to follow it again"),
    N_("sending…"),
    N_("hello {topic}, from {sender}"),
    N_("allowed: published #{id}"),
    N_("none yet"),
    N_("Signing in as {user}…"),
    N_("Sign-in failed: {why}"),
    N_("Sign-out failed: {why}"),
    # static/js/doctor.js (the proxy doctor page; the command-line doctor stays English)
    N_("(in the /ws and /stomp location)"),
    N_("(in the SSE location; do not ignore X-Accel-Buffering)"),
    N_("(and keepalive 32; in the upstream block)"),
    N_("on the app (the proxy's lines are right)"),
    N_("(or unset SWITCHBOARD_BEHIND_PROXY when nothing is in front)"),
    N_("no nginx line: keep both clocks in sync with NTP (chrony, systemd-timesyncd)"),
    N_("(HTTP/2 carries every stream over one connection)"),
    N_("not run"),
    N_("running…"),
    N_("ok"),
    N_("problem"),
    N_("could not tell"),
    N_("The line that keeps it so:"),
    N_("Fix:"),
    N_("{s} s"),
    N_("{url} answered {status}"),
    N_("{protocol} with Connection: {connection}"),
    N_(
        "the app was spoken to in {said}: every request opens and closes an upstream connection, "
        "and keep-alive and chunked streaming are lost (the study notes' HTTP/1.0 pitfall)"
    ),
    N_("the app's server read the request as {protocol}"),
    N_("reuse could not be seen"),
    N_("the upstream connection was reused"),
    N_("the upstream connection was not reused (keepalive 32; in the upstream block reuses it)"),
    N_("the app was spoken to in {said}, keep-alive; {reuse}"),
    N_("the proxy passes the client's own header on instead of adding its hop"),
    N_("nothing in front adds its own hop"),
    N_(
        "the app trusts X-Forwarded-For, and a forged {address} became the client address: {how}; "
        "anyone can dodge the per-client limits"
    ),
    N_("a proxy answers (Server: {server}) but no X-Forwarded-* reach the app: it sees every client as {client}"),
    N_("the app trusts X-Forwarded-* but none arrived"),
    N_("no X-Forwarded-* arrived and none are trusted: a direct connection; the app sees you as {client}"),
    N_("{headers} reach the app but are not trusted: it counts every client as {client} (the proxy) in its limits"),
    N_("the app sees {seen} where you used {used}: X-Forwarded-Proto is {proto}"),
    N_("missing"),
    N_("the app answers for host {seen} where you used {used}: its WebSocket Origin check compares against it"),
    N_(
        "{headers} reach the app and are trusted: it sees you as {client} over {scheme}; a forged "
        "X-Forwarded-For is ignored"
    ),
    N_("the server's clock is {offset} ms from this browser's (±{rtt} ms)"),
    N_("{said}; the pages take it out of their latency figures"),
    N_("{said}: every latency figure measured against it is off by that much"),
    N_("no answer within {s} s"),
    N_("closed (code {code})"),
    N_(
        "{path}: the socket {how} before it opened, so no 101 came back: the proxy drops the "
        "Upgrade and Connection headers (the browser does not show the status; {command} does)"
    ),
    N_("/ws answered 101 but the socket then closed (code {code}): frames do not pass"),
    N_("/ws answered 101, but the ping got {reply}"),
    N_("101 Switching Protocols, and a ping op went both ways in {time}"),
    N_('/stomp opened without a STOMP sub-protocol (got "{protocol}")'),
    N_("/stomp answered 101 ({protocol}) but the socket then closed"),
    N_("/stomp answered 101 ({protocol}), but CONNECT got {reply}"),
    N_("101 with sub-protocol {protocol} echoed, and CONNECT was answered {command}"),
    N_("the timed stream could not be opened"),
    N_("none of {n} events sent {interval} apart arrived before the wait ran out: the proxy holds the stream back"),
    N_("the stream was cut before any event arrived"),
    N_("the stream ended before any event arrived"),
    N_("the stream was cut after {n} of {total} events"),
    N_("the wait ran out after {n} of {total} events"),
    N_(
        "{n} events sent {interval} apart arrived a median {gap} apart, the first after {first} "
        "s: each event is passed on at once"
    ),
    N_("{n} events sent {interval} apart over {over} arrived in one clump after {after}: the proxy buffers the stream"),
    N_("(in the SSE location, above {setting} ({s} s))"),
    N_("the idle stream could not be opened"),
    N_("a silent stream survived {s} s, longer than the server's heartbeat ({heartbeat} s): quiet streams stay open"),
    N_("a silent stream survived {s} s, but heartbeats come every {heartbeat} s: wait longer than that to know"),
    N_("nothing came and nothing ended within {s} s and the grace time"),
    N_(
        "a silent stream was cut after {after}; heartbeats come every {heartbeat} s, so every "
        "quiet stream is cut and reconnects"
    ),
    N_(
        "a silent stream was cut after {after}, later than the heartbeat ({heartbeat} s) that "
        "keeps real streams talking"
    ),
    N_("(in the long-poll location, above {setting} ({s} s))"),
    N_("a response held silent for {s} s came back, longer than a long poll is parked ({longpoll} s)"),
    N_("a response held {s} s came back, but long polls are parked up to {longpoll} s: wait longer than that to know"),
    N_("the server refused the slow poll ({status}); try again later"),
    N_("answered {status}"),
    N_("closed the connection"),
    N_(
        "the proxy {what} after {after} of silence; a long poll is parked up to {longpoll} s, so "
        "idle polls fail instead of answering 204"
    ),
    N_("the proxy {what} after {after}, later than a long poll is parked ({longpoll} s)"),
    N_("the slow poll answered {status} after {after}"),
    N_("{failed} of {total} held requests failed (a limit, or the proxy); try again later"),
    N_("an unknown version"),
    N_("{n} of {total} requests went at once, the others waited for a free connection"),
    N_("all {total} requests went at once"),
    N_(
        "this browser uses HTTP/1.1: {measured}, so at most 6 streams per host across all tabs "
        "(SSE, long polls); HTTP/2 lifts that"
    ),
    N_(
        "HTTP/1.1, but only {n} requests went at once: other tabs or requests hold the rest of "
        "this browser's 6 connections to this host"
    ),
    N_("HTTP/1.1, yet {measured}: this browser allows more than 6 per host"),
    N_("this browser uses {name}: {measured} over one connection; no per-host limit of 6"),
    N_("{name}, but {measured}: the server limits concurrent streams"),
    N_("the browser did not say which HTTP version it used ({name}); {measured}"),
    N_("the check failed: {why}"),
    N_("Running…"),
    N_("the echo endpoint did not answer; nothing else can be checked"),
    NP_(
        "Done: {ok} ok, {n} problem, {unknown} could not tell.",
        "Done: {ok} ok, {n} problems, {unknown} could not tell.",
    ),
    N_("Stopped: {why}"),
    # static/js/sockjs.js
    N_("Connecting…"),
    N_("Connected over {transport}"),
    N_("Disconnected ({why}); reconnecting in {s} s"),
    N_("Not connected yet: the message was not sent"),
    # static/js/stomp-queue.js
    N_("Ready: consuming {destination}"),
    N_("job {id}"),
    N_("ACK"),
    N_("NACK"),
    N_("ACK {job}"),
    N_("NACK {job}"),
    N_("held: waiting for this consumer's answer"),
    N_("acknowledged: gone from the queue"),
    N_("refused: back in the queue for the other consumer"),
    N_("given back: this consumer disconnected"),
    N_("the connection closed"),
    N_("Disconnected; reconnecting"),
    N_("Disconnected on purpose: what it held went back to the queue"),
    N_("Reconnect"),
    N_("Disconnect"),
    N_("no connection to the server within {s} s"),
    N_("Sending…"),
    NP_("Sent {n} job; the RECEIPT confirmed it.", "Sent {n} jobs; the RECEIPT confirmed them."),
    # static/js/compare-queue.js
    NP_("Sent {n} job to the queue.", "Sent {n} jobs to the queue; the consumers shared them."),
)
