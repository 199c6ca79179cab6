"""The only module that touches gevent-websocket: handshake policy, the WebSocket the
application receives, keepalive, the gunicorn worker class and the development server.

gevent-websocket sends ``101 Switching Protocols`` before the WSGI application runs, so
everything that can refuse a WebSocket happens here, in :class:`Handler`, with a real
HTTP status and a JSON body: unknown path (404), malformed handshake (400, 405, 426),
foreign ``Origin`` (403), no common sub-protocol (400), shutting down (503).

How the application uses it:

* ``create_app`` sets ``app.switchboard_ws_policy = WebSocketPolicy(...)``; the handler
  reads it with ``getattr(application, "switchboard_ws_policy", DEFAULT_POLICY)``
  (the default policy lists no path, so it accepts no WebSocket at all).
* After the 101, the WSGI application runs with ``environ["wsgi.websocket"]`` (a
  :class:`WebSocket`), ``environ["switchboard.ws_protocol"]`` (the negotiated
  sub-protocol or ``None``) and ``environ["wsgi.websocket_version"]`` (``"13"``).
  It loops on ``ws.receive()`` until it returns ``None``; any greenlet may call
  ``ws.send()``. When the application returns, the handler completes the closing
  handshake: code 1000, or 1011 if the application raised or answered an HTTP error
  status (say a route not declared with ``websocket=True``) without closing the socket.
  gevent-websocket's ``app_protocol(path)`` hook is not consulted: the policy replaces it.
* Every request's environ carries ``environ["switchboard.ws_registry"]``, the
  process's :class:`Registry`; ``open_websockets(environ)`` is its count, for metrics.
* ``policy.admit(environ)``, if set, is asked last before ``101``: it returns a
  :class:`Refusal` (sent as is, e.g. 503 when the worker is full) or a callable run
  once the WebSocket has ended (to release what admission took).
* gunicorn: ``worker_class = "app.transports.wsio.Worker"``. On SIGTERM the worker
  (see :func:`graceful_shutdown`): refuses new upgrades (503) and closes idle
  keep-alive connections; calls the application's ``switchboard_shutdown(timeout)``
  if it has one, so each transport ends its streams its own way (SSE, long polls,
  STOMP ERROR frames); then sends 1001 to every WebSocket still open and waits
  (bounded) for the closing handshakes while gunicorn drains its pool. Responses
  written meanwhile carry ``Connection: close``.
* ``python wsgi.py``: :func:`serve_dev` runs the same handler on gevent's WSGI server.
"""

from __future__ import annotations

import base64
import binascii
import enum
import errno
import hashlib
import http
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
import gevent.select
from gevent.pywsgi import WSGIHandler, WSGIServer
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Stream
from geventwebsocket.websocket import WebSocket as _StockWebSocket
from gunicorn.workers.ggevent import PyWSGIHandler

from ..server.outbox import Outbox
from ..server.raw_response import ENVIRON_RAW_RESPONSE, RawResponse
from ._wsframes import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_MANDATORY_EXTENSION,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionLost,
    FrameError,
    MessageAssembler,
    close_payload,
    encode_frame,
    parse_close,
    read_frame,
)

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_DATA",
    "CLOSE_KEEPALIVE_TIMEOUT",
    "CLOSE_MANDATORY_EXTENSION",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NO_STATUS",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_POLICY",
    "ENVIRON_PROTOCOL",
    "ENVIRON_REGISTRY",
    "ENVIRON_WEBSOCKET",
    "Acceptance",
    "ConnectionClosed",
    "Handler",
    "Refusal",
    "Registry",
    "Server",
    "State",
    "WebSocket",
    "WebSocketError",
    "WebSocketPolicy",
    "Worker",
    "graceful_shutdown",
    "is_websocket_request",
    "negotiate",
    "open_websockets",
    "origin_allowed",
    "serve_dev",
]

log = logging.getLogger(__name__)

CLOSE_KEEPALIVE_TIMEOUT = CLOSE_INTERNAL_ERROR
"""Sent to a peer that answered no ping within ``ping_timeout``.

1011 ("unexpected condition that prevented it from fulfilling the request") with the
reason "keepalive ping timeout", as the websockets library does. The alternatives fit
worse: 1001 says *we* are going away; 1002 would accuse the peer of breaking the
protocol, when a silent peer is usually a dead network path; 1008 is about the content
of a message. The peer rarely sees this frame anyway: the code is for the logs.
"""

