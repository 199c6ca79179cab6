"""The doctor's verdicts: pure ``judge_*`` functions that turn one measurement into a verdict,
an explanation and the line that fixes it.

They take plain values and touch no socket, so tests can feed them any measurement;
static/js/doctor.js makes the same decisions in the browser, with the same words. The
measurements themselves are taken in :mod:`app.doctor.checks`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Mapping

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
