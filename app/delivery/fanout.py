"""The worker's one fan-out greenlet: from hub subscriptions to sockets, for every stream.

The hub offers each event to its subscriptions and never waits (DESIGN.md §3). A
subscription delivered by this layer wakes no greenlet of its own: its wake-up signal is a
:class:`Feed`, which puts its :class:`~app.delivery.stream.Stream` on the ready list of the
worker's :class:`Delivery`. The fan-out greenlet then, for every ready stream that has no
backlog, takes a batch from each ready feed, has the transport frame it (each event's bytes
are built once per wire format and shared: ``Event.encoded``), and writes it with one
non-blocking send. Only a stream whose socket does not take it all gets a writer greenlet
(:mod:`app.delivery.stream`).

So one publish costs one wake-up of one greenlet per worker, however many subscribers, and
the path of an event is: ``Hub._dispatch`` -> ``Subscription.offer`` -> ``Feed.set`` ->
the fan-out greenlet -> ``Framer.frame`` -> ``socket.send``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

import gevent
import gevent.event

from ..events import Gap
from ..hub import BackendUnavailable, SubscriptionClosed
from ..server.outbox import Outbox
from .stream import Stream

log = logging.getLogger(__name__)

#: Most items one feed gives in one round: a backlog larger than this leaves over several
#: rounds (other streams' turns in between), each one send.
BATCH = 100

#: Streams one round pumps before it lets other greenlets run (a publish, a reader): a
#: round over 10,000 connections would otherwise hold the worker for its whole length, and
#: what is published meanwhile joins the batch of the streams not yet pumped.
YIELD_EVERY = 256

_NEVER = float("inf")  # no event yet (the oldest time of a round)


class Source(Protocol):
    """What a feed reads: a :class:`~app.hub.Subscription` or a multi-topic set of them."""

    def wake_with(self, signal) -> None: ...
    def take(self, max_items: int) -> list: ...
    def close(self) -> None: ...


class Framer(Protocol):
    """A transport's wire format for one feed (all that a transport adds to delivery)."""

    def frame(self, items: list, out: list) -> int:
        """Append the bytes of ``items`` (events and gaps, in order) to ``out``; return
        how many were events."""

    # Optional: ``room() -> int``, how many items the framer can take now (STOMP's prefetch
    # window, a session busy writing); 0 takes nothing, and the framer sets the feed again
    # when there is room. Without it a feed takes up to the delivery's batch.

    def closed(self, reason: str, out: list) -> bool:
        """The feed's source closed for ``reason`` ("shutdown", "slow consumer", "closed",
        or "unavailable": a history read failed): append any last bytes to ``out``; return
        whether the whole stream ends."""


class Feed:
    """One source delivered on one stream with one framer.

    It is also the source's wake-up signal (``wake_with``): the hub's offer calls
    :meth:`set`, which costs a list append, not a greenlet switch.
    """

    __slots__ = ("stream", "source", "framer", "topic", "pending", "closed_reason", "room")

    def __init__(self, stream: Stream, source: Source, framer: Framer, topic: str | None = None):
        self.stream = stream
        self.source = source
        self.framer = framer
        self.topic = topic
        self.pending = False  # on the stream's ready list
        self.closed_reason: str | None = None
        self.room: Callable[[], int] | None = getattr(framer, "room", None)

    def set(self) -> None:
        """The source may have an item: queue this feed for the next fan-out round."""
        if not self.pending and self.closed_reason is None:
            self.pending = True
            stream = self.stream
            stream._ready.append(self)
            if not stream.outbox.has_writer:  # else it is readied once drained
                stream.delivery.ready(stream)

    def clear(self) -> None:
        """Part of the signal interface; nothing waits on a feed."""

    def close(self) -> None:
        """Close the source (the hub forgets the subscription). Idempotent."""
        if self.closed_reason is None:
            self.closed_reason = "closed"
        self.source.close()

    def detach(self) -> None:
        """Stop delivering this feed on its stream and close its source."""
        try:
            self.stream.feeds.remove(self)
        except ValueError:
            pass
        self.close()


