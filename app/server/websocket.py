"""One server-side WebSocket connection (RFC 6455), as ``environ["wsgi.websocket"]``.

Frames are read by :func:`app.server.frames.read_frame` from the connection's buffered
request stream; every frame we send leaves through the connection's
:class:`~app.server.outbox.Outbox`, in order, without blocking the writer. Protocol errors
become Close frames here, in one place (:meth:`WebSocket._fail`).
"""

from __future__ import annotations

import enum
import logging
import socket
import time

import gevent
import gevent.event
import gevent.lock
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import Stream
from geventwebsocket.websocket import WebSocket as _StockWebSocket

from .frames import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
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
from .outbox import Outbox

log = logging.getLogger(__name__)

CLOSE_KEEPALIVE_TIMEOUT = CLOSE_INTERNAL_ERROR
"""Sent to a peer that answered no ping within ``ping_timeout``.

1011 ("unexpected condition that prevented it from fulfilling the request") with the
reason "keepalive ping timeout", as the websockets library does. The alternatives fit
worse: 1001 says *we* are going away; 1002 would accuse the peer of breaking the
protocol, when a silent peer is usually a dead network path; 1008 is about the content
of a message. The peer rarely sees this frame anyway: the code is for the logs.
"""

#: Bytes an application's send may leave unsent before it waits for the peer to read
#: (the high-water mark of asyncio's transports, websockets' write limit).
HIGH_WATER = 64 * 1024


#: What :meth:`WebSocket.receive_available` returns when no message can be read without waiting.
NOTHING_YET = object()


class ServeEvents:
    """What :meth:`WebSocket.serve_events` was given: the handler reads by callbacks."""

    __slots__ = ("on_message", "on_end")

    def __init__(self, on_message, on_end):
        self.on_message = on_message
        self.on_end = on_end


