"""The doctor's checks: each measures one thing through the proxy, then a pure ``judge_*``
function turns the measurement into a verdict, an explanation and the line that fixes it.

The judges take plain values and touch no socket, so tests can feed them any measurement;
static/js/doctor.js makes the same decisions in the browser, with the same words.
"""

from __future__ import annotations

import http.client
import json
import math
import statistics
import time
from dataclasses import dataclass
from typing import Mapping

from .wire import Echo, Target, get, read_sse, ws_connect

__all__ = ["CHECKS", "Options", "Result", "FORGED_ADDRESS", "STOMP_PROTOCOLS", "measure_echo"]

OK, PROBLEM, UNKNOWN = "ok", "problem", "unknown"
# RFC 5737 TEST-NET-3: an address no real client has, sent as a forged X-Forwarded-For.
FORGED_ADDRESS = "203.0.113.7"
STOMP_PROTOCOLS = ("v10.stomp", "v11.stomp", "v12.stomp")
# A clump: the events' spread is under this share of the spread they were sent with.
CLUMP_SHARE = 0.5
# The clock check's tolerance beyond half the round trip.
CLOCK_TOLERANCE = 1.0

UPGRADE_FIX = (
    "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
    "proxy_set_header Connection $connection_upgrade;  (in the /ws and /stomp location)"
)
BUFFERING_FIX = "proxy_buffering off; gzip off;  (in the SSE location; do not ignore X-Accel-Buffering)"
UPSTREAM_FIX = 'proxy_http_version 1.1; proxy_set_header Connection "";  (and keepalive 32; in the upstream block)'
FORWARDED_FIX = (
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;"
)
HOST_FIX = "proxy_set_header Host $http_host; proxy_set_header X-Forwarded-Host $http_host;"
TRUST_FIX = "SWITCHBOARD_BEHIND_PROXY=1 on the app (the proxy's lines are right)"
CLOCK_FIX = "no nginx line: keep both clocks in sync with NTP (chrony, systemd-timesyncd)"


@dataclass(frozen=True)
class Result:
    """One check's outcome: ``verdict`` is ok, problem or unknown (could not tell)."""

    check: str
    verdict: str
    explanation: str
    fix: str

    def line(self) -> str:
        return f"{self.verdict:<8} {self.check:<10} {self.explanation}  fix: {self.fix}"

    def to_dict(self) -> dict:
        return {"check": self.check, "verdict": self.verdict, "explanation": self.explanation, "fix": self.fix}


@dataclass(frozen=True)
class Options:
    """The bounds of one run (every wait is bounded; see ``python -m app.doctor --help``)."""

    events: int = 6
    interval: float = 0.5
    idle_seconds: float | None = None  # None: the server's heartbeat + 2 s
    poll_seconds: float | None = None  # None: the server's long-poll timeout + 2 s
    timeout: float = 10.0
    origin: str | None = None


def read_timeout_fix(location: str, setting: str, seconds: float) -> str:
    # Generous, as nginx.conf ships it: at least 60 s, and twice the app's interval.
    return f"proxy_read_timeout {max(60, math.ceil(2 * seconds))}s;  (in the {location} location, above {setting})"


# ------------------------------------------------------------------------------ judges


