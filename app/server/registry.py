"""The open WebSockets of one server process: counted, kept alive, closed on shutdown."""

from __future__ import annotations

import logging
import random
import socket
import time

import gevent
import gevent.event
import gevent.pool
import gevent.select
from gevent.pywsgi import WSGIHandler
from geventwebsocket.exceptions import WebSocketError

from .frames import CLOSE_GOING_AWAY
from .websocket import CLOSE_KEEPALIVE_TIMEOUT, State, WebSocket

log = logging.getLogger(__name__)

ENVIRON_REGISTRY = "switchboard.ws_registry"
#: Sockets one keepalive tick handles before it lets other greenlets run (deliveries).
YIELD_EVERY = 256


class Registry:
    """The open WebSockets of one server process: counted for metrics, closed on shutdown.

    It also knows which HTTP connections sit idle between two requests (keep-alive), so
    a graceful stop can close them at once instead of waiting for the graceful timeout.

    Keepalive for every open WebSocket comes from one timer greenlet per registry (per
    worker), not one per socket: each tick pings the sockets whose ping is due and cuts
    those that sent nothing within ``ping_timeout`` of their last ping.
    """

    def __init__(self):
        self._open: set[WebSocket] = set()
        self._idle: set[WSGIHandler] = set()
        #: Responses that outlive their request's greenlet, by socket (handler.Detached).
        self.detached: dict = {}
        self._no_detached = gevent.event.Event()
        self._no_detached.set()
        self._keepalive: gevent.Greenlet | None = None
        self._tick = 1.0  # seconds between keepalive ticks: a quarter of the shortest interval seen
        self.closing = False
        """Set once shutdown began: new upgrade requests are answered 503, responses carry
        ``Connection: close`` and no further request is read on a kept-alive connection."""

    def __len__(self) -> int:
        return len(self._open)

    @property
    def count(self) -> int:
        """How many WebSockets are open now."""
        return len(self._open)

    def add(self, ws: WebSocket, ping_interval: float = 0.0, ping_timeout: float = 0.0) -> None:
        """Count ``ws`` as open; with ``ping_interval`` > 0 the registry's timer pings it
        that often and cuts it after ``ping_timeout`` seconds without a frame after a ping."""
        self._open.add(ws)
        if ping_interval > 0:
            ws.ping_interval, ws.ping_timeout = ping_interval, ping_timeout
            # The first ping somewhere in the second half of the interval: sockets opened
            # together (a room filling up, a reconnect wave) would otherwise be pinged, and
            # answer, in one burst per interval, holding up deliveries while it lasts.
            ws._ping_due = time.monotonic() + ping_interval * random.uniform(0.5, 1.0)
            self._tick = min(self._tick, max(0.02, min(ping_interval, ping_timeout) / 4))
            if self._keepalive is None:
                self._keepalive = gevent.spawn(self._keep_alive)

    def discard(self, ws: WebSocket) -> None:
        self._open.discard(ws)

    def forget_detached(self, sock) -> None:
        self.detached.pop(sock, None)
        if not self.detached:
            self._no_detached.set()

    def wait_detached(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every detached response to finish (a graceful stop
        ended their streams); cut those left. How many were cut."""
        if self.detached:
            self._no_detached.clear()
            self._no_detached.wait(timeout)
        left = list(self.detached.values())
        for detached in left:
            try:
                detached.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            detached.finish()
        return len(left)

    def _keep_alive(self) -> None:
        """The keepalive timer: runs for the life of the process."""
        while True:
            gevent.sleep(self._tick)
            now = time.monotonic()
            for count, ws in enumerate(list(self._open), 1):
                if not count % YIELD_EVERY:
                    gevent.sleep(0)  # deliveries between slices of a large worker's sockets
                if ws.ping_interval > 0 and ws.state is State.OPEN:
                    try:
                        _keepalive_step(ws, now)
                    except Exception:
                        log.error("keepalive of WebSocket %s failed", ws.path, exc_info=True)

    @property
    def idle(self) -> int:
        """HTTP connections waiting for their next request now."""
        return len(self._idle)

    def close_idle(self) -> int:
        """End every HTTP connection that waits for its next request; how many were ended.

        The handler's read of the request line then sees the end of the stream and the
        connection closes as if the client had left. A connection whose next request has
        already arrived (readable, its handler not yet woken) is left alone: it is served,
        with ``Connection: close``. A request still on its way when the connection closes
        is lost to the server; HTTP/1.1 clients retry an idempotent request on a
        kept-alive connection that closes under it (RFC 9112 9.3.1).
        """
        ended = 0
        for handler in list(self._idle):
            sock = getattr(handler, "socket", None)
            if sock is None:
                continue
            try:
                readable, _, _ = gevent.select.select([sock], [], [], 0)
                if readable:
                    continue
                sock.shutdown(socket.SHUT_RDWR)
                ended += 1
            except (OSError, ValueError):
                pass
        return ended

    def close_all(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down", timeout: float = 5.0
    ) -> int:
        """Close every open WebSocket with ``code`` and refuse new ones.

        All Close frames go out at once; then each peer has until ``timeout`` (from
        the start of this call) to answer before its connection is cut. Blocks until
        all are closed, at most about ``timeout`` seconds.

        Returns:
            How many WebSockets were open.
        """
        self.closing = True
        sockets = list(self._open)
        if not sockets:
            return 0
        log.info("closing %d WebSocket(s) with %d", len(sockets), code)
        deadline = time.monotonic() + timeout
        group = gevent.pool.Group()
        for ws in sockets:
            group.spawn(ws.close, code, reason)
        group.join(timeout=timeout)
        for ws in sockets:
            ws.wait_closed(max(0.0, deadline - time.monotonic()))
        for ws in sockets:
            if ws.state is not State.CLOSED:
                ws.abort()
        group.kill(block=False)
        return len(sockets)


def open_websockets(environ) -> int:
    """How many WebSockets this process has open (0 outside :class:`Handler`)."""
    registry = environ.get(ENVIRON_REGISTRY)
    return registry.count if registry is not None else 0


def _keepalive_step(ws: WebSocket, now: float) -> None:
    """One keepalive tick for ``ws``: check the last ping's answer, send the next ping."""
    sent = ws._ping_sent
    if sent is not None:
        if ws.last_received >= sent:  # any frame counts as an answer, not just the pong
            ws._ping_sent = None
        elif now - sent >= ws.ping_timeout:
            # Also a peer that reads nothing: the ping waits behind the backlog it never
            # reads, so no answer can come.
            log.info("WebSocket %s: keepalive ping timeout", ws.path)
            ws.abort(CLOSE_KEEPALIVE_TIMEOUT, "keepalive ping timeout")
            return
    if ws._ping_sent is None and now >= ws._ping_due:
        ws._pings += 1
        try:
            ws.ping(ws._pings.to_bytes(4, "big"))
        except WebSocketError:
            return  # already closing or cut
        ws._ping_sent = now
        ws._ping_due = now + ws.ping_interval
