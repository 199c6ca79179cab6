"""Work queues in process memory, for one worker (the contract is :mod:`app.hub.queues`').

Each queue is a deque of waiting messages, the messages in flight (which consumer holds
each, until when), and its consumers in round-robin order. Nothing here yields to another
greenlet except the ack-timeout sweeper's sleep, so a send, a hand-out and an ack are each
atomic; a batch (a STOMP COMMIT) is checked whole, then stored whole.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import deque
from typing import Callable, Sequence

import gevent

from ..events import Cursor, Event
from .batch import Publication
from .queues import Consumer, Delivery, NullQueueObserver, QueueFull, QueueLimits, QueueObserver, QueueStats, dlq_name
from .subscription import SubscriptionClosed

__all__ = ["MemoryQueues"]

log = logging.getLogger(__name__)


class _Message:
    __slots__ = ("event", "count", "size", "last")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.count = 0  # deliveries so far
        self.size = event.size
        self.last: Consumer | None = None  # who had it last (a redelivery prefers someone else)


class _Queue:
    __slots__ = ("name", "ready", "in_flight", "consumers", "turn", "bytes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready: deque[_Message] = deque()
        self.in_flight: dict[str, tuple[_Message, Consumer, float]] = {}  # event id -> (message, holder, deadline)
        self.consumers: list[Consumer] = []
        self.turn = 0  # where the round robin goes on
        self.bytes = 0

    @property
    def count(self) -> int:
        return len(self.ready) + len(self.in_flight)

    @property
    def idle(self) -> bool:
        return not self.ready and not self.in_flight and not self.consumers


class MemoryQueues:
    """The in-memory queue store.

    Args:
        limits: bounds, ack timeout, deliveries before the dead-letter queue.
        observer: told of acks, redeliveries, dead letters and refusals.
        clock: monotonic seconds (the ack timeout); wall time stamps the events.
        epoch: the message ids' epoch (a random one by default).
        sweep_interval: seconds between ack-timeout sweeps (a quarter of the timeout,
            at most one second, by default).
    """

    name = "memory"

    def __init__(
        self,
        limits: QueueLimits,
        observer: QueueObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        epoch: str | None = None,
        sweep_interval: float | None = None,
    ):
        self.limits = limits
        self.observer = observer or NullQueueObserver()
        self.epoch = epoch or secrets.token_hex(6)
        self._clock = clock
        self._numbers = itertools.count(1)
        self._queues: dict[str, _Queue] = {}
        self._closed_reason: str | None = None
        interval = sweep_interval if sweep_interval is not None else min(limits.ack_timeout / 4, 1.0)
        self._sweeper = gevent.spawn(self._sweep_forever, max(interval, 0.01))

    # -- sending ------------------------------------------------------------------------

    def commit(self, hub, items: Sequence[Publication]) -> list[Event]:
        """Store a batch of topic events and queue messages: all of it or, raising, none.

        Raises:
            QueueFull: a queue's bound, or the number of queues (nothing stored).
            TooManyTopics: from the hub's check of new topics (nothing stored).
        """
        counts: dict[str, list[int]] = {}
        for item in items:
            if item.kind == "queue":
                added = counts.setdefault(item.name, [0, 0])
                added[0] += 1
                added[1] += _size(item)
        new = [name for name in counts if name not in self._queues]
        if new and len(self._queues) + len(new) > self.limits.max_queues:
            self.observer.refused("queues")
            raise QueueFull(new[0], "queues", self.limits.max_queues)
        for name, (count, size) in counts.items():
            queue = self._queues.get(name)
            held, held_bytes = (queue.count, queue.bytes) if queue is not None else (0, 0)
            if held + count > self.limits.max_messages:
                self.observer.refused("queue_messages")
                raise QueueFull(name, "messages", self.limits.max_messages)
            if held_bytes + size > self.limits.max_bytes:
                self.observer.refused("queue_bytes")
                raise QueueFull(name, "bytes", self.limits.max_bytes)
        hub._check_topic_room([item.name for item in items if item.kind == "topic"])
        stored = []
        for item in items:
            if item.kind == "topic":
                stored.append(
                    hub.publish(
                        item.name, item.data, type=item.type, sender=item.sender, headers=item.headers, raw=item.raw
                    )
                )
            else:
                stored.append(self._enqueue(item))
        return stored

    def _enqueue(self, item: Publication) -> Event:
        event = Event(
            Cursor(self.epoch, (next(self._numbers),)),
            item.name,
            item.type,
            item.data,
            item.sender,
            time.time(),
            headers=item.headers,
            raw=item.raw,
        )
        queue = self._queue(item.name)
        message = _Message(event)
        queue.ready.append(message)
        queue.bytes += message.size
        self._hand_out(queue)
        return event

    # -- consuming ----------------------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int) -> Consumer:
        """A new consumer of ``queue_name`` holding at most ``prefetch`` messages un-acknowledged.

        Raises:
            SubscriptionClosed: the store is shutting down.
            QueueFull: the queue is new and ``max_queues`` are held.
        """
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)
        if queue_name not in self._queues and len(self._queues) >= self.limits.max_queues:
            self.observer.refused("queues")
            raise QueueFull(queue_name, "queues", self.limits.max_queues)
        queue = self._queue(queue_name)
        consumer = Consumer(queue_name, prefetch, self._settle, self._closed)
        queue.consumers.append(consumer)
        self._hand_out(queue)
        return consumer

    def _settle(self, consumer: Consumer, event_id: str, ref: object, how: str) -> bool:
        queue = self._queues.get(consumer.queue)
        if queue is None:
            return False  # the queue was forgotten: nothing of it is in flight
        held = queue.in_flight.get(event_id)
        if held is None or held[1] is not consumer:
            return False  # taken back meanwhile (ack timeout): no longer this consumer's
        message = held[0]
        del queue.in_flight[event_id]
        if how == "ack":
            queue.bytes -= message.size
            self.observer.acked(queue.name, 1)
        else:
            self._put_back(queue, message)
        if consumer.close_reason is None:
            self._hand_out(queue)  # a closing consumer hands out once, when it has left
        self._forget_if_idle(queue)
        return True

    def _closed(self, consumer: Consumer) -> None:
        queue = self._queues.get(consumer.queue)
        if queue is None:
            return
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        self._hand_out(queue)
        self._forget_if_idle(queue)

    def _put_back(self, queue: _Queue, message: _Message) -> None:
        # A NACK, a release at close or an ack timeout: back at the front for another
        # consumer, or to the dead-letter queue once delivered max_deliveries times.
        if message.count >= self.limits.max_deliveries:
            queue.bytes -= message.size
            dead = self._queue(dlq_name(queue.name))
            event = message.event  # the same message (same id), now of the dead-letter queue
            message.event = Event(
                event.cursor,
                dead.name,
                event.type,
                event.data,
                event.sender,
                event.time,
                headers=event.headers,
                raw=event.raw,
            )
            dead.ready.append(message)
            dead.bytes += message.size
            message.count = 0  # delivered afresh from the dead-letter queue
            message.last = None
            self.observer.dead_lettered(queue.name, 1)
            self._hand_out(dead)
            return
        queue.ready.appendleft(message)
        self.observer.redelivered(queue.name, 1)

    def _hand_out(self, queue: _Queue) -> None:
        # Round robin over the consumers with room; a message given back prefers a
        # consumer other than the one that had it, when another one has room.
        while queue.ready:
            consumers = [c for c in queue.consumers if c.room > 0]
            if not consumers:
                return
            message = queue.ready[0]
            start = queue.turn % len(queue.consumers)
            order = queue.consumers[start:] + queue.consumers[:start]
            chosen = None
            for consumer in order:
                if consumer.room > 0 and (consumer is not message.last or len(consumers) == 1):
                    chosen = consumer
                    break
            if chosen is None:
                return
            queue.turn = queue.consumers.index(chosen) + 1
            queue.ready.popleft()
            message.count += 1
            message.last = chosen
            queue.in_flight[message.event.id] = (message, chosen, self._clock() + self.limits.ack_timeout)
            chosen.give(Delivery(message.event, message.count), message)

    # -- the ack timeout ------------------------------------------------------------------

    def sweep(self) -> int:
        """Take back every message held past the ack timeout; how many."""
        now = self._clock()
        taken = 0
        for queue in list(self._queues.values()):
            expired = [(event_id, held) for event_id, held in queue.in_flight.items() if held[2] <= now]
            for event_id, (message, consumer, _deadline) in expired:
                if consumer.take_back(event_id) is None:
                    continue
                del queue.in_flight[event_id]
                log.info(
                    "queue %s: message %s not acknowledged within %g s; put back",
                    queue.name,
                    event_id,
                    self.limits.ack_timeout,
                )
                self._put_back(queue, message)
                taken += 1
            if expired:
                self._hand_out(queue)
        return taken

    def _sweep_forever(self, interval: float) -> None:
        while True:
            gevent.sleep(interval)
            try:
                self.sweep()
            except Exception:  # a bug: log it, and keep sweeping
                log.error("sweeping queue ack timeouts failed", exc_info=True)

    # -- the rest -------------------------------------------------------------------------

    def stats(self) -> dict[str, QueueStats]:
        """Each queue held: waiting and in-flight messages."""
        return {name: QueueStats(len(q.ready), len(q.in_flight)) for name, q in self._queues.items()}

    def close(self, reason: str = "shutdown") -> None:
        """Close every consumer (their messages stay queued) and refuse new ones."""
        self._closed_reason = reason
        for queue in list(self._queues.values()):
            for consumer in list(queue.consumers):
                consumer.close(reason)
        self._sweeper.kill(block=False)

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name)
        return queue

    def _forget_if_idle(self, queue: _Queue) -> None:
        if queue.idle and self._queues.get(queue.name) is queue:
            del self._queues[queue.name]


def _size(item: Publication) -> int:
    # The bytes a message counts for, before it is stored (the event's size, as stored).
    probe = Event(
        Cursor("0", (0,)), item.name, item.type, item.data, item.sender, 0.0, headers=item.headers, raw=item.raw
    )
    return probe.size