def judge_buffering(
    arrivals: list[float],
    count: int,
    interval: float,
    *,
    status: int | None = 200,
    ended: str = "complete",
    gzip: bool = False,
) -> Result:
    """Were ``count`` events sent ``interval`` s apart received spaced, or in a clump?

    Args:
        arrivals: seconds (from the request) at which each event arrived, in order.
        status: the stream's HTTP status (None: no answer).
        ended: how the reading ended (see ``wire.StreamReading``).
        gzip: whether the stream came gzip-compressed.
    """
    name = "buffering"
    if status != 200:
        return Result(name, UNKNOWN, f"the timed stream answered {status or 'nothing'}, not a stream", BUFFERING_FIX)
    sent_over = (count - 1) * interval
    compressed = " (gzip-compressed on the way)" if gzip else ""
    if not arrivals:
        if ended == "timeout":
            return Result(
                name,
                PROBLEM,
                f"none of {count} events sent {interval * 1000:.0f} ms apart arrived "
                f"before the wait ran out{compressed}: the proxy holds the stream back",
                BUFFERING_FIX,
            )
        return Result(name, UNKNOWN, f"the stream ended ({ended}) before any event arrived", BUFFERING_FIX)
    if len(arrivals) < count and ended != "complete":
        return Result(name, PROBLEM, f"the stream was {ended} after {len(arrivals)} of {count} events", BUFFERING_FIX)
    if count < 2:
        return Result(name, UNKNOWN, "one event says nothing about spacing: send at least 2", BUFFERING_FIX)
    spread = arrivals[-1] - arrivals[0]
    if spread >= CLUMP_SHARE * sent_over:
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        return Result(
            name,
            OK,
            f"{len(arrivals)} events sent {interval * 1000:.0f} ms apart arrived a median "
            f"{statistics.median(gaps) * 1000:.0f} ms apart, the first after {arrivals[0]:.2f} s"
            f"{compressed}: each event is passed on at once",
            BUFFERING_FIX,
        )
    return Result(
        name,
        PROBLEM,
        f"{len(arrivals)} events sent {interval * 1000:.0f} ms apart over "
        f"{sent_over:.1f} s arrived in one clump after {arrivals[-1]:.1f} s{compressed}: "
        "the proxy buffers the stream",
        BUFFERING_FIX,
    )


def judge_idle(
    seconds: float, heartbeat: float, *, survived: bool, cut_after: float | None, status: int | None = 200
) -> Result:
    """Did a stream silent for ``seconds`` survive, and does that cover the heartbeat?

    Args:
        survived: its last event (after the silence) arrived.
        cut_after: seconds of silence after which the connection ended, if it was cut.
    """
    name = "idle-cut"
    fix = read_timeout_fix("SSE", f"SWITCHBOARD_SSE_HEARTBEAT ({heartbeat:g} s)", heartbeat)
    if status in (502, 504):
        return Result(name, PROBLEM, f"the proxy answered {status} instead of the idle stream", fix)
    if status != 200:
        return Result(name, UNKNOWN, f"the idle stream answered {status or 'nothing'}", fix)
    if survived:
        if seconds > heartbeat:
            return Result(
                name,
                OK,
                f"a silent stream survived {seconds:g} s, longer than the server's "
                f"heartbeat ({heartbeat:g} s): quiet streams stay open",
                fix,
            )
        return Result(
            name,
            UNKNOWN,
            f"a silent stream survived {seconds:g} s, but heartbeats come every "
            f"{heartbeat:g} s: wait longer than that to know (--idle-seconds)",
            fix,
        )
    if cut_after is None:
        return Result(name, UNKNOWN, f"nothing came and nothing ended within {seconds:g} s and the grace time", fix)
    if cut_after < heartbeat:
        return Result(
            name,
            PROBLEM,
            f"a silent stream was cut after {cut_after:.1f} s; heartbeats come every "
            f"{heartbeat:g} s, so every quiet stream is cut and reconnects",
            fix,
        )
    return Result(
        name,
        OK,
        f"a silent stream was cut after {cut_after:.1f} s, later than the heartbeat "
        f"({heartbeat:g} s) that keeps real streams talking",
        fix,
    )


def judge_long_poll(seconds: float, longpoll_timeout: float, *, status: int | None, elapsed: float) -> Result:
    """Did a response held silent for ``seconds`` come back, and does that cover the long-poll timeout?"""
    name = "long-poll"
    fix = read_timeout_fix("long-poll", f"SWITCHBOARD_LONGPOLL_TIMEOUT ({longpoll_timeout:g} s)", longpoll_timeout)
    if status == 200:
        if seconds > longpoll_timeout:
            return Result(
                name,
                OK,
                f"a response held silent for {seconds:g} s came back, longer than a long poll "
                f"is parked ({longpoll_timeout:g} s)",
                fix,
            )
        return Result(
            name,
            UNKNOWN,
            f"a response held {seconds:g} s came back, but long polls are parked up to "
            f"{longpoll_timeout:g} s: wait longer than that to know (--poll-seconds)",
            fix,
        )
    if status in (429, 503):
        return Result(name, UNKNOWN, f"the server refused the slow poll ({status}); try again later", fix)
    what = f"answered {status}" if status else "closed the connection"
    if status in (None, 502, 504) and elapsed < longpoll_timeout:
        return Result(
            name,
            PROBLEM,
            f"the proxy {what} after {elapsed:.1f} s of silence; a long poll is parked up to "
            f"{longpoll_timeout:g} s, so idle polls fail instead of answering 204",
            fix,
        )
    if status in (None, 502, 504):
        return Result(
            name,
            OK,
            f"the proxy {what} after {elapsed:.1f} s, later than a long poll is parked ({longpoll_timeout:g} s)",
            fix,
        )
    return Result(name, UNKNOWN, f"the slow poll answered {status} after {elapsed:.1f} s", fix)


