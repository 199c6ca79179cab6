"""The pywsgi handler: plain HTTP to the application, WebSocket upgrades decided before 101.

One :class:`Handler` per connection, used by the gunicorn worker and the development
server alike. An upgrade is decided by :func:`~app.server.handshake.negotiate` with the
application's policy; after ``101`` the application runs with ``environ["wsgi.websocket"]``
and the handler completes the closing handshake when it returns.
"""

from __future__ import annotations

import errno
import http
import json
import logging
import socket
import time
from typing import Callable

import gevent
import gevent.select
from gevent.pywsgi import WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler
from gunicorn.workers.ggevent import PyWSGIHandler

from .deferred import Deferred
from .frames import CLOSE_INTERNAL_ERROR
from .handshake import WEBSOCKET_VERSION, Acceptance, Refusal, WebSocketPolicy, is_websocket_request, negotiate
from .hooks import hooks_of
from .kept import close_connection, leave_open, let_go, slim_environ
from .raw_response import ENVIRON_RAW_RESPONSE, RawResponse
from .reader import EventReader
from .registry import ENVIRON_REGISTRY, Registry
from .request_headers import parse_headers
from .websocket import ServeEvents, SocketReader, State, WebSocket

log = logging.getLogger(__name__)

ENVIRON_WEBSOCKET = "wsgi.websocket"
ENVIRON_PROTOCOL = "switchboard.ws_protocol"
#: ``environ[ENVIRON_CLIENT_GONE]()`` is true once the client has closed its end of the
#: connection: a parked request (a SockJS poll) asks it while it waits, since a WSGI server
#: notices a gone client only when it writes.
ENVIRON_CLIENT_GONE = "switchboard.client_gone"


class _SendTimedOut(Exception):
    """Raised by a gevent.Timeout around a plain HTTP write."""


class _AppStatus:
    """The ``start_response`` the application gets after 101: its status line has
    nowhere to go, but an error status (say Werkzeug's 404 for a route not declared
    with ``websocket=True``) is kept so the socket closes with a reason, not silently.
    """

    __slots__ = ("status",)

    def __init__(self):
        self.status = ""

    def __call__(self, status, headers, exc_info=None):
        self.status = status
        return self.write

    @staticmethod
    def write(data):
        return None

    @property
    def failed(self) -> bool:
        return self.status[:1] in ("4", "5")


#: Read buffer of each connection's request stream, in bytes (gevent's default is 8 KiB):
#: an idle keep-alive, SSE or WebSocket connection holds it the whole time it waits.
#: Reads larger than the buffer (big bodies, big WebSocket frames) bypass it.
READ_BUFFER = 1024