class Delivery:
    """The fan-out of one worker process; ``create_app`` builds one per application.

    Args:
        delivered: ``delivered(transport, count)`` once per round and transport (metrics).
        observe_latency: ``observe_latency(transport, seconds)`` once per round and
            transport: from the oldest event written in the round being stored to its
            bytes being handed to the socket.
        batch: the most items one feed gives per round.
    """

    def __init__(
        self,
        delivered: Callable[[str, int], None] | None = None,
        observe_latency: Callable[[str, float], None] | None = None,
        batch: int = BATCH,
    ):
        self.batch = batch
        self._delivered = delivered
        self._observe_latency = observe_latency
        self._ready: dict[Stream, None] = {}
        self._streams: set[Stream] = set()
        self._wake = gevent.event.Event()
        self._loop: gevent.Greenlet | None = None
        self.idle = gevent.event.Event()  # set while nothing is ready (the fan-out caught up)
        self.idle.set()
        self.rounds = 0

    # -- streams --------------------------------------------------------------------

    def stream(self, outbox: Outbox, transport: str, client: str = "?") -> Stream:
        """A new :class:`Stream` over a connection's ``outbox``."""
        stream = Stream(self, outbox, transport, client)
        self._streams.add(stream)
        return stream

    def attach(self, stream: Stream, source: Source, framer: Framer, topic: str | None = None) -> Feed:
        """Deliver ``source`` on ``stream`` with ``framer``, from now on.

        Whatever the source holds already (a replay) is taken in the next round.
        """
        feed = Feed(stream, source, framer, topic)
        stream.feeds.append(feed)
        source.wake_with(feed)  # sets it: anything queued is taken at once
        return feed

    def ready(self, stream: Stream) -> None:
        """Put ``stream`` on the next round (its feeds have items, or its backlog drained)."""
        ready = self._ready
        if stream in ready:
            return
        if not ready:  # the first of a round: wake the fan-out (once, not per stream)
            if self.idle.is_set():
                self.idle.clear()
            self._wake.set()
            if self._loop is None:
                self._loop = gevent.spawn(self._run)
        ready[stream] = None

    def pace(self, timeout: float = 1.0) -> None:
        """Let the fan-out catch up: called by a connection's reader after a bounded batch
        of messages (each publish readies streams), so a flood from one publisher is paced
        by delivery instead of starving it. Waits at most ``timeout`` seconds."""
        gevent.sleep(0)  # others' turn (writers, other readers) even when nothing is ready
        if not self.idle.is_set():
            self.idle.wait(timeout)

    def forget(self, stream: Stream) -> None:
        self._streams.discard(stream)
        self._ready.pop(stream, None)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def close(self) -> None:
        """Stop the fan-out greenlet (tests; a worker just exits)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.kill(block=False)

    # -- the fan-out greenlet -------------------------------------------------------

    def _run(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            wake.clear()
            try:
                self.round()
            except Exception:
                log.error("delivery round failed", exc_info=True)

    def round(self) -> None:
        """Pump every ready stream once (the fan-out greenlet's one step)."""
        ready, self._ready = self._ready, {}
        self.rounds += 1
        pump = self._pump
        counts: dict[str, int] = {}
        oldest: dict[str, float] = {}
        # The streams of a round are mostly of one transport: its count is kept in locals
        # and put in the dicts when another transport comes (and at the end).
        transport, count, first = "", 0, _NEVER
        left = YIELD_EVERY
        for stream in ready:
            if not left:
                gevent.sleep(0)
                left = YIELD_EVERY
            left -= 1
            if stream.outbox.has_writer or stream.done.is_set():
                continue  # its writer re-readies it once drained
            if stream.gate is not None and not stream.gate.is_set():
                continue  # readied again when the gate opens
            try:
                events, first_time = pump(stream)
            except Exception:  # a framer's bug: end this stream, not the round
                log.error("delivery to %s (%s) failed", stream.client, stream.transport, exc_info=True)
                stream.close()
                continue
            if events:
                if stream.transport != transport:
                    if count:
                        counts[transport] = counts.get(transport, 0) + count
                        oldest[transport] = min(first, oldest.get(transport, _NEVER))
                    transport, count, first = stream.transport, 0, _NEVER
                count += events
                if first_time < first:
                    first = first_time
        if count:
            counts[transport] = counts.get(transport, 0) + count
            oldest[transport] = min(first, oldest.get(transport, _NEVER))
        if counts:
            now = time.time()
            for name, total in counts.items():
                if self._delivered is not None:
                    self._delivered(name, total)
                if self._observe_latency is not None:
                    self._observe_latency(name, max(0.0, now - oldest[name]))
        if not self._ready:
            self.idle.set()
        else:
            self._wake.set()

    @staticmethod
    def _closed(stream: Stream, feed: Feed, reason: str, out: list) -> bool:
        """The feed's source ended: let the framer say its last words; whether the stream ends."""
        feed.closed_reason = reason
        try:
            stream.feeds.remove(feed)
        except ValueError:
            pass
        return feed.framer.closed(reason, out)

    def _pump(self, stream: Stream) -> tuple[int, float]:
        """Take one batch from each ready feed of ``stream``, frame it, write it once."""
        feeds, stream._ready = stream._ready, []
        out: list = []
        events = 0
        first_time = _NEVER
        ends = False
        most = self.batch
        for feed in feeds:
            feed.pending = False
            if feed.closed_reason is not None:
                continue
            batch = most
            room = feed.room
            if room is not None:
                batch = min(batch, room())
                if batch <= 0:
                    continue  # the framer sets the feed again when it has room
            try:
                items = feed.source.take(batch)
            except SubscriptionClosed as exc:
                ends = self._closed(stream, feed, exc.reason, out) or ends
                continue
            except BackendUnavailable as exc:  # a history read (replay or catch-up) failed
                log.warning(
                    "delivery of %s to %s (%s) stopped: the event store is unavailable: %s",
                    feed.topic or "a subscription",
                    stream.client,
                    stream.transport,
                    exc,
                )
                feed.source.close()
                ends = self._closed(stream, feed, "unavailable", out) or ends
                continue
            if not items:
                continue
            if feed.closed_reason is not None:
                # take() read history (it may wait on the store), and meanwhile the
                # connection let go of this feed and told its client so: nothing of it
                # may follow that reply.
                continue
            if len(items) >= batch:
                feed.set()  # more may be waiting: another round, after the others' turn
            # Items come in order, so the first event is the oldest (for the latency
            # histogram); a slow consumer's gap is always the last item (its source closes).
            for item in items:
                if item.__class__ is not Gap:
                    if item.time < first_time:
                        first_time = item.time
                    break
            last = items[-1]
            if last.__class__ is Gap and last.slow:
                log.info(
                    "slow consumer dropped: client %s, transport %s, topic %s: fell behind its queue and history",
                    stream.client,
                    stream.transport,
                    last.topic,
                )
            events += feed.framer.frame(items, out)
            if out and not ends:
                # Out before the next feed's take(), which may wait on a history read:
                # a reply the connection sends meanwhile must not overtake these events.
                stream.outbox.write(out)
                out = []
        if ends:
            stream.end(out)
        elif out:
            stream.outbox.write(out)  # the round skips done streams: no check needed
        return events, first_time