def _handshake_problem(name: str, path: str, status: int | None, error: str | None) -> Result:
    if status is None:
        return Result(name, PROBLEM, f"{path}: no answer to the upgrade ({error})", UPGRADE_FIX)
    if status == 426 or 200 <= status < 400:  # /ws: 426 Upgrade Required; /stomp: its demo page
        return Result(
            name,
            PROBLEM,
            f"{path} answered {status} instead of 101: the app got a plain GET, so the "
            "proxy drops the Upgrade and Connection headers",
            UPGRADE_FIX,
        )
    if status == 403:
        return Result(
            name,
            PROBLEM,
            f"{path} answered 403: the Origin check refused this host; the proxy must pass the Host the browser used",
            HOST_FIX,
        )
    if status in (429, 503):
        return Result(name, UNKNOWN, f"{path} answered {status}: the server is at a connection limit", UPGRADE_FIX)
    return Result(name, PROBLEM, f"{path} answered {status} instead of 101 Switching Protocols", UPGRADE_FIX)


def judge_websocket(
    *,
    status: int | None,
    accept_ok: bool = True,
    reply: str | None = None,
    error: str | None = None,
    rtt: float | None = None,
) -> Result:
    """Did ``/ws`` upgrade (101) and pass a ping and its answer?

    Args:
        reply: the first message after our ping (None: the socket closed or said nothing).
        error: why there was no answer or no reply.
    """
    name = "websocket"
    if status != 101:
        return _handshake_problem(name, "/ws", status, error)
    if not accept_ok:
        return Result(
            name,
            PROBLEM,
            "/ws answered 101 with a wrong Sec-WebSocket-Accept: something rewrote the handshake",
            UPGRADE_FIX,
        )
    if reply is None:
        return Result(
            name, PROBLEM, f"/ws answered 101 but the socket then {error or 'closed'}: frames do not pass", UPGRADE_FIX
        )
    try:
        op = json.loads(reply).get("op")
    except (ValueError, AttributeError):
        op = None
    if op != "ok":
        return Result(name, UNKNOWN, f"/ws answered 101, but the ping got {reply[:80]!r}", UPGRADE_FIX)
    timing = f" in {rtt * 1000:.0f} ms" if rtt is not None else ""
    return Result(name, OK, f"101 Switching Protocols, and a ping op went both ways{timing}", UPGRADE_FIX)


def judge_stomp(
    *,
    status: int | None,
    protocol: str | None = None,
    accept_ok: bool = True,
    reply: str | None = None,
    error: str | None = None,
) -> Result:
    """Did ``/stomp`` upgrade, echo one of the offered STOMP sub-protocols, and answer CONNECT?"""
    name = "stomp"
    if status != 101:
        return _handshake_problem(name, "/stomp", status, error)
    if not accept_ok:
        return Result(name, PROBLEM, "/stomp answered 101 with a wrong Sec-WebSocket-Accept", UPGRADE_FIX)
    if protocol not in STOMP_PROTOCOLS:
        return Result(
            name,
            PROBLEM,
            f"/stomp answered 101 without echoing a sub-protocol (got {protocol!r}): "
            "browsers that offered v12.stomp fail the handshake",
            "proxy_pass_header Sec-WebSocket-Protocol;  (nginx passes it unless hidden)",
        )
    if reply is None:
        return Result(
            name, PROBLEM, f"/stomp answered 101 ({protocol}) but the socket then {error or 'closed'}", UPGRADE_FIX
        )
    command = reply.split("\n", 1)[0]
    if command not in ("CONNECTED", "ERROR"):
        return Result(name, UNKNOWN, f"/stomp answered 101 ({protocol}), but CONNECT got {reply[:60]!r}", UPGRADE_FIX)
    return Result(name, OK, f"101 with sub-protocol {protocol} echoed, and CONNECT was answered {command}", UPGRADE_FIX)