class Handler(WebSocketHandler, PyWSGIHandler):
    """gevent-websocket's handler with every decision taken before ``101``.

    Plain HTTP requests go to the application unchanged. Upgrade requests are
    decided by :func:`negotiate` with the application's policy (:func:`~app.server.hooks.hooks_of`);
    a refusal is an HTTP error with a JSON body ``{"error", "message"}``.
    """

    _requests_read = 0  # on this connection (one handler per connection)
    _detached: "Detached | Deferred | None" = None  # the response outlives this handler's greenlet
    _deferral: "Deferred | None" = None  # the application asked to answer later (RawResponse.defer)

    def MessageClass(self, *args):  # noqa: N802  (pywsgi's name)
        # The request's headers: pywsgi's parser's message, without the email package
        # for a plain header block (request_headers.py).
        return parse_headers(*args)

    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        if rfile is None:
            # The request stream with a READ_BUFFER buffer instead of the default one.
            self.rfile.close()  # type: ignore[has-type]  # releases its buffer; the socket stays open
            self.rfile = sock.makefile("rb", READ_BUFFER)

    def get_environ(self):
        environ = super().get_environ()
        environ[ENVIRON_REGISTRY] = self._registry()
        environ[ENVIRON_RAW_RESPONSE] = RawResponse(self)  # for a stream that writes its own body
        environ[ENVIRON_CLIENT_GONE] = self._client_gone
        self._requests_read += 1
        return environ

    def _client_gone(self) -> bool:
        # Readable with nothing to read is the peer's FIN; readable with bytes is a next
        # request already sent (pipelining), which is no hang-up.
        try:
            readable, _, _ = gevent.select.select([self.socket], [], [], 0)
            return bool(readable) and self.socket.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def read_requestline(self):
        registry = self._registry()
        if registry.closing:
            if self._requests_read:
                return ""  # shutting down: read no further request; the connection closes
            # A connection accepted just before the listener closed gets its one answer,
            # if its request comes promptly.
            with gevent.Timeout(1.0, False):
                return super().read_requestline()
            return ""
        registry._idle.add(self)
        try:
            return super().read_requestline()
        finally:
            registry._idle.discard(self)

    def _sendall(self, data):
        timeout = self._policy().write_timeout
        if timeout is None or getattr(self, "websocket", None) is not None:
            return super()._sendall(data)
        # Most writes go out whole at once (the socket has room): only what it cannot take
        # now waits, and only that wait needs the timer (arming one costs more than the send).
        try:
            sent = _raw(self.socket).send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return super()._sendall(data)  # fails again, and pywsgi notes it as before
        self.response_length += sent
        if sent == len(data):
            return None
        data = memoryview(data)[sent:]
        try:
            with gevent.Timeout(timeout, _SendTimedOut):
                return super()._sendall(data)
        except _SendTimedOut:
            log.info(
                "cut %s %s: a write blocked for %ss (the client reads nothing)",
                self.client_address,
                self.environ.get("PATH_INFO"),
                timeout,
            )
            try:
                self.socket.shutdown(socket.SHUT_RDWR)  # part of a chunk may be out: no way back
            except OSError:
                pass
            # EPIPE: pywsgi then closes the connection quietly; a streaming generator's
            # finally runs (an SSE stream releases its subscription).
            raise BrokenPipeError(errno.EPIPE, f"write timed out after {timeout}s") from None

    def start_response(self, status, headers, exc_info=None):
        if self._registry().closing and not str(status).startswith("101"):
            # Tell the client this connection ends after this response (RFC 9112 9.6),
            # so it opens a new one, to a worker that is not stopping, for the next request.
            headers = [(name, value) for name, value in headers if name.lower() != "connection"]
            headers.append(("Connection", "close"))
        return super().start_response(status, headers, exc_info)

    def process_result(self):
        # gevent's, except that a detached response's body goes on without us (no last
        # chunk), and a deferred one is not sent at all: only its placeholder's headers are kept.
        deferral, self._deferral = self._deferral, None
        if deferral is not None and self.code == 204 and not self.headers_sent:
            self._detached = deferral
            deferral.park(self, self._policy().write_timeout)
            return
        for data in self.result:
            if data:
                self.write(data)
        if self._detached is not None:
            return
        if self.status and not self.headers_sent:
            self.write(b"")
        if self.response_use_chunked:
            self._sendall(b"0\r\n\r\n")

    def detach(self) -> "Detached":
        """Let the response outlive this request's greenlet (see :meth:`RawResponse.detach`)."""
        if not self.headers_sent or self._detached is not None:
            raise RuntimeError("detach() needs a response whose headers are out, once")
        registry = self._registry()
        detached = self._detached = Detached(self, registry, self.socket)
        registry.detached[self.socket] = detached
        leave_open(self)
        return detached

    def defer(self, on_parked: Callable[["Deferred"], None]) -> "Deferred | None":
        """Answer this request later (see :meth:`RawResponse.defer`); ``None`` under a
        server that is not :class:`Server` (it would close the connection)."""
        if not isinstance(self.server, Server):
            return None
        if self.headers_sent or self._deferral is not None or self._detached is not None:
            raise RuntimeError("defer() needs a request whose response has not started, once")
        self._deferral = Deferred(self, self._registry(), on_parked)
        return self._deferral

    def _finish_detached(self, sock) -> None:
        if self.response_use_chunked:
            try:
                _raw(sock).send(b"0\r\n\r\n")  # the last chunk; the socket's buffer is empty by now
            except OSError:
                pass
        close_connection(sock)
        self.time_finish = time.time()
        self._detached = None
        self.log_request()

    def _registry(self) -> Registry:
        registry = getattr(self.server, "ws_registry", None)
        if registry is None:  # a plain gevent WSGIServer: give it one
            registry = self.server.ws_registry = Registry()
        return registry

    def _policy(self) -> WebSocketPolicy:
        return hooks_of(self.application).policy

    def run_application(self):
        if not is_websocket_request(self.environ):
            return WSGIHandler.run_application(self)
        registry = self._registry()
        policy = self._policy()
        if registry.closing:
            decision: Acceptance | Refusal = Refusal(
                503, "shutting_down", "the server is shutting down; reconnect shortly", (("Retry-After", "1"),)
            )
        else:
            decision = negotiate(self.environ, policy)
        if isinstance(decision, Refusal):
            return self._refuse(decision)
        release = None
        if policy.admit is not None:
            admitted = policy.admit(self.environ)
            if isinstance(admitted, Refusal):
                return self._refuse(admitted)
            release = admitted
        try:
            return self._accept(decision, policy, registry)
        finally:
            if release is not None:
                release()

    def _refuse(self, refusal: Refusal) -> None:
        log.info("WebSocket refused %s %s: %s", refusal.status, self.environ.get("PATH_INFO"), refusal.message)
        body = json.dumps({"error": refusal.error, "message": refusal.message}).encode("utf-8")
        # A refused upgrade ends the connection: the client may have meant to speak
        # WebSocket right after its request.
        self.close_connection = True
        upgrade = refusal.status == 426
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "Upgrade, close" if upgrade else "close"),
            *refusal.headers,
        ]
        self.start_response(f"{refusal.status} {http.HTTPStatus(refusal.status).phrase}", headers)
        self.result = [body]
        try:
            self.process_result()
        finally:
            self.result = None  # type: ignore[assignment]

    def _accept(self, acceptance: Acceptance, policy: WebSocketPolicy, registry: Registry) -> None:
        ws = WebSocket(
            self.environ,
            self,
            subprotocol=acceptance.subprotocol,
            max_message_bytes=policy.max_message_bytes,
            close_timeout=policy.close_timeout,
        )
        self.websocket = ws
        self.environ.update(
            {
                ENVIRON_WEBSOCKET: ws,
                "wsgi.websocket_version": WEBSOCKET_VERSION,
                ENVIRON_PROTOCOL: acceptance.subprotocol,
            }
        )
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", acceptance.accept)]
        if acceptance.subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", acceptance.subprotocol))
        self.start_response("101 Switching Protocols", headers)
        self.write(b"")  # sends the 101 now
        self._run_websocket(ws, policy, registry)

    def _run_websocket(self, ws: WebSocket, policy: WebSocketPolicy, registry: Registry) -> None:
        registry.add(ws, policy.ping_interval, policy.ping_timeout)
        handed_over = False
        try:
            app_status = _AppStatus()
            try:
                result = self.application(self.environ, app_status)
                try:
                    for _ in result:
                        pass
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
            except Exception:
                log.error("WebSocket application failed on %s", ws.path, exc_info=True)
                ws.close(CLOSE_INTERNAL_ERROR, "internal error")
            else:
                if app_status.failed and ws.state is State.OPEN:
                    log.warning("WebSocket application answered %r on %s", app_status.status, ws.path)
                    ws.close(CLOSE_INTERNAL_ERROR, f"application answered {app_status.status}")
            serve = ws.take_serve()
            if serve is not None:
                self._hand_over(ws, serve, policy, registry)
                handed_over = True
                return
            ws.finish(policy.close_timeout)
        finally:
            if not handed_over:
                if ws.state is not State.CLOSED:
                    ws.abort()
                registry.discard(ws)
                self.environ[ENVIRON_WEBSOCKET] = None  # break the environ <-> websocket cycle
                self.websocket = None  # type: ignore[assignment]

    def _hand_over(self, ws: WebSocket, serve, policy: WebSocketPolicy, registry: Registry):
        """Let this greenlet end and the connection be read without the request's framework
        context (and what it held): by a fresh greenlet running the application's ``serve``,
        or by callbacks (:class:`~app.server.reader.EventReader`: no greenlet while idle)."""
        sock = self.socket
        detached = self._detached = Detached(self, registry, sock)
        registry.detached[sock] = detached
        ws.read_with(SocketReader(sock, _buffered(self.rfile, sock)))
        leave_open(self)
        ws.environ = slim_environ(self)  # what ws.path and the access log read

        def done() -> None:
            registry.discard(ws)
            detached.finish()

        if isinstance(serve, ServeEvents):
            EventReader(ws, serve.on_message, serve.on_end, policy.close_timeout, done).start()
        else:
            gevent.spawn(_serve_websocket, ws, serve, policy.close_timeout, done)

    def log_request(self):
        if self._detached is not None:
            return  # logged when the detached response ends (Detached.finish)
        # gunicorn's access log when gunicorn runs us, gevent's format otherwise.
        # Unlike gevent-websocket we also log 101s: the line then shows the session length.
        server_log = self.server.log
        if hasattr(server_log, "access"):
            if getattr(server_log, "access_log_enabled", True):  # else nothing to build the line for
                PyWSGIHandler.log_request(self)
        else:
            WSGIHandler.log_request(self)


