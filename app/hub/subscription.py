"""One subscriber's view of a topic: replay from history, then live, through a bounded queue.

The hub *offers* each live event to every subscription without ever waiting; the
subscriber *takes* items at its own pace with :meth:`Subscription.get` or
:meth:`Subscription.get_many`. The two rules of DESIGN.md §3 live here:

* Seam rule: a subscription is registered for live events *before* it reads history,
  and every item is checked against the cursor of the last item delivered, so an
  event published during a replay is delivered exactly once, in order.
* Slow consumers: the live queue holds at most ``maxsize`` events and ``max_bytes``
  bytes (each event counted as its JSON, :attr:`~app.events.Event.size`). When it is full the
  subscription stops queueing and, once the subscriber has taken what is queued, reads
  the missed events back from history (transparently). If history no longer has them,
  the subscriber gets a :class:`~app.events.Gap` with ``slow=True`` and the subscription
  closes. Memory per subscriber is bounded either way.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Union

from gevent.event import Event as Signal

from ..events import Cursor, Event, Gap

Item = Union[Event, Gap]
ReadAfter = Callable[[Cursor, int], "tuple[list[Event], bool]"]

# What _queue and _pending hold until their first event: an empty deque costs 760 bytes
# (its first block), and most subscriptions sit idle; the deque is made on first use.
# Typed as the empty tuple, which is always false: a truth test narrows the attributes to a deque.
_EMPTY: tuple[()] = ()


class SubscriptionClosed(Exception):
    """The subscription ended; ``reason`` says why ("closed", "slow consumer", "shutdown")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """A subscriber's ordered, gap-aware stream of one topic's events.

    Created by :meth:`app.hub.Hub.subscribe`; not thread-safe, but safe between greenlets
    (the hub offers from the publisher's greenlet, one consumer greenlet takes).

    Use it as a context manager, or call :meth:`close`, so the hub forgets it::

        with hub.subscribe("chat", since=cursor) as sub:
            while True:
                item = sub.get(timeout=15)     # Event, Gap, or None on timeout
    """

    def __init__(
        self,
        topic: str,
        since: Cursor | None,
        read_after: ReadAfter,
        maxsize: int,
        on_close: Callable[["Subscription"], None],
        observer=None,
        max_bytes: int | None = None,
    ):
        self.topic = topic
        self.maxsize = maxsize
        self.max_bytes = max_bytes  # None: bounded by events only
        self.close_reason: str | None = None
        self.overflows = 0  # times the live queue filled up (each costs a history read)
        self._read_after = read_after
        self._on_close = on_close
        self._observer = observer
        self._high_water = 0
        self._replayed = 0  # history events taken but not yet reported (one metrics write per take)
        self._last = since
        self._syncing = since is not None
        self._first_sync = since is not None  # only a resume's first read may find an old gap
        self._pending: deque[Event] | tuple[()] = _EMPTY  # events read from history, not yet taken
        self._queue: deque[Event] | tuple[()] = _EMPTY  # live events offered by the hub
        self._queued_bytes = 0  # the sizes of the events in _queue
        self._overflow = False
        self._gap: Gap | None = None
        self._close_after_gap = False
        self._wakeup = Signal()

    # -- the hub's side -----------------------------------------------------------------

    def offer(self, event: Event, size: int | None = None) -> None:
        """Queue a live event without blocking (called by the hub for every publish).

        A full queue (``maxsize`` events, or ``max_bytes`` with this one) switches the
        subscription to catch-up-from-history mode; events offered meanwhile are dropped
        here because history already holds them.

        Args:
            event: the event.
            size: ``event.size``, which the hub measures once for all its subscribers.
        """
        if self.close_reason is not None or self._overflow:
            return
        if size is None:
            size = event.size
        queued = self._queue
        # An empty queue takes one event of any size: a single event larger than the
        # bound would otherwise always overflow, costing a history read for nothing.
        if len(queued) >= self.maxsize or (
            self.max_bytes is not None and queued and self._queued_bytes + size > self.max_bytes
        ):
            self._overflow = True
            self.overflows += 1
        else:
            if isinstance(queued, tuple):  # _EMPTY
                self._queue = queued = deque()
            queued.append(event)
            self._queued_bytes += size
            if len(queued) > self._high_water:
                self._high_water = len(queued)
                if self._observer is not None:
                    self._observer.queue_depth(self._high_water)
        self._wakeup.set()

    @property
    def positioned(self) -> bool:
        """Whether the subscription knows where it stands in the topic: it has taken an
        event, was given ``since``, or has a live event queued. Only a live-only
        subscription that has received nothing yet is not (see :meth:`resync`)."""
        return self._last is not None or bool(self._queue)

    def resync(self, start: Cursor | None = None) -> None:
        """Catch up from history, because the live feed may have missed events.

        Called through :meth:`app.hub.Hub.resync_all` when a backend's live feed was cut
        and is whole again (Redis Pub/Sub reconnected). The live queue is dropped (history
        holds those events too) and history is read after the last event taken, the path
        an overflow takes; the seam rule then dedupes what arrives live meanwhile. A gap
        found by that first read is the backend's loss, not the subscriber's slowness: it
        is delivered as a plain :class:`~app.events.Gap` and the subscription goes on.

        Args:
            start: where to read from when the subscription is not :attr:`positioned`
                (live-only, nothing received yet): a cursor at or before the first event
                it may have missed. Without one such a subscription just stays live.
        """
        if self.close_reason is not None:
            return
        if self._last is None:
            if self._queue:
                # Nothing taken yet: the first queued event is delivered first, and the
                # read resumes after it (_take sets _last when it hands the event out).
                self._pending = deque((*self._pending, self._queue.popleft()))
            elif start is not None:
                self._last = start
            else:
                return
        self._queue = _EMPTY
        self._queued_bytes = 0
        self._overflow = False
        self._syncing = True
        self._first_sync = True
        self._wakeup.set()

    # -- the subscriber's side ----------------------------------------------------------

    def wake_with(self, signal: Signal) -> None:
        """Set ``signal``, instead of a signal of its own, whenever an item may be ready.

        For one reader of several subscriptions (a multi-topic stream): given the same
        signal, they all wake it, and the reader waits on that signal, then takes from each
        with ``timeout=0``. No greenlet per subscription is needed. Do not mix this with a
        :meth:`get` that waits: it clears the signal it waits on. Call it before the first
        take; it sets ``signal``, so whatever is queued already is taken at once.

        Args:
            signal: a ``gevent.event.Event`` shared by the subscriptions of one reader.
        """
        self._wakeup = signal
        signal.set()

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def last_cursor(self) -> str | None:
        """Cursor of the last event taken (or the ``since`` given): where a resume starts."""
        return None if self._last is None else str(self._last)

    @property
    def depth(self) -> int:
        """Events waiting to be taken (live queue plus replay page)."""
        return len(self._queue) + len(self._pending)

    @property
    def queued_bytes(self) -> int:
        """Bytes (the events' JSON) in the live queue."""
        return self._queued_bytes

    def get(self, timeout: float | None = None) -> Item | None:
        """Take the next item, waiting up to ``timeout`` seconds (``None`` = forever).

        Returns:
            The next :class:`Event`, or a :class:`Gap` when events were lost before the
            next one, or ``None`` when the timeout passed with nothing to take.

        Raises:
            SubscriptionClosed: the subscription was closed (by :meth:`close`, by the
                hub's shutdown, or after a slow-consumer gap was taken).
        """
        item = self._wait(timeout)
        if self._replayed:
            self._report_replayed()
        return item

    def _wait(self, timeout: float | None) -> Item | None:
        # get() without reporting replayed events, so get_many() reports its batch once.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.close_reason is not None:
                raise SubscriptionClosed(self.close_reason)
            item = self._take()
            if item is not None:
                return item
            if self.close_reason is not None:
                raise SubscriptionClosed(self.close_reason)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._wakeup.clear()
            if not self._wakeup.wait(remaining) and deadline is not None and time.monotonic() >= deadline:
                return None

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Item]:
        """Wait up to ``timeout`` for the first item, then take what is ready, without waiting.

        This is the drain a long poll or a batching writer wants: one wake-up, every
        queued item (up to ``max_items``) in one response or one write.

        Returns:
            Up to ``max_items`` items in order; an empty list on timeout.

        Raises:
            SubscriptionClosed: as :meth:`get`, when nothing was taken first.
        """
        first = self._wait(timeout)
        if first is None:
            return []
        items: list[Item] = [first]
        while len(items) < max_items and self.close_reason is None:
            item = self._take()
            if item is None:
                break
            items.append(item)
        if self._replayed:
            self._report_replayed()
        return items

    def take(self, max_items: int) -> list[Item]:
        """Take what is ready now, up to ``max_items``, without waiting: :meth:`get_many`
        with ``timeout=0``, for a reader that is woken by :meth:`wake_with` (the delivery
        layer). The common case, live events and nothing else to do, skips the general
        path; the seam rule is applied all the same.

        Raises:
            SubscriptionClosed: as :meth:`get_many`.
        """
        queue = self._queue
        if (
            not queue
            or self._pending
            or self._syncing
            or self._overflow
            or self._gap is not None
            or self.close_reason is not None
        ):
            return self.get_many(max_items, 0)
        items: list[Item] = []
        is_new = self._is_new  # the seam rule (a subclass may define it per topic)
        while queue and len(items) < max_items:
            event = queue.popleft()
            self._queued_bytes -= event.size
            if is_new(event):  # skip what a replay already gave
                self._last = event.cursor
                items.append(event)
        return items

    def close(self, reason: str = "closed") -> None:
        """End the subscription and wake a waiting :meth:`get`. Idempotent."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._queue = self._pending = _EMPTY
        self._queued_bytes = 0
        self._wakeup.set()
        self._on_close(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _report_replayed(self) -> None:
        count, self._replayed = self._replayed, 0
        if self._observer is not None:
            self._observer.replayed(count)

    def _epoch_moved(self, event: Event) -> bool:
        """Whether ``event`` is of another epoch than the last one taken."""
        last = self._last
        return last is not None and event.cursor.epoch != last.epoch

    def _is_new(self, event: Event) -> bool:
        last = self._last
        return last is None or event.cursor.epoch != last.epoch or event.cursor.position > last.position

    def _take(self) -> Item | None:
        """The next item without waiting, or None. May read history (catch-up)."""
        while True:
            if self._gap is not None:
                gap, self._gap = self._gap, None
                if self._close_after_gap:
                    self.close("slow consumer")
                return gap
            if self._pending:
                event = self._pending.popleft()
                self._last = event.cursor
                self._replayed += 1  # reported by get()/get_many(), once per call
                return event
            if self._syncing:
                self._sync()
                continue
            while self._queue:
                event = self._queue.popleft()
                self._queued_bytes -= event.size
                if self._epoch_moved(event):
                    # History's epoch changed under this subscription (Redis flushed, or a
                    # shard restarted empty): history, not the live feed, says what is lost.
                    self.resync()
                    break
                if self._is_new(event):  # seam rule: skip what the replay already gave
                    self._last = event.cursor
                    return event
            if self._syncing:
                continue
            if self._overflow:
                # Queue drained after an overflow: read the dropped events back from history.
                self._overflow = False
                self._syncing = True
                continue
            return None

    def _sync(self) -> None:
        """Read one page of history after the last cursor into the pending list."""
        assert self._last is not None, "a subscription syncs only from a known cursor"
        page_size = max(self.maxsize, 1)
        events, gap = self._read_after(self._last, page_size)
        if gap:
            self._gap = Gap(self.topic, slow=not self._first_sync)
            self._close_after_gap = not self._first_sync
            if self._observer is not None:
                self._observer.gap(self.topic, self._gap.slow)
        self._first_sync = False
        if len(events) < page_size:
            self._syncing = False
        if self._close_after_gap:
            return
        if events:
            if isinstance(self._pending, tuple):  # _EMPTY
                self._pending = deque(events)
            else:
                self._pending.extend(events)