def _has_close(connection: str | None) -> bool:
    return connection is not None and "close" in [token.strip().lower() for token in connection.split(",")]


def judge_upstream(protocol: str | None, connection: str | None, reused: bool | None) -> Result:
    """How the proxy spoke to the app: HTTP version, Connection header, connection reuse.

    Args:
        protocol: the request's version as the app's server read it (``HTTP/1.0``, ``HTTP/1.1``).
        connection: the Connection header the app received, if any.
        reused: two requests in a row came over the same upstream connection (None: unknown).
    """
    name = "upstream"
    said = f"{protocol or '?'} with Connection: {connection}" if connection else f"{protocol or '?'}"
    if protocol == "HTTP/1.0" or _has_close(connection):
        return Result(
            name,
            PROBLEM,
            f"the app was spoken to in {said}: every request opens and closes an "
            "upstream connection, and keep-alive and chunked streaming are lost (the study notes' "
            "HTTP/1.0 pitfall)",
            UPSTREAM_FIX,
        )
    if protocol not in ("HTTP/1.1", "HTTP/2", "HTTP/2.0"):
        return Result(name, UNKNOWN, f"the app's server read the request as {protocol!r}", UPSTREAM_FIX)
    reuse = {
        True: "the upstream connection was reused",
        False: "the upstream connection was not reused (keepalive 32; in the upstream block reuses it)",
        None: "reuse could not be seen",
    }[reused]
    return Result(name, OK, f"the app was spoken to in {said}, keep-alive; {reuse}", UPSTREAM_FIX)


