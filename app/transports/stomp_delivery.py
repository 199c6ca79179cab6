"""STOMP topic subscriptions on the delivery layer: the one MESSAGE writer of a session.

Each topic (or wildcard, or ``/user``) SUBSCRIBE of a session is a feed of the worker's
fan-out (:mod:`app.delivery`), with a :class:`StompTopicFramer` as its framing: it hands
each event to the sans-I/O session (``session.deliver``, which numbers the MESSAGE and
keeps it for an ACK in client modes), then writes what the session queued, every frame as
one WebSocket message (text when UTF-8, else binary), into the connection's outbox. No
greenlet per subscription: a session's subscriptions cost a feed each.

The order a session produced its frames in is the order they leave: the connection's
reader and timer act on the session under one lock and write under it; while it is held
the framer takes nothing (:meth:`StompTopicFramer.room` answers 0) and the feed is set
again when the lock is released. Flow control: in client ack modes the framer takes at
most the room the subscription's prefetch window has; an ACK sets the feed again.

The common case has a shorter way (in :meth:`StompTopicFramer.frame`): events to an
``auto`` subscription of its own destination, on a WebSocket, while the session has
nothing queued and the lock is free. The session only numbers them
(:meth:`~app.stomp.StompSession.direct_messages`) and the framer writes each WebSocket frame
itself: the event's tail, and whether it is text, are worked out once per event and
escaping for all the subscribers (:class:`_LastTail`), and per subscription only the
header lines and the number are new. The bytes are the ones the session's queue would have
given; anything else (a gap, a wildcard's destination, a client ack mode, withheld events,
SockJS, a frame already queued) takes the session's queue.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import gevent

from ..delivery import BATCH, Feed
from ..events import Event, Gap
from ..hub import Subscription
from ..server.frames import OP_BINARY, OP_TEXT, encode_frame, frame_header

if TYPE_CHECKING:
    from .stomp_connection import Connection

log = logging.getLogger(__name__)

_GAP_HEADERS = (("gap", "true"),)


def is_utf8(chunk: bytes) -> bool:
    """Whether a session's chunk can travel as a text message."""
    if chunk.isascii():
        return True
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def chunks_out(chunks: list[bytes], out: list, raw: bool) -> None:
    """Append a session's chunks to ``out``: one WebSocket frame each on a real WebSocket
    (``raw``), else the messages themselves (a SockJS session frames its own)."""
    if raw:
        out += [encode_frame(OP_TEXT if is_utf8(chunk) else OP_BINARY, chunk) for chunk in chunks]
    else:
        out += chunks


class _LastTail:
    """The MESSAGE tail of the event the fan-out wrote last, in one escaping mode, and the
    first byte of its WebSocket frames (text when UTF-8, else binary): the fan-out writes
    one event to all its subscribers in a row, so this answers all but the first of them.

    Keyed by the event and the broker's ``message_tail`` (a mount may have its own); it
    keeps that one event alive until the next.
    """

    __slots__ = ("event", "source", "tail", "size", "first")

    def __init__(self) -> None:
        self.event: object = None
        self.source: object = None
        self.tail = b""
        self.size = 0
        self.first = 0

    def remember(self, event: Event, source: Callable[[Event, bool], bytes], escaped: bool) -> None:
        self.event, self.source = event, source
        tail = self.tail = source(event, escaped)
        self.size = len(tail)
        # The per-subscription lines before it are UTF-8 ending in a newline, so the whole
        # frame is UTF-8 exactly when the tail is (what is_utf8 of the whole would say).
        self.first = 0x80 | (OP_TEXT if is_utf8(tail) else OP_BINARY)


_LAST_TAILS = (_LastTail(), _LastTail())  # unescaped (1.0), escaped (1.1, 1.2)


