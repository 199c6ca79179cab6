"""The proxy doctor's server side: small endpoints a client reads, through whatever sits
between it and the app, to find what that proxy gets wrong (the page ``/doctor`` and
``python -m app.doctor`` are the clients; the study notes' proxy pitfalls are the list).

=====================================  ===========================================================
``GET /api/doctor/echo``               what reached the app: the upstream request's HTTP version
                                       and ``Connection`` header, its TCP port (the same port on
                                       two requests = a kept-alive upstream connection),
                                       ``X-Forwarded-For/-Proto/-Host`` as received and whether
                                       they are trusted, the server clock, and the intervals the
                                       other checks compare against
``GET /api/doctor/timed-stream``       SSE with the real stream's headers and first bytes, then
``?count=&interval=``                  ``count`` events ``interval`` s apart, then ``event: done``
``GET /api/doctor/idle-stream``        SSE that writes its first bytes, then nothing at all (no
``?seconds=``                          heartbeat) for ``seconds``, then ``event: still-here``
``GET /api/doctor/slow-poll``          a response held silent, headers included, for ``seconds``
``?seconds=``                          (as a parked long poll is), then ``200``
=====================================  ===========================================================

Bounds (:data:`BOUNDS`): count 1-50, interval 0.05-2 s and at most 20 s in all; seconds 0.1
to ``SWITCHBOARD_DOCTOR_MAX_WAIT`` (120 s). Out of bounds: ``400 bad_parameter``.

Every request is charged to the client's address (``SWITCHBOARD_DOCTOR_RATE``, bursts of
``SWITCHBOARD_DOCTOR_BURST``) and every held response takes one of the address's doctor
places (``SWITCHBOARD_DOCTOR_STREAMS``) and a stream place (the connection limits), so
the doctor cannot be used to hold a server's connections; refusals are 429s counted in
``switchboard_limit_rejections_total``. The doctor is public even with access control on:
it names no topic, the echo returns only what the client sent plus what ``/healthz`` and
an SSE stream's opening comment already tell, and a proxy is tested before anyone signs in.

nginx.conf puts the two streams under the SSE location and the slow poll under the
long-poll location, so they meet the proxy exactly as the real endpoints do.
"""

from __future__ import annotations

import json
import math
import time
from typing import Iterator

from flask import Blueprint, Flask, Response, jsonify, request
from gevent.event import Event as StopFlag

from .errors import ApiError
from .limits import Slot
from .services import services
from .transports.sse import CONTENT_TYPE

bp = Blueprint("doctor", __name__)

# (low, high) of each parameter; None = the SWITCHBOARD_DOCTOR_MAX_WAIT setting.
BOUNDS = {"count": (1, 50), "interval": (0.05, 2.0), "seconds": (0.1, None)}
MAX_TIMED_SECONDS = 20.0  # count x interval
# A forwarded header is echoed back to its sender; nothing needs more than this of it.
MAX_ECHOED = 512
# EventSource reconnects after a stream ends; the doctor's clients close first, and a
# forgotten one comes back after a minute, not at once.
RETRY_MS = 60_000
SHUTDOWN = b": server shutting down\n\n"


def _number(name: str, default: float, high: float | None = None, integer: bool = False) -> float:
    """The query parameter ``name`` within its bounds, or ``default`` when it is absent.

    Raises:
        ApiError: 400 ``bad_parameter`` naming the bounds.
    """
    low, bound = BOUNDS[name]
    high = bound if high is None else high
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
        kind = "a whole number" if integer else "a number"
        raise ApiError(400, "bad_parameter", f"{name} must be {kind} from {low:g} to {high:g}")
    return int(value) if integer else value


