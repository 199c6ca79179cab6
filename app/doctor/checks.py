"""The doctor's checks: each measures one thing through the proxy, then hands the measurement
to its pure ``judge_*`` function (:mod:`app.doctor.judges`) for the verdict.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Mapping

from .judges import (
    FORGED_ADDRESS,
    OK,
    PROBLEM,
    STOMP_PROTOCOLS,
    UNKNOWN,
    Result,
    judge_buffering,
    judge_clock,
    judge_forwarded,
    judge_idle,
    judge_long_poll,
    judge_stomp,
    judge_upstream,
    judge_websocket,
)
from .wire import Echo, Target, get, read_sse, ws_connect

__all__ = [
    "CHECKS",
    "OK",
    "PROBLEM",
    "UNKNOWN",
    "Options",
    "Result",
    "FORGED_ADDRESS",
    "STOMP_PROTOCOLS",
    "measure_echo",
]


@dataclass(frozen=True)
class Options:
    """The bounds of one run (every wait is bounded; see ``python -m app.doctor --help``)."""

    events: int = 6
    interval: float = 0.5
    idle_seconds: float | None = None  # None: the server's heartbeat + 2 s
    poll_seconds: float | None = None  # None: the server's long-poll timeout + 2 s
    timeout: float = 10.0
    origin: str | None = None


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
