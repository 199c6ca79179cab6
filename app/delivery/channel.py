"""The outbox surface over a message channel: delivery to a SockJS session.

A real WebSocket has an :class:`~app.server.outbox.Outbox` of bytes; a SockJS session
(:class:`app.transports.sockjs_channel.SockJSChannel`) takes whole messages, which its own
transports frame. :class:`ChannelOutbox` gives the delivery layer the same surface over
such a channel: messages are handed over at once while the channel has room, else they wait
here and one writer greenlet hands them over as room comes (the channel's ``send_many``
waits), then goes away and tells ``on_drained``. Replies of the connection go through it
too (:meth:`send`), so they keep their order with the events.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable

import gevent
import gevent.event


class ChannelOutbox:
    """Delivery's view of a message channel (see the module docstring).

    Args:
        channel: has ``send_many(payloads)`` (may wait for room, raises a
            ``WebSocketError`` once the channel ended) and ``has_room()``.
    """

    def __init__(self, channel):
        self.channel = channel
        self.on_drained: list[Callable[[], None]] = []
        self.on_lost: list[Callable[[], None]] = []
        self.last_write = time.monotonic()
        self.lost = False
        self.sealed = False
        self._buf: deque[list] = deque()
        self._writer: gevent.Greenlet | None = None
        self._drained = gevent.event.Event()
        self._drained.set()

    @property
    def backlog(self) -> int:
        """Batches of messages waiting for room (0 while they go straight through)."""
        return len(self._buf)

    @property
    def has_writer(self) -> bool:
        return self._writer is not None

    def write(self, pieces: Iterable, *, last: bool = False) -> None:
        """Hand ``pieces`` (whole messages, UTF-8) to the channel after everything before."""
        if self.lost or (self.sealed and not last):
            return
        pieces = list(pieces)
        if not pieces:
            return
        if self._writer is None and self.channel.has_room():
            try:
                self.channel.send_many(pieces)  # room: it does not wait
            except Exception:  # the channel ended (a WebSocketError), or its peer is gone
                self._gone()
                return
            self.last_write = time.monotonic()
            return
        self._buf.append(pieces)
        if self._writer is None:
            self._drained.clear()
            self._writer = gevent.spawn(self._drain)

    def send(self, message: str | bytes) -> None:
        """A reply of the connection, in order with the events; waits while there is a
        backlog (as a channel's own send waits for room)."""
        self.write([message])
        self._drained.wait()

    def _drain(self) -> None:
        try:
            while self._buf:
                self.channel.send_many(self._buf[0])  # waits for room
                self._buf.popleft()
                self.last_write = time.monotonic()
        except Exception:
            self._writer = None
            self._gone()
            return
        self._writer = None
        self._drained.set()
        for callback in self.on_drained:
            callback()

    def clear(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)
        self._buf.clear()
        self._drained.set()

    def _gone(self) -> None:
        if self.lost:
            return
        self.lost = True
        self.clear()
        callbacks, self.on_lost = self.on_lost, []
        for callback in callbacks:
            callback()
