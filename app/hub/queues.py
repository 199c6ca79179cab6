"""Work queues (DESIGN.md §10): each message to exactly one consumer, kept until acknowledged.

A topic broadcasts to every subscriber and keeps history; a queue keeps each message
until one consumer has taken it *and acknowledged it*. The contract every queue store
keeps (:mod:`app.hub.memory_queues` for one worker, :mod:`app.hub.redis_queues` with
Redis Streams consumer groups for many), and that tests/unit/test_backend_contract.py
checks on both:

* A message sent to a queue is stored even when no one consumes it yet, and goes to
  exactly one consumer at a time: the next one, round robin, among those with room in
  their prefetch window (with Redis: among the workers that ask, then round robin within
  a worker).
* A consumer owns what it was given until it acknowledges it (:meth:`Consumer.ack`). A
  NACK (:meth:`Consumer.nack`), the consumer's end (:meth:`Consumer.close`: unsubscribe,
  disconnect), its process dying, or the ack timeout puts the message back for another
  consumer, with a delivery count one higher (``redelivered``). A message delivered
  ``max_deliveries`` times goes to the queue ``<name>.dlq`` instead of back.
* Queues are bounded: ``max_messages`` and ``max_bytes`` each (waiting and in flight
  counted together), and at most ``max_queues`` queues; a send beyond a bound raises
  :class:`QueueFull` and stores nothing. Dead-lettering is never refused (the message
  was accepted once; refusing it then would lose it).

A queue message is an :class:`~app.events.Event` whose ``topic`` is the queue's name and
whose ``id`` stays the same across redeliveries; it is what a consumer acknowledges.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from gevent.event import Event as Signal

from ..events import Event
from .batch import Publication
from .subscription import SubscriptionClosed

__all__ = ["Consumer", "Delivery", "QueueFull", "QueueLimits", "QueueObserver", "QueueStats", "QueueStore", "dlq_name"]

#: The suffix of a queue's dead-letter queue.
DLQ_SUFFIX = ".dlq"


def dlq_name(queue: str) -> str:
    """The dead-letter queue of ``queue``."""
    return queue + DLQ_SUFFIX


class QueueFull(Exception):
    """A send to a queue that holds its maximum, or to a new queue beyond ``max_queues``.

    Nothing was stored. HTTP answers 429 ``queue_full``; STOMP an ERROR "queue full".

    Attributes:
        queue: the queue.
        bound: ``messages``, ``bytes`` or ``queues``.
        limit: that bound's value.
    """

    def __init__(self, queue: str, bound: str, limit: int):
        what = {"messages": f"{limit} messages", "bytes": f"{limit} bytes", "queues": f"{limit} queues"}[bound]
        where = "this server holds its maximum of" if bound == "queues" else f"queue {queue!r} holds its maximum of"
        super().__init__(f"{where} {what}")
        self.queue = queue
        self.bound = bound
        self.limit = limit


@dataclass(frozen=True)
class QueueLimits:
    """A queue store's settings.

    Attributes:
        max_messages: messages one queue holds (waiting and in flight).
        max_bytes: bytes one queue holds (each message counted as its event's size).
        max_queues: queues held at once (a queue with nothing in it and no consumer is
            forgotten in memory; with Redis it stays until deleted).
        ack_timeout: seconds a consumer may hold a message without acknowledging it.
        max_deliveries: deliveries of one message before it is dead-lettered.
    """

    max_messages: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_queues: int = 1000
    ack_timeout: float = 120.0
    max_deliveries: int = 5


@dataclass(frozen=True)
class Delivery:
    """One message handed to one consumer.

    Attributes:
        event: the message (``id`` is what to acknowledge; ``topic`` is the queue).
        count: how many times it has been delivered, this time included (1 = first).
    """

    event: Event
    count: int

    @property
    def redelivered(self) -> bool:
        return self.count > 1


@dataclass(frozen=True)
class QueueStats:
    """What a queue holds: ``depth`` messages waiting for a consumer, ``in_flight`` given
    to one and not yet acknowledged."""

    depth: int
    in_flight: int


class QueueObserver(Protocol):
    """Told of what happens to queue messages (app/metrics.py counts it)."""

    def acked(self, queue: str, count: int) -> None: ...
    def redelivered(self, queue: str, count: int) -> None: ...
    def dead_lettered(self, queue: str, count: int) -> None: ...
    def refused(self, limit: str) -> None: ...


class NullQueueObserver:
    def acked(self, queue, count):
        pass

    def redelivered(self, queue, count):
        pass

    def dead_lettered(self, queue, count):
        pass

    def refused(self, limit):
        pass


class QueueStore(Protocol):
    """What the hub needs from a place that keeps queues."""

    limits: QueueLimits

    def commit(self, hub, items: Sequence[Publication]) -> list[Event]: ...
    def consume(self, queue: str, prefetch: int) -> "Consumer": ...
    def stats(self) -> dict[str, QueueStats]: ...
    def close(self) -> None: ...


class Consumer:
    """One consumer of a queue: what the store gave it, waiting to be taken and acknowledged.

    The store calls :meth:`give`; the consumer's reader calls :meth:`get`, then
    :meth:`ack` or :meth:`nack` with the event's id. ``room`` is how many more messages
    it may be given (``prefetch`` minus what it holds un-acknowledged). Safe between
    greenlets; not thread-safe.

    Args:
        queue: the queue's name.
        prefetch: messages it may hold un-acknowledged at once (at least 1).
        settle: ``settle(consumer, event_id, ref, how)``: the store's side of an ack
            (``how="ack"``), a nack (``"nack"``) or a release at close (``"release"``).
            Returns False when the message was no longer this consumer's.
        on_close: called once when it closes, after its messages were released.
    """

    def __init__(
        self,
        queue: str,
        prefetch: int,
        settle: Callable[["Consumer", str, object, str], bool],
        on_close: Callable[["Consumer"], None] = lambda consumer: None,
    ):
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.close_reason: str | None = None
        self._settle = settle
        self._on_close = on_close
        self._given: deque[Delivery] = deque()  # given, not yet taken by get()
        self._held: dict[str, object] = {}  # event id -> the store's reference, until settled
        self._wakeup = Signal()

    @property
    def room(self) -> int:
        """How many more messages the store may give it now."""
        return 0 if self.close_reason is not None else self.prefetch - len(self._held)

    @property
    def held(self) -> int:
        """Messages it holds un-acknowledged (taken or not)."""
        return len(self._held)

    def holds(self, event_id: str) -> bool:
        return event_id in self._held

    # -- the store's side ---------------------------------------------------------------

    def give(self, delivery: Delivery, ref: object) -> None:
        """Hand it a message (the store checked ``room``)."""
        self._held[delivery.event.id] = ref
        self._given.append(delivery)
        self._wakeup.set()

    def take_back(self, event_id: str) -> object | None:
        """The store takes a message back (ack timeout): the reference, or None if not held."""
        ref = self._held.pop(event_id, None)
        if ref is not None:
            for delivery in self._given:
                if delivery.event.id == event_id:
                    self._given.remove(delivery)
                    break
        return ref

    # -- the reader's side --------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Delivery | None:
        """The next message given to it, waiting up to ``timeout`` seconds (``None``: forever).

        Returns:
            A :class:`Delivery`, or ``None`` after the timeout.

        Raises:
            SubscriptionClosed: the consumer was closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.close_reason is not None:
                raise SubscriptionClosed(self.close_reason)
            if self._given:
                return self._given.popleft()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._wakeup.clear()
            self._wakeup.wait(remaining)

    def ack(self, event_id: str) -> bool:
        """Acknowledge a message it holds: it is done, gone from the queue.

        Returns:
            False when it no longer held it (taken back after the ack timeout, or never
            given): nothing happens then.
        """
        return self._settle_one(event_id, "ack")

    def nack(self, event_id: str) -> bool:
        """Give a message back: it goes to another consumer (or to the dead-letter queue)."""
        return self._settle_one(event_id, "nack")

    def _settle_one(self, event_id: str, how: str) -> bool:
        ref = self._held.pop(event_id, None)
        if ref is None:
            return False
        return self._settle(self, event_id, ref, how)

    def close(self, reason: str = "closed") -> None:
        """Stop consuming: every message it holds un-acknowledged goes back to the queue.
        Idempotent; wakes a waiting :meth:`get`."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        held, self._held = self._held, {}
        self._given.clear()
        for event_id, ref in held.items():
            self._settle(self, event_id, ref, "release")
        self._wakeup.set()
        self._on_close(self)

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