def _sse(body: Iterator[bytes], slot: Slot) -> Response:
    """A text/event-stream response with the real stream's headers (app/transports/sse.py)."""
    response = Response(body, status=200, content_type=CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(slot.release)  # also when the generator never starts
    return response


def _opening(text: str) -> bytes:
    # Like the real stream: retry: and a comment at once, before any event (the seed's
    # "503 on first connect": a proxy that sees no byte may give up on the stream).
    return f"retry: {RETRY_MS}\n: switchboard doctor: {text}\n\n".encode("ascii")


@bp.before_request
def charge() -> None:
    """Charge every doctor request to the caller's address (429 beyond the bucket)."""
    services().limits.check_doctor_rate(request.environ)


@bp.get("/api/doctor/echo")
def echo() -> Response:
    """Tell the client what reached the app: upstream HTTP version, Connection, forwarded headers, clock."""
    environ = request.environ
    settings = services().settings

    def header(name: str) -> str | None:
        value = request.headers.get(name)
        return None if value is None else value[:MAX_ECHOED]

    port = environ.get("REMOTE_PORT")
    body = {
        "time": time.time(),
        # As the app's server read the request line: what the proxy spoke upstream.
        "upstream": {
            "protocol": environ.get("SERVER_PROTOCOL"),
            "connection": header("Connection"),
            "peer_port": int(port) if str(port).isdigit() else None,
        },
        "forwarded": {
            "for": header("X-Forwarded-For"),
            "proto": header("X-Forwarded-Proto"),
            "host": header("X-Forwarded-Host"),
            "trusted": settings.behind_proxy,
        },
        # What the app makes of it: the address limits count, the scheme and host it answers for.
        "seen": {"client": services().limits.client(environ), "scheme": request.scheme, "host": request.host},
        "server": {
            "sse_heartbeat": settings.sse_heartbeat,
            "longpoll_timeout": settings.longpoll_timeout,
            "ws_ping_interval": settings.ws_ping_interval,
            "max_wait": settings.doctor_max_wait,
            "doctor_streams": settings.doctor_streams,
        },
    }
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _timed(count: int, interval: float, stopping: StopFlag, slot: Slot) -> Iterator[bytes]:
    try:
        yield _opening(f"{count} events, one every {interval:g} s, then event: done")
        start = time.monotonic()
        for n in range(1, count + 1):
            # Against the start, not the last write: the spacing does not drift with load.
            if stopping.wait(max(0.0, start + n * interval - time.monotonic())):
                yield SHUTDOWN
                return
            data = json.dumps({"n": n, "of": count, "time": time.time()}, separators=(",", ":"))
            yield f"id: {n}\nevent: tick\ndata: {data}\n\n".encode("ascii")
        yield b"event: done\ndata: {}\n\n"
    finally:
        slot.release()


@bp.get("/api/doctor/timed-stream")
def timed_stream() -> Response:
    """Stream ``count`` events ``interval`` seconds apart, to show whether a proxy buffers them."""
    count = _number("count", 6, integer=True)
    interval = _number("interval", 0.5)
    if count * interval > MAX_TIMED_SECONDS:
        raise ApiError(400, "bad_parameter", f"count x interval must be at most {MAX_TIMED_SECONDS:g} s")
    slot = services().limits.open_doctor_stream(request.environ)
    return _sse(_timed(count, interval, services().shutdown.stopping, slot), slot)


def _idle(seconds: float, stopping: StopFlag, slot: Slot) -> Iterator[bytes]:
    try:
        yield _opening(f"silent for {seconds:g} s (no heartbeat), then event: still-here")
        if stopping.wait(seconds):
            yield SHUTDOWN
            return
        yield b'event: still-here\ndata: {"after": %s}\n\n' % json.dumps(seconds).encode("ascii")
    finally:
        slot.release()


@bp.get("/api/doctor/idle-stream")
def idle_stream() -> Response:
    """Open a stream and stay silent for ``seconds``, to show when a proxy cuts a quiet stream."""
    settings = services().settings
    seconds = _number("seconds", min(settings.sse_heartbeat + 2, settings.doctor_max_wait), settings.doctor_max_wait)
    slot = services().limits.open_doctor_stream(request.environ)
    return _sse(_idle(seconds, services().shutdown.stopping, slot), slot)


@bp.get("/api/doctor/slow-poll")
def slow_poll() -> Response:
    """Answer only after ``seconds`` of silence, to show whether a proxy times out a parked long poll."""
    settings = services().settings
    seconds = _number("seconds", min(settings.longpoll_timeout + 2, settings.doctor_max_wait), settings.doctor_max_wait)
    received = time.time()
    with services().limits.open_doctor_stream(request.environ):
        if services().shutdown.stopping.wait(seconds):
            raise ApiError(503, "shutting_down", "the server is shutting down; try again shortly", {"Retry-After": "1"})
    response = jsonify(held=seconds, received=received, time=time.time())
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the endpoints; on shutdown (``services.shutdown.stopping``), every held doctor response ends at once."""
    app.register_blueprint(bp)