class StompTopicFramer:
    """One topic SUBSCRIBE's framing (:class:`app.delivery.Framer`), see the module docstring.

    Args:
        connection: the session's connection.
        sub_id: the SUBSCRIBE's id.
        subscription: its hub subscription (a topic's, a wildcard's, a ``/user`` topic's).
        destination: ``destination(event)``, the MESSAGE's destination when it is not the
            subscription's (a wildcard names the concrete topic); ``None`` otherwise.
    """

    __slots__ = (
        "connection",
        "sub_id",
        "subscription",
        "destination",
        "feed",
        "escaped",
        "session",
        "lock",
        "broker",
        "direct",
    )

    def __init__(
        self,
        connection: "Connection",
        sub_id: str,
        subscription: Subscription,
        destination: Callable[[Event], str] | None = None,
    ):
        self.connection = connection
        self.sub_id = sub_id
        self.subscription = subscription
        self.destination = destination
        self.feed: Feed | None = None
        self.escaped: bool | None = None  # the session's escaping, known once it delivers (after CONNECT)
        # The connection's, fixed for its life; kept here so that a delivery touches fewer
        # objects (with a thousand sessions, each one more is a cache miss more).
        self.session, self.lock, self.broker = connection.session, connection._lock, connection.broker
        # Whether the direct way can apply at all (module docstring): a WebSocket, and the
        # subscription's own destination.
        self.direct = connection.raw and destination is None

    # -- for the connection ---------------------------------------------------------

    def window(self) -> None:
        """An ACK or NACK may have opened the prefetch window: take again."""
        if self.feed is not None:
            self.feed.set()

    def stop(self) -> None:
        """UNSUBSCRIBE, or the session ended: nothing more is delivered."""
        if self.feed is not None:
            self.feed.detach()  # closes the hub subscription
        else:
            self.subscription.close()

    # -- for the delivery layer -----------------------------------------------------

    def room(self) -> int:
        session = self.session
        if self.lock.locked():  # the reader or the timer is acting and writing
            if not session.closed:
                self.connection.deferred.add(self.feed)
            return 0
        return session.room(self.sub_id, BATCH)  # 0 once closed; 0: an ACK sets the feed again

    def frame(self, items: list, out: list) -> int:
        # The direct way when it applies (module docstring), written out here rather than in
        # a method of its own: it runs once per subscriber and event, where a call more shows
        # (bench/stomp_frame_cost.py).
        broker = self.broker
        if self.direct and broker.withholds is None and not self.lock.locked() and Gap not in map(type, items):
            session = self.session
            lane = session.direct_messages(self.sub_id, len(items), self.connection._clock())
            if lane is not None:
                before, after, number = lane
                escaped = self.escaped
                if escaped is None:
                    escaped = self.escaped = session.escapes_messages
                last = _LAST_TAILS[escaped]
                source = broker.message_tail
                for item in items:
                    if last.event is not item or last.source is not source:
                        last.remember(item, source, escaped)
                    head = b"%s%d%s" % (before, number, after)
                    out.append(frame_header(last.first, len(head) + last.size) + head + last.tail)
                    number += 1
                return len(items)
        return self._frame_queued(items, out)

    def _frame_queued(self, items: list, out: list) -> int:
        """Write ``items`` through the session's queue: every MESSAGE, gap and frame it holds."""
        connection = self.connection
        session, broker = connection.session, connection.broker
        now = connection._clock()
        delivered = 0
        slow = None
        for item in items:
            if item.__class__ is Gap:
                session.deliver(self.sub_id, b"", _GAP_HEADERS, now=now)
                if item.slow:
                    slow = item
            elif broker.withholds is None or not broker.withholds(item):
                body, headers = broker.encode_message(item)
                tail = broker.message_tail(item, session.escapes_messages)
                destination = self.destination(item) if self.destination is not None else None
                if session.deliver(
                    self.sub_id, body, headers, now=now, tail=tail, default_type=None, destination=destination
                ):
                    delivered += 1
        chunks_out(session.data_to_send(), out, connection.raw)
        if slow is not None:
            log.info(
                "slow consumer dropped: client %s, transport stomp, topic %s: fell behind its queue and "
                "history; sent MESSAGE gap:true, then ERROR and 1008",
                connection.client,
                slow.topic,
            )
            gevent.spawn(
                connection.fail_and_drain,
                "slow consumer",
                f"This connection fell too far behind topic {slow.topic!r}; events were lost. ",
                "slow-consumer",
            )
        return delivered

    def closed(self, reason: str, out: list) -> bool:
        # "closed": UNSUBSCRIBE or the end of the session; "slow consumer": told at its gap.
        if reason == "shutdown":
            gevent.spawn(self.connection.fail_and_drain, "server shutting down", "", "shutdown")
        elif reason == "unavailable":  # a history read (replay or catch-up) failed
            gevent.spawn(
                self.connection.fail_and_drain, "backend unavailable", "The event store is unavailable. ", None
            )
        return False  # the session's own end closes the connection