ENVIRON_WEBSOCKET = "wsgi.websocket"
ENVIRON_PROTOCOL = "switchboard.ws_protocol"
ENVIRON_REGISTRY = "switchboard.ws_registry"

WEBSOCKET_VERSION = "13"
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
#: Bytes an application's send may leave unsent before it waits for the peer to read
#: (the high-water mark of asyncio's transports, websockets' write limit).
HIGH_WATER = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class WebSocketPolicy:
    """What the handler accepts before sending ``101``.

    Attributes:
        allowed_origins: origins allowed besides the request's own host, like
            ``"https://example.com"`` (scheme, host and port must match; ``"*"`` allows
            any, ``"null"`` allows the opaque origin of sandboxed pages). A request
            without ``Origin`` (a non-browser client) is always allowed.
        protocols: path -> the sub-protocols the server speaks there, in preference
            order. A path with ``()`` takes WebSockets without a sub-protocol; a path
            that is absent takes no WebSocket (404). Paths match ``PATH_INFO`` exactly.
        max_message_bytes: the largest frame or reassembled message accepted; a
            bigger one is refused with 1009 from its header, before its payload is read.
        ping_interval: seconds between server pings; 0 turns keepalive off.
        ping_timeout: seconds a peer has, after a ping, to send anything (a pong or
            data) before it is closed with 1011 "keepalive ping timeout".
        close_timeout: seconds to wait for the peer's half of a closing handshake
            before the TCP connection is closed anyway.
        trust_forwarded: use ``X-Forwarded-Host`` / ``X-Forwarded-Proto`` (the value set
            by the nearest proxy) for the same-host check. Set it behind nginx only:
            anyone can send these headers straight to gunicorn.
        admit: ``admit(environ)``, asked after every other check passed: a
            :class:`Refusal` to send instead of ``101`` (a connection limit), or a
            callable to run once the accepted WebSocket has ended. ``None`` admits all.
        write_timeout: seconds one write of a plain HTTP response (an SSE stream's
            chunk, say) may block before the connection is cut: a client that reads
            nothing would otherwise hold its greenlet, socket and subscription for
            ever, and keep a graceful stop waiting. ``None`` = no limit. (WebSockets
            have keepalive for that: a ping that cannot be written is a cut.)
    """

    allowed_origins: tuple[str, ...] = ()
    protocols: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_message_bytes: int = 1024 * 1024
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    trust_forwarded: bool = False
    admit: Callable[[Mapping], "Refusal | Callable[[], None]"] | None = None
    write_timeout: float | None = None

    def __post_init__(self):
        if isinstance(self.allowed_origins, str):
            raise TypeError("allowed_origins must be a tuple of origins, not one string")
        origins = tuple(origin.strip().rstrip("/") for origin in self.allowed_origins)
        for origin in origins:
            if origin not in ("*", "null") and _split_origin(origin) is None:
                raise ValueError(f"{origin!r} is not an origin like https://example.com[:port]")
        protocols = {}
        for path, offered in dict(self.protocols).items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"protocol paths start with '/': {path!r}")
            if isinstance(offered, str):
                raise TypeError(f"protocols[{path!r}] must be a tuple of names, not one string")
            protocols[path] = tuple(offered)
        if self.max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        if self.ping_interval < 0 or self.ping_timeout <= 0 or self.close_timeout <= 0:
            raise ValueError("ping_interval must be >= 0; ping_timeout and close_timeout > 0")
        if self.write_timeout is not None and self.write_timeout <= 0:
            raise ValueError("write_timeout must be > 0 or None")
        object.__setattr__(self, "allowed_origins", origins)
        object.__setattr__(self, "protocols", MappingProxyType(protocols))


DEFAULT_POLICY = WebSocketPolicy()
"""Used when the application carries no ``switchboard_ws_policy``: no WebSocket anywhere."""


# ------------------------------------------------------------------------ handshake


@dataclass(frozen=True)
class Refusal:
    """An upgrade request answered with an HTTP error instead of ``101``."""

    status: int
    error: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Acceptance:
    """An upgrade request that gets ``101``: the accept token and the chosen sub-protocol."""

    accept: str
    subprotocol: str | None


def _tokens(value: str) -> list[str]:
    """A comma-separated header value as a list of its non-empty, trimmed items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def is_websocket_request(environ) -> bool:
    """Whether the request asks for a WebSocket (``Upgrade`` lists ``websocket``)."""
    return any(token.lower() == "websocket" for token in _tokens(environ.get("HTTP_UPGRADE", "")))


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialized origin, or ``None`` if it is not one."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _split_host(host: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``Host`` header value, defaulting the port from ``scheme``."""
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS.get(scheme, 80)