class SocketReader:
    """``read(n)`` over a gevent socket for a handed-over WebSocket's frames, holding no
    buffer while idle (``io.BufferedReader`` keeps one), and waiting in gevent's own
    ``recv``, called from Python: the parked reader's C stack, which gevent copies to the
    heap at each switch, stays short.

    Args:
        sock: the connection's gevent socket.
        leftover: bytes already read from the connection (what a buffered reader held).
    """

    __slots__ = ("_sock", "_recv", "_buf")

    def __init__(self, sock, leftover: bytes = b""):
        self._sock = sock
        self._recv = sock.recv
        self._buf = leftover

    def pending(self) -> bool:
        """Whether a read would not wait (bytes held or arrived, or the end of the stream)."""
        if self._buf:
            return True
        try:
            self._sock._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (OSError, AttributeError):
            pass  # an error (or a socket without gevent's raw one) is for the read to find
        return True

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream (``BufferedReader.read`` semantics)."""
        buf = self._buf
        if len(buf) < n:
            parts = [buf]
            have = len(buf)
            while have < n:
                chunk = self._recv(max(n - have, 4096))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            buf = b"".join(parts)
        if len(buf) <= n:
            self._buf = b""
            return buf
        self._buf = buf[n:]
        return buf[:n]


class ConnectionClosed(WebSocketError):
    """Sending on a WebSocket that is closing or closed."""


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
        "_send_lock",
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
        "_serve",
        "_input",
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
        # Taken by the application's sends and the Close frame (not by pings, pongs or the
        # delivery layer, which never wait): a send that waited for it re-checks the state,
        # so nothing it sends follows our Close frame.
        self._send_lock = gevent.lock.Semaphore(1)
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
        self._serve = None
        self._input: SocketReader | None = None  # set by read_with()

    def serve_after(self, serve) -> None:
        """Have ``serve()`` run as this connection's reader once the application has returned.

        An application that sets up the connection in its request and then calls this
        (and returns) gets ``serve()`` run in a fresh greenlet, with the request's
        framework context gone: an idle connection then waits on a short stack. The
        handler completes the closing handshake when ``serve()`` returns.
        """
        self._serve = serve

    def serve_events(self, on_message, on_end) -> None:
        """Have messages handed to ``on_message`` once the application has returned, read
        by a greenlet that exists only while there is something to read.

        ``on_message(message) -> bool`` gets each message (``str`` or ``bytes``) in order,
        in a greenlet of its own that may wait (a send, a pace); a false answer ends the
        connection. ``on_end()`` runs once, when the connection is closed or ended. An idle
        connection then costs no greenlet at all (:mod:`app.server.reader`).
        """
        self._serve = ServeEvents(on_message, on_end)

    def take_serve(self):
        """What :meth:`serve_after` was given (once), or ``None``: for the handler."""
        serve, self._serve = self._serve, None
        return serve

    def read_with(self, reader: SocketReader) -> None:
        """Read frames through ``reader`` from now on, and let go of the handler's request
        stream (the handler, handing the connection over, gives what it had buffered)."""
        self._read = reader.read
        self._input = reader
        for name in ("stream", "raw_read", "raw_write", "handler"):  # the stock class's, holding it
            setattr(self, name, None)

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

    def receive_available(self):
        """As :meth:`receive`, but :data:`NOTHING_YET` instead of waiting for a frame that
        has not started to arrive (the rest of one that has is waited for). After
        :meth:`read_with` only."""
        if self._state is State.CLOSED:
            return None
        self._reader = gevent.getcurrent()
        try:
            return self._receive(self._input)
        finally:
            self._reader = None

    def _receive(self, idle: SocketReader | None = None):
        read = self._read
        assembler = self._assembler
        try:
            while True:
                if idle is not None and not idle.pending():
                    return NOTHING_YET
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
            self.closed = True  # type: ignore[misc]  # the stock class's attribute (its __slots__)
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
            self.closed = True  # type: ignore[misc]  # the stock class's attribute (its __slots__)
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
            self.closed = True  # type: ignore[misc]  # the stock class's attribute (its __slots__)
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
        instead of growing the buffer. Pings and pongs (``wait=False``) never wait.

        Args:
            data: whole frames.
            timeout: seconds for the send lock plus the wait below the high-water mark;
                ``None`` waits as long as it takes.
            closing: ``data`` is our Close frame (or the answer to the peer's), which is
                written in the CLOSING state and seals the outbox (no frame after it);
                anything else is written only while OPEN.
            wait: whether to wait above the high-water mark (not for control frames).

        Raises:
            WebSocketError: the lock was busy for ``timeout`` (nothing was sent), or the
                backlog did not drain within it (the frame is queued).
            ConnectionClosed: the connection is not open (nothing was sent: RFC 6455
                5.5.1, no data frame after a Close frame), or the socket failed.
        """
        outbox = self.outbox
        if not wait:  # a control frame: appended whole, never waits
            if outbox.lost:
                raise ConnectionClosed("socket is dead")
            outbox.write([data])
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=timeout):
            raise WebSocketError("timed out waiting to send")
        try:
            # Re-checked under the lock: close() may have written our Close frame while
            # this sender waited for its turn.
            if not closing and self._state is not State.OPEN:
                raise ConnectionClosed("WebSocket is closed")
            if outbox.lost:
                self._mark_closed(CLOSE_ABNORMAL, "connection lost")
                raise ConnectionClosed("socket is dead")
            if closing:
                outbox.write([data], last=True)
                outbox.seal()
                return
            outbox.write([data])
            if outbox.backlog > HIGH_WATER:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not outbox.wait_drained(left):
                    raise WebSocketError("timed out waiting to send: the peer reads too slowly")
                if outbox.lost:
                    raise ConnectionClosed("socket is dead")
        finally:
            self._send_lock.release()

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
        self.closed = True  # type: ignore[misc]  # the stock class's attribute (its __slots__)
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
            self.closed = True  # type: ignore[misc]  # the stock class's attribute (its __slots__)
            self.close_code, self.close_reason = code, reason
            try:
                # Bounded: the peer we give up on may not be reading at all.
                self._write(
                    encode_frame(OP_CLOSE, close_payload(code, reason)), min(1.0, self.close_timeout), closing=True
                )
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