def judge_forwarded(
    plain: Mapping, forged: Mapping | None, *, scheme: str, host: str, server_header: str | None
) -> Result:
    """Do X-Forwarded-For/-Proto reach the app, is it trusting them, and only the proxy's?

    Args:
        plain: the echo's ``forwarded`` and ``seen`` for a request as a browser sends it.
        forged: the same for a request carrying ``X-Forwarded-For: FORGED_ADDRESS`` (None: not sent).
        scheme: the scheme the client used; host: the Host it sent.
        server_header: the answer's Server header (``nginx``, ``gunicorn``...): a hint that a proxy answers.
    """
    name = "forwarded"
    forwarded, seen = plain.get("forwarded", {}), plain.get("seen", {})
    trusted = bool(forwarded.get("trusted"))
    arrived = [
        label
        for label, key in (("X-Forwarded-For", "for"), ("-Proto", "proto"), ("-Host", "host"))
        if forwarded.get(key)
    ]
    client = seen.get("client")
    spoofed = forged is not None and forged.get("seen", {}).get("client") == FORGED_ADDRESS
    if trusted and spoofed:
        how = (
            "the proxy passes the client's own header on instead of adding its hop"
            if arrived
            else "nothing in front adds its own hop (is the app reachable without the proxy?)"
        )
        return Result(
            name,
            PROBLEM,
            f"the app trusts X-Forwarded-For, and a forged {FORGED_ADDRESS} became the "
            f"client address: {how}; anyone can dodge the per-client limits",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;  (or unset "
            "SWITCHBOARD_BEHIND_PROXY when nothing is in front)",
        )
    proxied = bool(server_header) and not server_header.lower().startswith("gunicorn")
    if not arrived:
        if proxied:
            return Result(
                name,
                PROBLEM,
                f"a proxy answers (Server: {server_header}) but no X-Forwarded-* reach "
                f"the app: it sees every client as {client}",
                FORWARDED_FIX,
            )
        if trusted:
            return Result(name, UNKNOWN, "the app trusts X-Forwarded-* but none arrived", FORWARDED_FIX)
        return Result(
            name,
            OK,
            f"no X-Forwarded-* arrived and none are trusted: a direct connection; the app sees you as {client}",
            FORWARDED_FIX,
        )
    if not trusted:
        return Result(
            name,
            PROBLEM,
            f"{', '.join(arrived)} reach the app but are not trusted: it counts every "
            f"client as {client} (the proxy) in its limits",
            TRUST_FIX,
        )
    if seen.get("scheme") != scheme:
        return Result(
            name,
            PROBLEM,
            f"the app sees {seen.get('scheme')} where you used {scheme}: "
            f"X-Forwarded-Proto is {forwarded.get('proto') or 'missing'}",
            FORWARDED_FIX,
        )
    if str(seen.get("host", "")).lower() != host.lower():
        return Result(
            name,
            PROBLEM,
            f"the app answers for host {seen.get('host')} where you used {host}: its "
            "WebSocket Origin check compares against it",
            HOST_FIX,
        )
    forged_note = "; a forged X-Forwarded-For is ignored" if forged is not None else ""
    return Result(
        name,
        OK,
        f"{', '.join(arrived)} reach the app and are trusted: it sees you as {client} over {scheme}{forged_note}",
        FORWARDED_FIX,
    )


def judge_clock(samples: list[tuple[float, float, float]]) -> Result:
    """The offset of the server's clock from ours, from (sent, received, server time) samples."""
    name = "clock"
    if not samples:
        return Result(name, UNKNOWN, "no answer carried the server's time", CLOCK_FIX)
    sent, received, server = min(samples, key=lambda s: s[1] - s[0])  # the fastest round trip
    rtt = received - sent
    offset = server - (sent + received) / 2
    said = f"the server's clock is {round(offset * 1000):+d} ms from this machine's (±{round(rtt * 500)} ms)"
    if abs(offset) <= CLOCK_TOLERANCE + rtt / 2:
        return Result(name, OK, f"{said}; the pages take it out of their latency figures", CLOCK_FIX)
    return Result(name, PROBLEM, f"{said}: every latency figure measured against it is off by that much", CLOCK_FIX)


# ---------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class EchoProbe:
    """Three echoes on one connection: as a browser sends it, with a forged X-Forwarded-For, plain again."""

    plain: Echo
    forged: Echo
    again: Echo

    @property
    def server(self) -> Mapping:
        return self.plain.server


def measure_echo(target: Target, timeout: float) -> EchoProbe:
    """Ask ``/api/doctor/echo`` three times over one kept-alive connection.

    Raises:
        OSError, http.client.HTTPException: the server cannot be reached.
        ValueError: it answered, but not as Switchboard's doctor does (the message says what came).
    """
    conn = target.connection(timeout)
    path = target.path("/api/doctor/echo")
    try:
        echoes = []
        for headers in ({}, {"X-Forwarded-For": FORGED_ADDRESS}, {}):
            reply = get(conn, path, headers)
            if reply.status != 200:
                raise ValueError(f"{path} answered {reply.status}: {reply.body[:200]!r}")
            try:
                echoes.append(Echo(reply.json(), reply))
            except ValueError:
                raise ValueError(f"{path} did not answer JSON: {reply.body[:200]!r}") from None
        return EchoProbe(*echoes)
    finally:
        conn.close()


def check_upstream(target: Target, options: Options, probe: EchoProbe) -> Result:
    ports = [echo.upstream.get("peer_port") for echo in (probe.plain, probe.again)]
    reused = None if None in ports else ports[0] == ports[1]
    return judge_upstream(probe.plain.upstream.get("protocol"), probe.plain.upstream.get("connection"), reused)


def check_forwarded(target: Target, options: Options, probe: EchoProbe) -> Result:
    return judge_forwarded(
        probe.plain.body,
        probe.forged.body,
        scheme=target.scheme,
        host=target.host_header,
        server_header=probe.plain.reply.headers.get("server"),
    )


def check_clock(target: Target, options: Options, probe: EchoProbe) -> Result:
    samples = [
        (e.reply.sent, e.reply.received, e.body["time"])
        for e in (probe.plain, probe.forged, probe.again)
        if isinstance(e.body.get("time"), (int, float))
    ]
    return judge_clock(samples)


def check_buffering(target: Target, options: Options, probe: EchoProbe) -> Result:
    count, interval = options.events, options.interval
    path = target.path(f"/api/doctor/timed-stream?count={count}&interval={interval:g}")
    reading = read_sse(target, path, until="done", within=count * interval + options.timeout)
    return judge_buffering(
        [event.at for event in reading.of_type("tick")],
        count,
        interval,
        status=reading.status,
        ended=reading.ended,
        gzip=reading.encoding == "gzip",
    )


def _wait(requested: float | None, interval: float, maximum: float) -> float:
    return min(requested if requested is not None else interval + 2, maximum)


def check_idle(target: Target, options: Options, probe: EchoProbe) -> Result:
    heartbeat = float(probe.server.get("sse_heartbeat", 15))
    seconds = _wait(options.idle_seconds, heartbeat, float(probe.server.get("max_wait", 120)))
    reading = read_sse(
        target,
        target.path(f"/api/doctor/idle-stream?seconds={seconds:g}"),
        until="still-here",
        within=seconds + options.timeout,
    )
    survived = bool(reading.of_type("still-here"))
    cut_after = None
    if not survived and reading.ended in ("cut", "complete"):
        cut_after = reading.ended_at - (reading.first_byte_at or reading.opened_at or 0.0)
    return judge_idle(seconds, heartbeat, survived=survived, cut_after=cut_after, status=reading.status)


def check_long_poll(target: Target, options: Options, probe: EchoProbe) -> Result:
    longpoll = float(probe.server.get("longpoll_timeout", 25))
    seconds = _wait(options.poll_seconds, longpoll, float(probe.server.get("max_wait", 120)))
    conn = target.connection(seconds + options.timeout)
    start = time.monotonic()
    try:
        status = get(conn, target.path(f"/api/doctor/slow-poll?seconds={seconds:g}")).status
    except (OSError, http.client.HTTPException):  # cut or reset before an answer (RemoteDisconnected...)
        status = None
    finally:
        conn.close()
    return judge_long_poll(seconds, longpoll, status=status, elapsed=time.monotonic() - start)


def check_websocket(target: Target, options: Options, probe: EchoProbe) -> Result:
    handshake = ws_connect(target, target.path("/ws"), options.origin or target.origin, within=options.timeout)
    if handshake.client is None:
        return judge_websocket(status=handshake.status, error=handshake.error)
    reply, error, start = None, None, time.monotonic()
    try:
        handshake.client.send_text(json.dumps({"op": "ping", "ref": "doctor"}))
        reply = handshake.client.recv_text(options.timeout)
        error = None if reply is not None else "closed"
    except (OSError, TimeoutError) as exc:
        error = f"failed ({type(exc).__name__}: {exc})"
    finally:
        handshake.client.close()
    return judge_websocket(
        status=101, accept_ok=handshake.accept_ok, reply=reply, error=error, rtt=time.monotonic() - start
    )


def check_stomp(target: Target, options: Options, probe: EchoProbe) -> Result:
    handshake = ws_connect(
        target,
        target.path("/stomp"),
        options.origin or target.origin,
        protocols=STOMP_PROTOCOLS,
        within=options.timeout,
    )
    if handshake.client is None:
        return judge_stomp(status=handshake.status, error=handshake.error)
    reply, error = None, None
    try:
        handshake.client.send_text(f"CONNECT\naccept-version:1.0,1.1,1.2\nhost:{target.host}\nheart-beat:0,0\n\n\x00")
        reply = handshake.client.recv_text(options.timeout)
        error = None if reply is not None else "closed"
    except (OSError, TimeoutError) as exc:
        error = f"failed ({type(exc).__name__}: {exc})"
    finally:
        handshake.client.close()
    return judge_stomp(status=101, protocol=handshake.protocol, accept_ok=handshake.accept_ok, reply=reply, error=error)


# In the order they are printed. Each takes (target, options, echo probe) and returns a Result.
CHECKS = {
    "buffering": check_buffering,
    "idle-cut": check_idle,
    "websocket": check_websocket,
    "stomp": check_stomp,
    "long-poll": check_long_poll,
    "upstream": check_upstream,
    "forwarded": check_forwarded,
    "clock": check_clock,
}
