"""One connection's outgoing side: write-through while the socket keeps up, a writer
greenlet only while it does not.

A :class:`Stream` owns no greenlet while its socket takes every write at once. Bytes are
sent with one non-blocking ``send``; what the kernel does not take (a partial send, a
would-block) goes into the stream's buffer and a writer greenlet is started to drain it.
The writer goes away when the buffer is empty. While it exists, nothing new is taken from
the stream's sources (:class:`~app.delivery.fanout.Feed`): events wait in the hub's bounded
subscription queues, where the slow-consumer rule of DESIGN.md §3 applies unchanged. So the
buffer holds at most one batch plus a few control bytes (heart-beats, replies).

Everything here runs in one thread (gevent): no locks. The fan-out greenlet, the writer and
the connection's own greenlet (an SSE request, a WebSocket reader) only ever append to the
buffer's end; the writer alone takes from its front.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable

import gevent
import gevent.event

if TYPE_CHECKING:
    from .fanout import Delivery, Feed

log = logging.getLogger(__name__)

Bytes = "bytes | bytearray | memoryview"


class _WriteTimedOut(Exception):
    """Raised by the writer's gevent.Timeout: the peer took nothing for ``write_timeout``."""


def _raw(sock):
    # gevent's socket keeps the real, non-blocking socket object as _sock (see
    # gevent/_socket3.py: "code that needs the raw _sock"). A send on it never waits: it
    # takes what the kernel accepts now, or raises BlockingIOError.
    return getattr(sock, "_sock", sock)


def _rest(pieces: list, sent: int) -> bytes:
    """What is left of ``pieces`` (several buffers) after the first ``sent`` bytes."""
    out = []
    for piece in pieces:
        size = len(piece)
        if sent >= size:
            sent -= size
            continue
        out.append(memoryview(piece)[sent:] if sent else piece)
        sent = 0
    return b"".join(out)


class Stream:
    """The outgoing bytes of one connection, in order, never blocking the caller.

    Args:
        delivery: the worker's :class:`~app.delivery.fanout.Delivery` (its fan-out
            greenlet takes events from this stream's feeds and writes them here).
        sock: the connection's gevent socket, headers or handshake already sent.
        transport: the metrics label (``sse``, ``websocket``, ``stomp``).
        client: who is on the other end, for log lines.
        write_timeout: seconds a backlog may take to drain before the connection is cut
            (a peer that reads nothing); ``None``: no limit.
        on_written: ``on_written(byte_count)`` after bytes went out (the access log's size).

    Attributes:
        done: set once the stream has ended and its last bytes are out (or the
            connection is gone). A request greenlet waits on it, and owns nothing else.
        last_write: ``time.monotonic()`` of the last write (a heart-beat is due after a
            silence).
    """

    __slots__ = ("delivery", "transport", "client", "write_timeout", "done", "last_write", "lost", "feeds",
                 "_sock", "_raw", "_buf", "_buffered", "_writer", "_ending", "_on_written", "_ready", "__weakref__")

    def __init__(self, delivery: "Delivery", sock, transport: str, client: str = "?",
                 write_timeout: float | None = None, on_written: Callable[[int], None] | None = None):
        self.delivery = delivery
        self.transport = transport
        self.client = client
        self.write_timeout = write_timeout or None
        self.done = gevent.event.Event()
        self.last_write = time.monotonic()
        self.lost = False  # the peer is gone (a send failed, or the write timed out)
        self.feeds: list["Feed"] = []
        self._sock = sock
        self._raw = _raw(sock)
        self._buf: deque = deque()
        self._buffered = 0
        self._writer: gevent.Greenlet | None = None
        self._ending = False
        self._on_written = on_written
        self._ready: list["Feed"] = []  # feeds whose source has something, for the next pump

    # -- state ----------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Bytes waiting for the socket (0 while write-through)."""
        return self._buffered

    @property
    def has_writer(self) -> bool:
        """Whether a writer greenlet exists (only while there is a backlog)."""
        return self._writer is not None

    @property
    def open(self) -> bool:
        """Neither ending nor done: more may be written."""
        return not self._ending and not self.done.is_set()

    # -- writing --------------------------------------------------------------------

    def write(self, pieces: Iterable) -> None:
        """Send ``pieces`` (bytes-like) in order after everything written before.

        Never waits: what the socket cannot take now is buffered and a writer greenlet
        drains it. Does nothing once the stream is done or the peer is gone.
        """
        if self.done.is_set() or self.lost:
            return
        if not isinstance(pieces, list):
            pieces = list(pieces)
        if not pieces:
            return
        if self._buf or self._writer is not None:  # behind a backlog: keep the order
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._buf.append(data)
            self._buffered += len(data)
            return
        try:
            if len(pieces) == 1:
                sent = self._raw.send(pieces[0])
            else:
                sent = self._raw.sendmsg(pieces)  # one system call, no join
        except BlockingIOError:
            sent = 0
        except OSError:
            self._gone()
            return
        self.last_write = time.monotonic()
        if sent and self._on_written is not None:
            self._on_written(sent)
        total = sum(map(len, pieces)) if len(pieces) > 1 else len(pieces[0])
        if sent < total:
            rest = _rest(pieces, sent)
            self._buf.append(rest)
            self._buffered += len(rest)
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """The writer greenlet: send the buffer, then go away."""
        timer = None
        try:
            if self.write_timeout is not None:
                # One deadline for the whole backlog: a write may block at most this long
                # (as a plain HTTP write does), progress or not.
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
            log.info("cut %s (%s): a write blocked for %ss (the client reads nothing)",
                     self.client, self.transport, self.write_timeout)
            self._cut()
            return
        except OSError:
            self._gone()
            return
        finally:
            if timer is not None:
                timer.close()
            if self._writer is gevent.getcurrent():
                self._writer = None
        if self._ending:
            self._finish()
        elif self._ready:
            self.delivery.ready(self)  # what the feeds offered meanwhile

    # -- ending ---------------------------------------------------------------------

    def end(self, last: Iterable = ()) -> None:
        """End the stream after ``last`` (bytes-like pieces): its feeds close, and
        :attr:`done` is set once everything written is out. Idempotent."""
        if self._ending or self.done.is_set():
            return
        self.write(last)
        self._ending = True
        self._close_feeds()
        if self._writer is None:
            self._finish()

    def close(self) -> None:
        """Stop now, whatever is buffered (the connection is going away). Idempotent."""
        self._ending = True
        self._close_feeds()
        writer, self._writer = self._writer, None
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)
        self._buf.clear()
        self._buffered = 0
        self._finish()

    def _close_feeds(self) -> None:
        feeds, self.feeds = self.feeds, []
        self._ready = []
        for feed in feeds:
            feed.close()

    def _finish(self) -> None:
        if not self.done.is_set():
            self.done.set()
            self.delivery.forget(self)

    def _gone(self) -> None:
        """The peer is gone: a send failed."""
        self.lost = True
        self.close()

    def _cut(self) -> None:
        """End the TCP connection now: part of a write may be out, there is no way back."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._gone()
