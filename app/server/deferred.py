"""A response answered later, after its request's greenlet has ended (a parked long poll).

The application asks for it with :meth:`RawResponse.defer <app.server.raw_response.RawResponse.defer>`
and returns a ``204`` placeholder. Once the framework is done with the request (its
``after_request`` hooks have set their headers), the handler keeps those headers, sends
nothing, lets its greenlet end and hands the application a :class:`Deferred`. A parked
request then costs the socket, its read buffer and the few fields its access-log line
needs, not a greenlet and the stack the framework left on it.

When the application knows its answer it calls :meth:`Deferred.answer` from a greenlet of
its own: the status line, the kept headers and the body go out in one send, the access
line is written, and that same greenlet goes on serving the connection's next requests
(keep-alive) with a fresh handler, exactly as the handler's own loop would have.
"""

from __future__ import annotations

import http
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import gevent
from gevent.pywsgi import format_date_time

from .kept import close_connection, leave_open, let_go

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

#: Headers the answer decides itself; the placeholder's are dropped.
_DECIDED = frozenset((b"content-length", b"content-type", b"date", b"connection", b"transfer-encoding"))


class Deferred:
    """A request answered later (see the module docstring).

    ``registry.detached`` holds it while it waits, so a graceful stop waits for the answer
    (and cuts the connection if it does not come within the close timeout).
    """

    __slots__ = ("_handler", "_registry", "socket", "_rfile", "_head", "_keep_alive", "_write_timeout", "_on_parked")

    def __init__(self, handler, registry: "Registry", on_parked: Callable[["Deferred"], None]):
        self._handler = handler
        self._registry = registry
        self.socket: Any = None
        self._rfile: Any = None
        self._head: list[tuple[bytes, bytes]] = []
        self._keep_alive = False
        self._write_timeout: float | None = None
        self._on_parked: Callable[[Deferred], None] | None = on_parked

    @property
    def finished(self) -> bool:
        return self._handler is None

    @property
    def parked(self) -> bool:
        """Whether the handler took the placeholder and kept the request for the answer
        (else the application's response went out as usual, and ``on_parked`` never comes)."""
        return self.socket is not None

    # -- for the handler ------------------------------------------------------------

    def park(self, handler, write_timeout: float | None) -> None:
        """The application is done with the request: keep what the answer needs and leave
        the connection open (pywsgi's loop then ends without closing it)."""
        self.socket = handler.socket
        self._rfile = handler.rfile
        self._head = [(name, value) for name, value in handler.response_headers if name.lower() not in _DECIDED]
        self._keep_alive = not handler.close_connection
        self._write_timeout = write_timeout
        self._registry.detached[self.socket] = self
        leave_open(handler)  # this greenlet reads no further request, and leaves the connection open

    def let_go(self) -> None:
        """The request's greenlet is ending (the server's ``do_close``): drop what the answer
        does not need, and hand the request to the application (``on_parked``), which may
        answer from now on: nothing of the request's greenlet touches the connection again."""
        if self._handler is not None:
            let_go(self._handler)
        on_parked, self._on_parked = self._on_parked, None
        if on_parked is not None:
            on_parked(self)

    # -- for the application --------------------------------------------------------

    def answer(
        self, status: int, body: bytes = b"", content_type: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Send the response, write its access line, then serve the connection's next
        requests in the calling greenlet (which must be one the caller can give up: it
        returns when the connection closes). Does nothing once answered or finished."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        sock, registry = self.socket, self._registry
        keep_alive = self._keep_alive and not registry.closing
        phrase = http.HTTPStatus(status).phrase
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))]
        lines += [b"%s: %s\r\n" % pair for pair in self._head]
        lines += [b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if content_type is not None:
            lines.append(b"Content-Type: %s\r\n" % content_type.encode("latin-1"))
        if status not in (204, 304):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"Date: %s\r\n" % format_date_time(time.time()))
        if handler.request_version == "HTTP/1.0":
            lines.append(b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
        elif not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        if handler.command != "HEAD" and status not in (204, 304):
            lines.append(body)
        data = b"".join(lines)
        sent = self._send(data, handler)
        registry.forget_detached(sock)
        # The access line, as the handler's own log_request would write it.
        handler.status = f"{status} {phrase}".encode("latin-1")
        handler._orig_status = f"{status} {phrase}"
        handler.code = status if sent else -status
        handler.response_headers = [pair for pair in self._head]
        handler.response_length = len(data)
        handler.time_finish = time.time()
        handler._detached = None
        handler.log_request()
        if not (sent and keep_alive):
            close_connection(sock, self._rfile)
            self._rfile = None
            return
        # Keep-alive: the connection's next request, read by a fresh handler in this greenlet.
        fresh = type(handler)(sock, handler.client_address, handler.server, self._rfile)
        fresh._requests_read = 1  # a continuing connection: on a graceful stop it reads no more
        self._rfile = None
        try:
            fresh.handle()
        finally:
            handler.server.do_close(sock)

    def finish(self) -> None:
        """Give up without an answer (a graceful stop that waited long enough): close."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        self._registry.forget_detached(self.socket)
        close_connection(self.socket, self._rfile)
        self._rfile = None

    def _send(self, data: bytes, handler) -> bool:
        """One non-blocking send; what the socket cannot take now waits, bounded by the
        write timeout. Whether everything went out."""
        sock = self.socket
        raw = getattr(sock, "_sock", sock)
        try:
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                with gevent.Timeout(self._write_timeout, False):
                    sock.sendall(memoryview(data)[sent:])
                    return True
                log.info(
                    "cut %s %s: a write blocked for %ss (the client reads nothing)",
                    handler.client_address,
                    handler.environ.get("PATH_INFO"),
                    self._write_timeout,
                )
                return False
            return True
        except OSError:
            return False