class Detached:
    """A streaming response that outlives its request's greenlet (:meth:`RawResponse.detach`).

    The application writes its body to :attr:`socket` and calls :meth:`finish` when it
    ends; until then the connection is counted in the registry (a graceful stop waits for it).
    """

    __slots__ = ("_handler", "_registry", "socket")

    def __init__(self, handler: Handler, registry: Registry, sock):
        self._handler: Handler | None = handler
        self._registry = registry
        self.socket = sock

    @property
    def finished(self) -> bool:
        return self._handler is None

    def let_go(self) -> None:
        """The request's greenlet has ended: drop what the response's end does not need."""
        if self._handler is not None:
            let_go(self._handler)

    def finish(self) -> None:
        """End the body (its last chunk), close the connection, write the access log line.

        Call it once the application's own writes are out (or the client is gone). Idempotent.
        """
        handler, self._handler = self._handler, None
        if handler is None:
            return
        try:
            handler._finish_detached(self.socket)
        finally:
            self._registry.forget_detached(self.socket)


def _serve_websocket(ws: WebSocket, serve: Callable[[], None], close_timeout: float, done: Callable[[], None]):
    """A handed-over WebSocket's reader: the application's ``serve``, then the closing
    handshake, and ``done`` (the close and the access log line)."""
    try:
        try:
            serve()
        except Exception:
            log.error("WebSocket application failed on %s", ws.path, exc_info=True)
            ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        ws.finish(close_timeout)
    finally:
        if ws.state is not State.CLOSED:
            ws.abort()
        done()


def _buffered(rfile, sock) -> bytes:
    """What the handler's buffered request stream holds beyond the request (a client's
    first frames sent with its handshake), read without waiting; the stream is spent."""
    try:
        sock.settimeout(0.0)  # a read that would wait raises instead (none comes if it holds some)
        try:
            held = rfile.peek(READ_BUFFER)
        finally:
            sock.settimeout(None)
        return rfile.read(len(held)) if held else b""
    except (OSError, ValueError):
        return b""


def _raw(sock):
    return getattr(sock, "_sock", sock)  # gevent's real, non-blocking socket (see outbox.py)


class Server(WSGIServer):
    """gevent's WSGI server with a :class:`Registry` of its open WebSockets."""

    handler_class = Handler

    def __init__(self, *args, ws_registry: Registry | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_registry = ws_registry if ws_registry is not None else Registry()

    def do_close(self, sock, *args):
        # A detached response's connection outlives the greenlet that accepted it.
        detached = self.ws_registry.detached.get(sock)
        if detached is None:
            super().do_close(sock, *args)
        else:
            detached.let_go()
