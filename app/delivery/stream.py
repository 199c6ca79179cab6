"""One connection as the delivery layer sees it: its feeds and its outbox.

A :class:`Stream` pairs the connection's :class:`~app.server.outbox.Outbox` (the bytes,
write-through or drained by a writer greenlet while there is a backlog) with the feeds
(:class:`~app.delivery.fanout.Feed`) delivered on it. While the outbox has a backlog the
fan-out takes nothing from the feeds: events wait in the hub's bounded subscription queues,
where the slow-consumer rule of DESIGN.md §3 applies unchanged. So the outbox holds at most
one batch plus a few control bytes (heart-beats, replies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import gevent.event

from ..server.outbox import Outbox

if TYPE_CHECKING:
    from .fanout import Delivery, Feed


class Stream:
    """The delivery side of one connection.

    Args:
        delivery: the worker's :class:`~app.delivery.fanout.Delivery`.
        outbox: the connection's outgoing bytes (an SSE response's, a WebSocket's).
        transport: the metrics label (``sse``, ``websocket``, ``stomp``).
        client: who is on the other end, for log lines.

    Attributes:
        gate: ``None``, or an event that must be set for anything to be delivered.
        done: set once the stream has ended and its last bytes are out (or the
            connection is gone). An SSE request greenlet waits on it, and owns nothing else.
    """

    __slots__ = (
        "delivery",
        "outbox",
        "transport",
        "client",
        "done",
        "feeds",
        "gate",
        "_ending",
        "_ready",
        "__weakref__",
    )

    def __init__(self, delivery: "Delivery", outbox: Outbox, transport: str, client: str = "?"):
        self.delivery = delivery
        self.outbox = outbox
        self.transport = transport
        self.client = client
        self.done = gevent.event.Event()
        self.feeds: list["Feed"] = []
        # While set to an event that is not set, nothing is delivered (a /ws connection whose
        # token expired); whoever sets it again calls ``delivery.ready(stream)``.
        self.gate: gevent.event.Event | None = None
        self._ending = False
        self._ready: list["Feed"] = []  # feeds whose source has something, for the next round
        outbox.on_drained.append(self._drained)
        outbox.on_lost.append(self.close)

    # -- state ----------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Bytes waiting for the socket (0 while write-through)."""
        return self.outbox.backlog

    @property
    def has_writer(self) -> bool:
        """Whether the connection has a writer greenlet (only while it has a backlog)."""
        return self.outbox.has_writer

    @property
    def lost(self) -> bool:
        return self.outbox.lost

    @property
    def last_write(self) -> float:
        return self.outbox.last_write

    @property
    def open(self) -> bool:
        """Neither ending nor done: more may be written."""
        return not self._ending and not self.done.is_set()

    def write(self, pieces: Iterable) -> None:
        """Send ``pieces`` after everything written before (see :meth:`Outbox.write`)."""
        if not self.done.is_set():
            self.outbox.write(pieces)

    # -- ending ---------------------------------------------------------------------

    def end(self, last: Iterable = ()) -> None:
        """End the stream after ``last`` (bytes-like pieces): its feeds close, and
        :attr:`done` is set once everything written is out. Idempotent."""
        if self._ending or self.done.is_set():
            return
        self.write(last)
        self._ending = True
        self._close_feeds()
        if not self.outbox.has_writer:
            self._finish()

    def close(self) -> None:
        """Stop delivering now, whatever is buffered (the connection is going away).
        The outbox is left to its owner. Idempotent."""
        self._ending = True
        self._close_feeds()
        self._finish()

    def _drained(self) -> None:
        if self._ending:
            self._finish()
        elif self._ready:
            self.delivery.ready(self)  # what the feeds offered meanwhile

    def _close_feeds(self) -> None:
        feeds, self.feeds = self.feeds, []
        self._ready = []
        for feed in feeds:
            feed.close()

    def _finish(self) -> None:
        if not self.done.is_set():
            self.done.set()
            self.delivery.forget(self)
            try:
                self.outbox.on_drained.remove(self._drained)
            except ValueError:
                pass