def _request_host(environ, policy: WebSocketPolicy) -> tuple[str, int] | None:
    host = environ.get("HTTP_HOST", "")
    scheme = environ.get("wsgi.url_scheme", "http")
    if policy.trust_forwarded:
        # The nearest proxy's value is the last one (as Werkzeug's ProxyFix with one hop).
        forwarded_host = _tokens(environ.get("HTTP_X_FORWARDED_HOST", ""))
        forwarded_proto = _tokens(environ.get("HTTP_X_FORWARDED_PROTO", ""))
        if forwarded_host:
            host = forwarded_host[-1]
        if forwarded_proto:
            scheme = forwarded_proto[-1].lower()
    return _split_host(host, scheme) if host else None


def origin_allowed(environ, policy: WebSocketPolicy) -> bool:
    """Whether the request's ``Origin`` may open a WebSocket here.

    Allowed: no ``Origin`` (not a browser); the request's own host and port (scheme
    aside: an http page may open wss on the same host; ports 80 and 443 count as the
    same, so a TLS-terminating proxy that forwards no port still matches); any origin
    listed in ``policy.allowed_origins``. This is what stops cross-site WebSocket
    hijacking: a page elsewhere cannot use the visitor's cookies on our socket.
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    origin = origin.strip()
    allowed = policy.allowed_origins
    if "*" in allowed:
        return True
    if origin == "null":
        return "null" in allowed
    parts = _split_origin(origin)
    if parts is None:
        return False
    scheme, host, port = parts
    own = _request_host(environ, policy)
    if own is not None and own[0] == host and (own[1] == port or {own[1], port} <= {80, 443}):
        return True
    return any(_split_origin(item) == parts for item in allowed if item not in ("*", "null"))


def _accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _ACCEPT_GUID).digest()).decode("ascii")


def negotiate(environ, policy: WebSocketPolicy) -> Acceptance | Refusal:
    """Decide an upgrade request (RFC 6455 section 4.2) before anything is sent.

    The checks run in this order, so the answer names the first problem: path (404),
    method (405), HTTP version and ``Connection`` (400), ``Sec-WebSocket-Version``
    (426 with ``Sec-WebSocket-Version: 13``), ``Host`` and ``Sec-WebSocket-Key`` (400),
    ``Origin`` (403), sub-protocol (400).

    Sub-protocols: the first of the path's list (server preference: for STOMP the
    highest version) that the client offered. If the client offered some and none
    matches, the answer is 400, not a 101 without a sub-protocol: RFC 6455 allows the
    latter, but browsers then fail the connection anyway with a vaguer error. A
    client that offers none is accepted without one, on any listed path.

    Args:
        environ: the WSGI environ of a request for which ``is_websocket_request`` is true.
        policy: the application's policy.

    Returns:
        An :class:`Acceptance` or a :class:`Refusal`.
    """
    path = environ.get("PATH_INFO", "")
    if path not in policy.protocols:
        return Refusal(404, "not_found", f"no WebSocket endpoint at {path}")
    if environ.get("REQUEST_METHOD") != "GET":
        return Refusal(405, "method_not_allowed", "a WebSocket handshake is a GET request", (("Allow", "GET"),))
    if environ.get("SERVER_PROTOCOL", "") not in ("HTTP/1.1",):
        return Refusal(400, "bad_request", "a WebSocket handshake needs HTTP/1.1")
    if not any(token.lower() == "upgrade" for token in _tokens(environ.get("HTTP_CONNECTION", ""))):
        return Refusal(400, "bad_request", "the Connection header must list 'upgrade'")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != WEBSOCKET_VERSION:
        # RFC 6455 4.4: answer with the versions we speak. RFC 9110 15.5.22: a 426 names
        # the protocol to upgrade to.
        return Refusal(
            426,
            "upgrade_required",
            "only WebSocket version 13 (RFC 6455) is supported",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION), ("Upgrade", "websocket")),
        )
    if not environ.get("HTTP_HOST"):
        return Refusal(400, "bad_request", "the Host header is missing")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        key_ok = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        key_ok = False
    if not key_ok:
        return Refusal(400, "bad_request", "Sec-WebSocket-Key must be 16 bytes in base64")
    if not origin_allowed(environ, policy):
        return Refusal(403, "forbidden_origin", "this origin may not open a WebSocket here")
    offered = _tokens(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", ""))
    chosen = None
    if offered:
        chosen = next((name for name in policy.protocols[path] if name in offered), None)
        if chosen is None:
            spoken = ", ".join(policy.protocols[path]) or "none"
            return Refusal(
                400,
                "unsupported_subprotocol",
                f"no offered sub-protocol is spoken at {path} (spoken: {spoken})",
            )
    return Acceptance(_accept_token(key), chosen)


# ------------------------------------------------------------------------ websocket


class ConnectionClosed(WebSocketError):
    """Sending on a WebSocket that is closing or closed."""


class _SendTimedOut(Exception):
    """Raised by a gevent.Timeout inside ``WebSocket._write``."""


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # we sent a Close frame and wait for the peer's
    CLOSED = "closed"  # both Close frames went through, or the connection is gone


class WebSocket(_StockWebSocket):
    """One server-side WebSocket connection, as ``environ["wsgi.websocket"]``.

    Compatible with gevent-websocket's ``receive()``, ``send()``, ``close()`` and
    ``closed``, with these differences:

    * ``receive()`` returns ``None`` once the connection is closing or closed (it never
      raises for that), after completing the closing handshake itself when the peer
      started it or broke the protocol. Only one greenlet may call it at a time.
    * ``send()``, :meth:`send_encoded` and :meth:`ping` may be called from several
      greenlets at once (frames never interleave); they raise
      :class:`ConnectionClosed` (a ``WebSocketError``) once the connection is closing.
    * ``close()`` returns at once; the peer's answer is read by whoever is in
      ``receive()`` (or by the handler after the application returns) and the TCP
      connection is cut after ``close_timeout`` if it never comes.

    Attributes:
        subprotocol: the negotiated sub-protocol, or ``None`` (also as ``protocol``).
        close_code: after closing, the code that ended the connection: the peer's if
            it closed first, ours if we did, 1006 if it was lost without a Close frame.
        close_reason: the reason that went with ``close_code``.
        last_received: ``time.monotonic()`` when the last frame arrived.
    """

    __slots__ = (
        "subprotocol",
        "max_message_bytes",
        "close_timeout",
        "close_code",
        "close_reason",
        "last_received",
        "_state",
        "_sock",
        "_read",
        "outbox",
        "ping_interval",
        "ping_timeout",
        "_ping_due",
        "_ping_sent",
        "_pings",
        "_assembler",
        "_closed_event",
        "_reader",
        "_watchdog",
        "_linger",
    )

    def __init__(self, environ, handler, *, subprotocol=None, max_message_bytes=1024 * 1024, close_timeout=5.0):
        super().__init__(environ, Stream(handler), handler)
        self.subprotocol = subprotocol
        self.max_message_bytes = max_message_bytes
        self.close_timeout = close_timeout
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_received = time.monotonic()
        self._state = State.OPEN
        self._sock = handler.socket
        self._read = handler.rfile.read
        # Every frame leaves through the outbox, in the order written, without waiting:
        # replies, pings, Close frames, and the delivery layer's event frames.
        self.outbox = Outbox(self._sock, f"WebSocket {self.path}")
        self.outbox.on_lost.append(self._outbox_lost)
        self.ping_interval = 0.0  # keepalive, run by the registry's one timer (see Registry)
        self.ping_timeout = 0.0
        self._ping_due = 0.0
        self._ping_sent: float | None = None
        self._pings = 0
        self._assembler = MessageAssembler(max_message_bytes)
        self._closed_event = gevent.event.Event()
        self._reader = None
        self._watchdog = None
        self._linger = False  # we failed the connection: the peer may still be sending

    def __del__(self):
        # The stock class sends a Close frame from __del__, i.e. from whatever greenlet
        # the garbage collector runs in. The handler always closes us explicitly instead.
        pass

    # -- reading ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def protocol(self):
        """The negotiated sub-protocol (the stock property returned the client's offer)."""
        return self.subprotocol

    def receive(self):
        """The next message: ``str`` (text), ``bytes`` (binary), or ``None`` once closed.

        Pings are answered and pongs noted on the way. A protocol violation closes the
        connection with the matching code (1002, 1007, 1009) and returns ``None``.
        """
        if self._state is State.CLOSED:
            return None
        self._reader = gevent.getcurrent()
        try:
            return self._receive()
        finally:
            self._reader = None

    def _receive(self):
        read = self._read
        assembler = self._assembler
        try:
            while True:
                opcode, fin, payload = frame = read_frame(read, assembler.room)
                self.last_received = time.monotonic()
                if opcode == OP_PING:
                    if self._state is State.OPEN:  # RFC 6455 5.5.2, not after our Close
                        self._send_control(OP_PONG, payload)
                elif opcode == OP_PONG:
                    pass  # last_received is all the keepalive needs
                elif opcode == OP_CLOSE:
                    self._on_close_frame(payload)
                    return None
                elif self._state is State.OPEN:
                    message = assembler.feed(frame)
                    if message is not None:
                        return message
                # else: data after our Close frame is read and dropped (RFC 6455 1.4).
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
        except (ConnectionLost, OSError, ValueError):
            # ValueError: the handler closed the file under us. All three: no Close frame.
            self._mark_closed(CLOSE_ABNORMAL, "connection lost")
        return None

    def _on_close_frame(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        if self._state is State.OPEN:
            # RFC 6455 5.5.1: answer with a Close frame, echoing the peer's code.
            self._state = State.CLOSING
            self.closed = True
            try:
                reply = close_payload(None if code == CLOSE_NO_STATUS else code)
                self._write(encode_frame(OP_CLOSE, reply), self.close_timeout, closing=True)
            except WebSocketError:
                pass
            self._mark_closed(code, reason)
        else:  # the peer answered our Close frame: the handshake is complete
            self._mark_closed(self.close_code, self.close_reason)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send our Close frame, read no more."""
        if self._state is State.OPEN:
            self._state = State.CLOSING
            self.closed = True
            try:
                self._write(encode_frame(OP_CLOSE, close_payload(code, reason)), self.close_timeout, closing=True)
            except WebSocketError:
                pass
        log.info("WebSocket %s failed: %s %s", self.path, code, reason)
        self._linger = True
        self._mark_closed(code, reason)

    def _mark_closed(self, code, reason) -> None:
        if self._state is not State.CLOSED:
            self._state = State.CLOSED
            self.closed = True
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            self._closed_event.set()
            if self._watchdog is not None:
                self._watchdog.kill(block=False)
                self._watchdog = None

    # -- writing ------------------------------------------------------------------

    def _write(self, data: bytes, timeout: float | None = None, *, closing: bool = False, wait: bool = True) -> None:
        """Queue ``data`` (whole frames) on the outbox, after everything written before.

        The bytes leave at once if the socket takes them, else the outbox's writer sends
        them. An application's send then waits (this greenlet only) while the backlog is
        above :data:`HIGH_WATER`, so a peer that reads slowly slows its senders down
        instead of growing the buffer; ``timeout`` bounds that wait. A Close frame and
        keepalive pings never wait.

        Args:
            data: whole frames.
            timeout: seconds to wait for the backlog to drain below the high-water mark;
                ``None`` waits as long as it takes.
            closing: ``data`` is our Close frame (or the answer to the peer's), which is
                written in the CLOSING state and seals the outbox (no frame after it);
                anything else is written only while OPEN.
            wait: whether to wait above the high-water mark (not for control frames).

        Raises:
            WebSocketError: the backlog did not drain within ``timeout`` (the frame is queued).
            ConnectionClosed: the connection is not open (nothing was sent: RFC 6455
                5.5.1, no data frame after a Close frame), or the socket failed.
        """
        if not closing and self._state is not State.OPEN:
            raise ConnectionClosed("WebSocket is closed")
        outbox = self.outbox
        if outbox.lost:
            self._mark_closed(CLOSE_ABNORMAL, "connection lost")
            raise ConnectionClosed("socket is dead")
        if closing:
            outbox.write([data], last=True)
            outbox.seal()
            return
        outbox.write([data])
        if not wait or outbox.backlog <= HIGH_WATER:
            return
        if not outbox.wait_drained(timeout):
            raise WebSocketError("timed out waiting to send: the peer reads too slowly")
        if outbox.lost:
            raise ConnectionClosed("socket is dead")

    def _outbox_lost(self) -> None:
        self._mark_closed(CLOSE_ABNORMAL, "connection lost")

    def _cut(self) -> None:
        """End the TCP connection now; wakes greenlets blocked reading or writing it."""
        self._mark_closed(CLOSE_ABNORMAL, "connection cut")
        self.outbox.cut()

    def _send_data(self, opcode: int, payload) -> None:
        if self._state is not State.OPEN:
            raise ConnectionClosed("WebSocket is closed")
        self._write(encode_frame(opcode, payload))

    def _send_control(self, opcode: int, payload: bytes) -> None:
        try:
            self._write(encode_frame(opcode, payload), wait=False)
        except WebSocketError:
            pass  # the reader notices the dead connection next

    def send(self, message, binary=None):
        """Send ``message``: a ``str`` as text, bytes-like as binary (or as ``binary`` says)."""
        if binary is None:
            binary = not isinstance(message, str)
        payload = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        self._send_data(OP_BINARY if binary else OP_TEXT, payload)

    def send_encoded(self, payload: bytes, binary: bool = False) -> None:
        """Send bytes that are already encoded, as a text message unless ``binary``.

        For fan-out: encode an event once, send the same bytes to many sockets. For a
        text message the caller guarantees ``payload`` is UTF-8; it is not checked.
        """
        self._send_data(OP_BINARY if binary else OP_TEXT, payload)

    def send_many(self, payloads, binary: bool = False) -> None:
        """Send several already-encoded messages with one lock and one ``sendall``.

        For a fan-out writer that woke up to a backlog: the frames go out back to back,
        nothing interleaves with them, and the kernel sees one write instead of one per
        message. Like :meth:`send_encoded`, text payloads are not checked for UTF-8.

        Raises:
            ConnectionClosed: as :meth:`send`; then none of them was sent, or the
                connection is cut.
        """
        if self._state is not State.OPEN:
            raise ConnectionClosed("WebSocket is closed")
        opcode = OP_BINARY if binary else OP_TEXT
        data = b"".join([encode_frame(opcode, payload) for payload in payloads])
        if data:
            self._write(data)

    def send_frame(self, message, opcode):
        """gevent-websocket's low-level send, kept for compatibility."""
        if opcode == OP_CLOSE:
            self.close()
        elif opcode in (OP_PING, OP_PONG):
            self._send_data(opcode, message.encode("utf-8") if isinstance(message, str) else bytes(message))
        else:
            self.send(message, binary=opcode == OP_BINARY)

    def ping(self, payload: bytes = b"", timeout: float | None = None) -> None:
        """Send a Ping frame (at most 125 bytes); the peer must answer with a Pong.

        ``timeout`` bounds the send as for ``_write``.
        """
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload has at most 125 bytes")
        if self._state is not State.OPEN:
            raise ConnectionClosed("WebSocket is closed")
        self._write(encode_frame(OP_PING, bytes(payload)), timeout, wait=False)

    # -- closing ------------------------------------------------------------------

    def close(self, code=CLOSE_NORMAL, message=""):
        """Start the closing handshake with ``code`` and a reason; return at once.

        Does nothing if the connection is already closing or closed.
        """
        if self._state is not State.OPEN:
            return
        reason = message.decode("utf-8", "replace") if isinstance(message, (bytes, bytearray)) else str(message or "")
        self._state = State.CLOSING
        self.closed = True
        self.close_code, self.close_reason = code, reason
        try:
            self._write(encode_frame(OP_CLOSE, close_payload(code, reason)), self.close_timeout, closing=True)
        except WebSocketError:
            self.abort()
            return
        if self._state is State.CLOSING:
            self._watchdog = gevent.spawn_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._watchdog = None
        if self._state is State.CLOSING:
            log.info("WebSocket %s: no Close frame from the peer in %ss", self.path, self.close_timeout)
            self.abort()

    def abort(self, code: int | None = None, reason: str = "") -> None:
        """Cut the TCP connection now, after a best-effort Close frame if ``code`` is given.

        Wakes a greenlet blocked in ``receive()`` (it returns ``None``) and one blocked
        in ``send()`` (it raises).
        """
        if code is not None and self._state is State.OPEN:
            self._state = State.CLOSING
            self.closed = True
            self.close_code, self.close_reason = code, reason
            try:
                # Bounded: the peer we give up on may not be reading at all.
                self._write(encode_frame(OP_CLOSE, close_payload(code, reason)), min(1.0, self.close_timeout),
                            closing=True)
            except WebSocketError:
                pass
        self._cut()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection is closed; whether it is."""
        return self._closed_event.wait(timeout)

    def finish(self, timeout: float) -> None:
        """Complete the closing handshake and let the TCP connection end cleanly.

        Called by the handler after the application returned. Waits (at most
        ``timeout``) for the peer's Close frame if ours is unanswered. After a clean
        handshake the handler closes the TCP connection at once (RFC 6455 7.1.1: the
        server closes it first). After we *failed* the connection (1002, 1007, 1009)
        the peer may still be sending, and closing a socket with unread input sends a
        reset that can destroy our Close frame in flight; so we half-close and discard
        what arrives until the peer closes too, for at most ``timeout``.
        """
        if self._state is State.OPEN:
            self.close(CLOSE_NORMAL)
        with gevent.Timeout(timeout, False):
            if self._state is State.CLOSING:
                if self._reader is None:
                    self._receive()
                else:  # another greenlet is still in receive(): it reads the answer
                    self._closed_event.wait()
            # Our last frames (the Close frame, say) leave before the TCP connection ends.
            self.outbox.wait_drained()
            if self._linger and self._reader is None:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                    while self._sock.recv(65536):
                        pass
                except OSError:
                    pass
        if self._state is not State.CLOSED:
            self.abort()


# ------------------------------------------------------------------------- registry


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
            ws._ping_due = time.monotonic() + ping_interval
            self._tick = min(self._tick, max(0.02, min(ping_interval, ping_timeout) / 4))
            if self._keepalive is None:
                self._keepalive = gevent.spawn(self._keep_alive)

    def discard(self, ws: WebSocket) -> None:
        self._open.discard(ws)

    def _keep_alive(self) -> None:
        """The keepalive timer: runs for the life of the process."""
        while True:
            gevent.sleep(self._tick)
            now = time.monotonic()
            for ws in list(self._open):
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

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down", timeout: float = 5.0) -> int:
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


# -------------------------------------------------------------------------- handler


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


#: Read buffer of each connection's request stream, in bytes (gevent's default is 8 KiB):
#: an idle keep-alive, SSE or WebSocket connection holds it the whole time it waits.
#: Reads larger than the buffer (big bodies, big WebSocket frames) bypass it.
READ_BUFFER = 1024


class Handler(WebSocketHandler, PyWSGIHandler):
    """gevent-websocket's handler with every decision taken before ``101``.

    Plain HTTP requests go to the application unchanged. Upgrade requests are
    decided by :func:`negotiate` with the application's ``switchboard_ws_policy``;
    a refusal is an HTTP error with a JSON body ``{"error", "message"}``.
    """

    _requests_read = 0  # on this connection (one handler per connection)

    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        if rfile is None:
            # The request stream with a READ_BUFFER buffer instead of the default one.
            self.rfile.close()  # releases its buffer; the socket stays open
            self.rfile = sock.makefile("rb", READ_BUFFER)

    def get_environ(self):
        environ = super().get_environ()
        environ[ENVIRON_REGISTRY] = self._registry()
        environ[ENVIRON_RAW_RESPONSE] = RawResponse(self)  # for a stream that writes its own body
        self._requests_read += 1
        return environ

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
        try:
            with gevent.Timeout(timeout, _SendTimedOut):
                return super()._sendall(data)
        except _SendTimedOut:
            log.info("cut %s %s: a write blocked for %ss (the client reads nothing)",
                     self.client_address, self.environ.get("PATH_INFO"), timeout)
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

    def _registry(self) -> Registry:
        registry = getattr(self.server, "ws_registry", None)
        if registry is None:  # a plain gevent WSGIServer: give it one
            registry = self.server.ws_registry = Registry()
        return registry

    def _policy(self) -> WebSocketPolicy:
        return getattr(self.application, "switchboard_ws_policy", DEFAULT_POLICY)

    def run_application(self):
        if not is_websocket_request(self.environ):
            return WSGIHandler.run_application(self)
        registry = self._registry()
        policy = self._policy()
        if registry.closing:
            decision = Refusal(503, "shutting_down", "the server is shutting down; reconnect shortly",
                               (("Retry-After", "1"),))
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
            self.result = None

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
            ws.finish(policy.close_timeout)
        finally:
            if ws.state is not State.CLOSED:
                ws.abort()
            registry.discard(ws)
            self.environ[ENVIRON_WEBSOCKET] = None  # break the environ <-> websocket cycle
            self.websocket = None

    def log_request(self):
        # gunicorn's access log when gunicorn runs us, gevent's format otherwise.
        # Unlike gevent-websocket we also log 101s: the line then shows the session length.
        if hasattr(self.server.log, "access"):
            PyWSGIHandler.log_request(self)
        else:
            WSGIHandler.log_request(self)


# --------------------------------------------------------------------------- server


class Server(WSGIServer):
    """gevent's WSGI server with a :class:`Registry` of its open WebSockets."""

    handler_class = Handler

    def __init__(self, *args, ws_registry: Registry | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_registry = ws_registry if ws_registry is not None else Registry()


def graceful_shutdown(application, registry: Registry, hook_timeout: float, close_timeout: float,
                      servers=()) -> None:
    """Stop one server process's connections in order, within about the two timeouts.

    1. Stop accepting (close ``servers``' listeners: with several workers, a client that
       reconnects at once lands on one that stays); refuse new upgrades (503) and
       requests on kept-alive connections; close the connections idle between two
       requests (nothing to wait for on those).
    2. ``application.switchboard_shutdown(hook_timeout)``, if the application has one:
       each transport ends its streams its own way (an SSE stream's last ``retry:``, a
       long poll's 204, a STOMP ``ERROR`` frame before its Close).
    3. 1001 "server shutting down" to every WebSocket still open, and wait up to
       ``close_timeout`` for their closing handshakes.
    """
    registry.closing = True
    for server in servers:
        server.close()
    registry.close_idle()
    hook = getattr(application, "switchboard_shutdown", None)
    if hook is not None:
        try:
            hook(hook_timeout)
        except Exception:
            log.error("the application's shutdown hook failed", exc_info=True)
    registry.close_all(CLOSE_GOING_AWAY, "server shutting down", close_timeout)


class Worker(GeventWebSocketWorker):
    """gunicorn worker class: ``worker_class = "app.transports.wsio.Worker"``.

    On SIGTERM (graceful stop; also what a reload with HUP sends to the old workers)
    it runs :func:`graceful_shutdown` in a greenlet while gunicorn drains its pool: it
    stops accepting at once, idle keep-alive connections close, the application's
    shutdown hook ends its streams, and then every WebSocket still open gets 1001.
    Each step is bounded (the hook by a third of ``graceful_timeout``, the closing
    handshakes by the policy's ``close_timeout``, at most half of it), so the worker
    exits well inside ``graceful_timeout``; a stop with nothing open takes about a
    second (gunicorn's own polling interval). On SIGINT/SIGQUIT (fast stop) the same
    steps get at most about a second each.
    """

    wsgi_handler = Handler

    def init_process(self):
        self.ws_registry = Registry()
        self._servers: list[Server] = []
        self.server_class = self._make_server
        super().init_process()

    def _make_server(self, *args, **kwargs) -> Server:
        server = Server(*args, ws_registry=self.ws_registry, **kwargs)
        self._servers.append(server)  # so a shutdown can stop accepting at once
        return server

    def _ws_close_timeout(self) -> float:
        # getattr: a signal can come while the application is still loading (no self.wsgi yet).
        policy = getattr(getattr(self, "wsgi", None), "switchboard_ws_policy", DEFAULT_POLICY)
        return max(0.1, min(policy.close_timeout, self.cfg.graceful_timeout / 2))

    def _hook_timeout(self) -> float:
        return max(0.1, self.cfg.graceful_timeout / 3)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.ws_registry.closing = True
        # A signal handler must not block: the closing runs in its own greenlet.
        gevent.spawn(graceful_shutdown, getattr(self, "wsgi", None), self.ws_registry, self._hook_timeout(),
                     self._ws_close_timeout(), self._servers)

    def handle_quit(self, sig, frame):
        self.ws_registry.closing = True
        gevent.spawn(self._quit, sig, frame)

    def _quit(self, sig, frame):
        try:
            quick = min(1.0, self._ws_close_timeout())
            graceful_shutdown(getattr(self, "wsgi", None), self.ws_registry, quick, quick, self._servers)
        finally:
            super().handle_quit(sig, frame)


def serve_dev(app, host: str = "127.0.0.1", port: int = 5000, **server_kwargs) -> None:
    """Run ``app`` on gevent's WSGI server with :class:`Handler` until SIGINT or SIGTERM.

    The caller must have run ``gevent.monkey.patch_all()`` before importing anything
    else (see ``wsgi.py``). On a signal the server stops as a gunicorn worker does
    (:func:`graceful_shutdown`).
    """
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        log.warning("gevent.monkey.patch_all() was not called first: blocking I/O will stall all clients")
    server = Server((host, port), app, handler_class=Handler, **server_kwargs)
    policy = getattr(app, "switchboard_ws_policy", DEFAULT_POLICY)

    def stop():
        server.close()  # accept no more connections
        graceful_shutdown(app, server.ws_registry, policy.close_timeout, policy.close_timeout)
        server.stop(timeout=policy.close_timeout)

    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, stop)
    server.serve_forever()
