"""A connection's outgoing bytes: write-through while the socket keeps up, a writer greenlet
only while it does not.

Bytes are sent with one non-blocking ``send``; what the kernel does not take (a partial
send, a would-block) goes into the outbox's buffer and a writer greenlet is started to
drain it. The writer goes away when the buffer is empty and tells ``on_drained``. A caller
never waits: a WebSocket frame, an SSE chunk, a reply, a ping all leave in the order they
were written, whoever wrote them.

The buffer is bounded by its users, not here: the delivery layer takes nothing more from
a subscription while an outbox has a backlog (events wait in the hub's bounded queues), and
a WebSocket reader waits for the backlog to drain before it reads the next message
(:meth:`Outbox.wait_drained`).

Everything here runs in one thread (gevent): no locks. Writers only append to the buffer's
end; the writer greenlet alone takes from its front.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import Callable, Iterable

import gevent
import gevent.event

log = logging.getLogger(__name__)


class _WriteTimedOut(Exception):
    """Raised by the writer's gevent.Timeout: the peer took nothing for ``write_timeout``."""


def _raw(sock):
    # gevent's socket keeps the real, non-blocking socket object as _sock (gevent's
    # _socket3.py: "code that needs the raw _sock"). A send on it never waits: it takes
    # what the kernel accepts now, or raises BlockingIOError.
    return getattr(sock, "_sock", sock)


def _rest(pieces: list, sent: int) -> bytes:
    """What is left of ``pieces`` (several buffers) after their first ``sent`` bytes."""
    out = []
    for piece in pieces:
        size = len(piece)
        if sent >= size:
            sent -= size
            continue
        out.append(memoryview(piece)[sent:] if sent else piece)
        sent = 0
    return b"".join(out)


class Outbox:
    """The outgoing side of one connection, in order, never blocking the caller.

    Args:
        sock: the connection's gevent socket.
        name: who is on the other end, for log lines.
        write_timeout: seconds a backlog may take to drain before the connection is cut
            (a peer that reads nothing); ``None``: no limit (a WebSocket's keepalive
            decides instead).
        on_written: ``on_written(byte_count)`` after bytes went out (an access log's size).

    Attributes:
        on_drained: callables run (in the writer greenlet) each time a backlog is gone.
        on_lost: callables run once when the peer is found gone (a failed send, a cut).
        last_write: ``time.monotonic()`` of the last bytes handed to the kernel.
        lost: the peer is gone; writes are dropped.
    """

    __slots__ = (
        "name",
        "write_timeout",
        "on_drained",
        "on_lost",
        "last_write",
        "lost",
        "sealed",
        "_sock",
        "_raw",
        "_buf",
        "_buffered",
        "_writer",
        "_on_written",
        "_drained",
    )

    def __init__(
        self, sock, name: str = "?", write_timeout: float | None = None, on_written: Callable[[int], None] | None = None
    ):
        self.name = name
        self.write_timeout = write_timeout or None
        self.on_drained: list[Callable[[], None]] = []
        self.on_lost: list[Callable[[], None]] = []
        self.last_write = time.monotonic()
        self.lost = False
        self.sealed = False  # see seal()
        self._sock = sock
        self._raw = _raw(sock)
        self._buf: deque | None = None  # made by the first backlog (an empty deque holds a 64-slot block)
        self._buffered = 0
        self._writer: gevent.Greenlet | None = None
        self._on_written = on_written
        self._drained: gevent.event.Event | None = None  # made by the first wait_drained

    @property
    def backlog(self) -> int:
        """Bytes waiting for the socket (0 while write-through)."""
        return self._buffered

    @property
    def has_writer(self) -> bool:
        """Whether a writer greenlet exists (only while there is a backlog)."""
        return self._writer is not None

    def write(self, pieces: Iterable, *, last: bool = False) -> None:
        """Send ``pieces`` (bytes-like) after everything written before, without waiting.

        What the socket cannot take now is buffered and a writer greenlet drains it.
        Does nothing once the peer is gone, or once sealed unless ``last``.
        """
        if self.lost or (self.sealed and not last):
            return
        if pieces.__class__ is not list:
            pieces = list(pieces)
        assert isinstance(pieces, list)  # for the type checker; the check above made it one
        count = len(pieces)
        if not count:
            return
        if self._writer is not None:  # behind a backlog: keep the order
            data = pieces[0] if count == 1 else b"".join(pieces)
            assert self._buf is not None  # a writer exists only with its buffer
            self._buf.append(data)
            self._buffered += len(data)
            return
        try:
            if count == 1:
                sent = self._raw.send(pieces[0])
            else:
                sent = self._raw.sendmsg(pieces)  # one system call, nothing joined
        except BlockingIOError:
            sent = 0
        except OSError:
            self._gone()
            return
        self.last_write = time.monotonic()
        if sent and self._on_written is not None:
            self._on_written(sent)
        total = len(pieces[0]) if count == 1 else sum(map(len, pieces))
        if sent < total:
            rest = _rest(pieces, sent)
            if self._buf is None:
                self._buf = deque()
            self._buf.append(rest)
            self._buffered += len(rest)
            if self._drained is not None:
                self._drained.clear()
            self._writer = gevent.spawn(self._drain)

    def seal(self) -> None:
        """Take no more writes but those marked ``last`` (after a WebSocket's Close frame,
        RFC 6455 5.5.1: no data frame follows it, whoever was about to write one)."""
        self.sealed = True

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until there is no backlog (or the peer is gone); whether that happened."""
        if self._writer is None or self.lost:
            return True
        if self._drained is None:
            self._drained = gevent.event.Event()
        return self._drained.wait(timeout)

    def _drain(self) -> None:
        """The writer greenlet: send the buffer, then go away."""
        timer = None
        try:
            if self.write_timeout is not None:
                # One deadline for the whole backlog: a write may block at most this long
                # (as one plain HTTP write may), progress or not.
                timer = gevent.Timeout(self.write_timeout, _WriteTimedOut)
                timer.start()
            buf = self._buf
            while buf:
                chunk = buf[0]
                sent = self._sock.send(chunk)  # waits (this greenlet only) until writable
                self._buffered -= sent
                self.last_write = time.monotonic()
                if self._on_written is not None:
                    self._on_written(sent)
                if sent < len(chunk):
                    buf[0] = memoryview(chunk)[sent:]
                else:
                    buf.popleft()
        except _WriteTimedOut:
            log.info("cut %s: a write blocked for %ss (the client reads nothing)", self.name, self.write_timeout)
            self._writer = None
            self.cut()
            return
        except OSError:
            self._writer = None
            self._gone()
            return
        finally:
            if timer is not None:
                timer.close()
        self._writer = None
        self._buf = None  # the next backlog makes its own: an idle connection holds none
        if self._drained is not None:
            self._drained.set()
        for callback in self.on_drained:
            callback()

    def cut(self) -> None:
        """End the TCP connection now (part of a write may be out: there is no way back)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._gone()

    def clear(self) -> None:
        """Drop the backlog and stop the writer (the connection is being closed anyway)."""
        writer, self._writer = self._writer, None
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)
        if self._buf is not None:
            self._buf.clear()  # (a writer being stopped may still hold it)
            self._buf = None
        self._buffered = 0
        if self._drained is not None:
            self._drained.set()

    def _gone(self) -> None:
        if self.lost:
            return
        self.lost = True
        self.clear()
        callbacks, self.on_lost = self.on_lost, []
        for callback in callbacks:
            callback()
