"""A SockJS session in this worker, as a message channel with a WebSocket's surface.

The STOMP broker connection (:mod:`app.transports.stomp_ws`) and the ``/ws`` JSON
connection (:mod:`app.transports.websocket`) run on a ``ws`` object they call
``receive()``, ``send()``, ``send_encoded()``, ``send_many()``, ``close()`` and
``abort()`` on, and whose ``close_code`` they read. :class:`SockJSChannel` is that object
for a SockJS session, so both run unchanged over every SockJS transport:

* ``receive()`` returns the client's next message (text), or ``None`` once the session
  has ended (closed by the application, interrupted, or expired);
* ``send*()`` queue messages in the sans-I/O session (:class:`app.sockjs.SockJSSession`)
  and wake whichever request is receiving; they block while more than
  :data:`HIGH_WATER` characters wait unwritten (a slow poller slows its own session, as a
  full socket buffer would), and fail after ``write_timeout`` seconds of that;
* ``close(code, reason)`` becomes the ``c[code,"reason"]`` frame.

The receiving requests (app/transports/sockjs_http.py, sockjs_ws.py) call
:meth:`attach`, :meth:`frames`, :meth:`wait` and :meth:`detach`; ``xhr_send`` calls
:meth:`deliver`. One timer greenlet per session runs the session's clock: heartbeats,
and the disconnect delay after which the session is forgotten (``on_expired``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

import gevent
import gevent.event

from ..sockjs import INTERRUPTED, Attach, SessionConfig, SockJSSession
from .wsio import CLOSE_NORMAL, WebSocketError

__all__ = ["ChannelClosed", "HIGH_WATER", "SockJSChannel"]

log = logging.getLogger(__name__)

#: Characters of messages a session may hold unwritten before a sender waits (a poller
#: between two polls, a stream behind a slow network).
HIGH_WATER = 256 * 1024


class ChannelClosed(WebSocketError):
    """Sending on a SockJS session that has ended (the connection classes catch WebSocketError)."""


def _usv(text: str) -> str:
    # A JSON string may hold a lone surrogate ("\ud800"), which has no UTF-8 form; a browser's
    # WebSocket.send replaces it with U+FFFD (USVString), and so does this channel, so the
    # connection classes see the text a WebSocket would have given them.
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class SockJSChannel:
    """One SockJS session of this worker.

    Args:
        session_id: the id from the URL.
        transport: the transport that opened it (``xhr_streaming``, ...), for metrics and logs.
        config: the protocol's timings and sizes.
        write_timeout: seconds a sender may wait for room before the session is cut.
        clock: a monotonic clock in seconds.
        on_expired: called once when the session is forgotten (the table drops it).
    """

    def __init__(
        self,
        session_id: str,
        transport: str,
        config: SessionConfig,
        write_timeout: float | None = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_expired: Callable[["SockJSChannel"], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.transport = transport
        self.core = SockJSSession(session_id, config, clock())
        self.write_timeout = write_timeout
        self.close_code: int | None = None
        self._clock = clock
        self._on_expired = on_expired
        self._changed = gevent.event.Event()  # a frame may be ready for the receiver
        self._inbox = gevent.event.Event()  # the client sent something, or the session ended
        self._room = gevent.event.Event()  # pending messages fell below HIGH_WATER
        self._room.set()
        self._timer_wake = gevent.event.Event()
        self._buffer: deque[str] = deque()
        self.requests = 0  # HTTP requests of this session (the page's counters)
        self.timer = gevent.spawn(self._run_timer)

    # -- the connection object's side (what a WebSocket offers) -----------------------------

    def receive(self) -> str | None:
        """The client's next message, or ``None`` when the session has ended."""
        while not self._buffer:
            self._buffer.extend(self.core.messages_received())
            if self._buffer:
                break
            if self.core.closed:
                if self.close_code is None and self.core.close_reason is not None:
                    self.close_code = self.core.close_reason[0]
                return None
            self._inbox.clear()
            self._inbox.wait()
        return _usv(self._buffer.popleft())

    def send(self, message: str | bytes, binary: bool | None = None) -> None:
        """Queue one message (bytes are UTF-8: SockJS carries text only)."""
        self.send_many([message])

    def send_encoded(self, payload: bytes, binary: bool = False) -> None:
        """Queue one message given as UTF-8 octets (undecodable octets become U+FFFD)."""
        self.send_many([payload])

    def send_many(self, payloads) -> None:
        """Queue several messages; they leave together, in one ``a`` frame if they can."""
        self._wait_for_room()
        for payload in payloads:
            if isinstance(payload, (bytes, bytearray, memoryview)):
                payload = bytes(payload).decode("utf-8", "replace")
            self.core.send(payload)
        self._changed.set()

    def has_room(self) -> bool:
        """Whether a send now would not wait (the session is open and below the high-water mark)."""
        return not self.core.closed and self.core.pending_bytes < HIGH_WATER

    def _wait_for_room(self) -> None:
        if self.core.closed:
            raise ChannelClosed("the SockJS session has ended")
        if self.core.pending_bytes < HIGH_WATER:
            return
        self._room.clear()
        if not self._room.wait(self.write_timeout) and not self.core.closed:
            log.info(
                "SockJS session %s cut: nothing received its messages for %ss", self.session_id, self.write_timeout
            )
            self.abort()
        if self.core.closed:
            raise ChannelClosed("the SockJS session has ended")

    def close(self, code: int = CLOSE_NORMAL, message: str = "") -> None:
        """End the session with ``c[code,"message"]`` (after what is queued)."""
        if self.close_code is None:
            self.close_code = code
        self.core.close(code, message)
        self._wake_all()

    def abort(self, code: int | None = None, reason: str = "") -> None:
        """End the session now, as an interrupted connection (1002)."""
        self.close(*INTERRUPTED)

    def disable_heartbeat(self) -> None:
        """Stop ``h`` frames (the protocol on top sends heart-beats of its own)."""
        self.core.disable_heartbeat()
        self._timer_wake.set()

    @property
    def closed(self) -> bool:
        return self.core.closed

    # -- the transports' side ---------------------------------------------------------------

    def attach(self) -> tuple[Attach, int]:
        """A receiving request arrives (see :meth:`SockJSSession.attach`)."""
        answer = self.core.attach(self._clock())
        self._timer_wake.set()  # the heartbeat clock starts
        return answer

    def frames(self, one: bool = False) -> list[str]:
        """The frames to write now to the attached receiver."""
        frames = self.core.frames(self._clock(), one)
        if frames and self.core.pending_bytes < HIGH_WATER:
            self._room.set()
        if frames:
            self._timer_wake.set()  # the next heartbeat counts from this write
        return frames

    def wait(self, timeout: float | None = None) -> None:
        """Wait until a frame may be ready (or ``timeout``); call after :meth:`frames` gave none."""
        self._changed.clear()
        self._changed.wait(timeout)

    def detach(self, receiver: int, interrupted: bool = False) -> None:
        """The receiving request ended (``interrupted``: the client went away)."""
        self.core.detach(receiver, self._clock(), interrupted)
        if self.core.closed:
            self._wake_all()
        self._timer_wake.set()

    def deliver(self, messages: list[str]) -> None:
        """Messages from a send request (``xhr_send``, ``jsonp_send``, the WebSocket)."""
        self.core.receive(messages)
        self._inbox.set()

    def _wake_all(self) -> None:
        self._changed.set()
        self._inbox.set()
        self._room.set()
        self._timer_wake.set()

    def _run_timer(self) -> None:
        core = self.core
        try:
            while not core.expired:
                deadline = core.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._clock())
                self._timer_wake.clear()
                self._timer_wake.wait(timeout)  # 0: still a yield, so this loop never spins
                was_closed = core.closed
                core.tick(self._clock())
                self._changed.set()  # a heartbeat may be due
                if core.closed and not was_closed:
                    self._wake_all()
        finally:
            self._wake_all()
            if self._on_expired is not None:
                self._on_expired(self)

    def kill(self) -> None:
        """Forget the session now (shutdown): the application's ``receive`` returns ``None``."""
        if not self.core.closed:
            self.core.close(1001, "server shutting down")
        self._wake_all()
        self.timer.kill(block=False)
