"""The event hub: publish, read history, subscribe. Every transport goes through here.

The hub knows nothing of HTTP or sockets, and nothing of where history is kept: a
*backend* stores events and hands each new one back to :meth:`Hub._dispatch` (directly
in memory, through a Pub/Sub listener with Redis), and the hub offers it to the local
subscriptions of that topic without ever waiting for one of them.

Typical use by a transport::

    page = hub.history("chat", since=cursor, limit=50)   # polling
    with hub.subscribe("chat", since=cursor) as sub:      # streaming / long polling
        for item in iter(lambda: sub.get(timeout=15), ...):
            ...

Presence (who is in a topic, :mod:`app.hub.presence`): a stream subscribes with
``member=<its sender>`` and counts while open; a poll calls ``hub.presence.touch``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence

from ..events import Cursor, Event, Gap, InvalidTopic, Page, RawBody, check_topic, check_type
from .batch import Publication, check_publication
from .queues import Consumer, Delivery, QueueFull
from .subscription import Item, Subscription, SubscriptionClosed
from .wildcard import PatternSubscription, pattern_problem

__all__ = [
    "Hub",
    "Backend",
    "BackendUnavailable",
    "TooManyTopics",
    "Subscription",
    "SubscriptionClosed",
    "Item",
    "Gap",
    "Page",
    "Publication",
    "Consumer",
    "Delivery",
    "QueueFull",
]


class BackendUnavailable(Exception):
    """The backend cannot take or serve events right now (e.g. Redis is down)."""


class TooManyTopics(Exception):
    """A publish would start a topic beyond the backend's limit (``SWITCHBOARD_MAX_TOPICS``).

    Nothing was stored. The transports turn it into their refusal (``app/limits.py``
    :func:`~app.limits.topic_refusal`: HTTP 429, a ``/ws`` error op, a STOMP ERROR).

    Attributes:
        limit: the number of topics the backend holds at most.
        retry_after: seconds until the oldest idle topic is forgotten, at the earliest.
    """

    def __init__(self, limit: int, retry_after: float):
        super().__init__(f"the event store holds its maximum of {limit} topics")
        self.limit = limit
        self.retry_after = retry_after


# After the errors above, which the presence registry imports from here.
from .presence import Presence, PresenceBackend  # noqa: E402


class Backend(PresenceBackend, Protocol):
    """What the hub needs from a place that keeps history and fans events out (and the
    three presence methods of :class:`~app.hub.presence.PresenceBackend`)."""

    name: str
    epoch: str

    def start(self, deliver) -> None: ...
    def close(self) -> None: ...
    @property
    def healthy(self) -> bool: ...
    def append(
        self,
        topic: str,
        type: str,
        data: Any,
        sender: str | None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        raw: RawBody | None = None,
    ) -> Event: ...
    def read_after(self, topic: str, cursor: Cursor, limit: int) -> tuple[list[Event], bool]: ...
    def read_latest(self, topic: str, limit: int) -> list[Event]: ...
    def last_cursor(self, topic: str) -> Cursor | None: ...
    def retained(self, topic: str) -> int: ...
    def topic_count(self) -> int | None: ...
    def acquire_lock(self, name: str, ttl: float) -> bool: ...
    def release_lock(self, name: str) -> None: ...
    def claim_once(self, name: str, ttl: float) -> bool: ...

    # ``append`` raises TooManyTopics for a new topic beyond the backend's topic limit.
    #
    # Optional: ``set_resync(callback)``. A backend whose live feed can miss events (Redis
    # Pub/Sub while it reconnects) gets :meth:`Hub.resync_all` through it, before
    # ``start``, and calls it each time its feed is whole again.
    #
    # Optional: ``watch(topic)`` and ``unwatch(topic)``. A backend that routes live events
    # per topic (Redis) is told when this process has a subscriber of a topic, before that
    # subscription reads history (``watch`` returns once the topic's events reach this
    # process), and when the topic's last local subscriber left.
    #
    # Optional: ``watch_pattern(pattern)``, ``unwatch_pattern(pattern)`` and ``wildcards``
    # (False: wildcard subscriptions are refused), the same for a wildcard subscription.
    #
    # Optional: ``set_in_use(predicate)``. A backend that forgets idle topics itself (the
    # in-memory sweep) gets ``predicate(topic)``, true while the topic has a subscriber in
    # this process, before ``start``: such a topic is never forgotten.


class HubObserver(Protocol):
    """Receives the hub's notable moments (app/metrics.py turns them into metrics)."""

    def subscribed(self, topic: str) -> None: ...
    def unsubscribed(self, topic: str, reason: str) -> None: ...
    def published(self, topic: str) -> None: ...
    def gap(self, topic: str, slow: bool) -> None: ...
    def replayed(self, count: int) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def refused(self, limit: str) -> None: ...
    def presence(self, topic: str, action: str) -> None: ...


class NullObserver:
    """An observer that ignores everything (the default)."""

    def subscribed(self, topic):
        pass

    def unsubscribed(self, topic, reason):
        pass

    def published(self, topic):
        pass

    def gap(self, topic, slow):
        pass

    def replayed(self, count):
        pass

    def queue_depth(self, depth):
        pass

    def refused(self, limit):
        pass

    def presence(self, topic, action):
        pass


class Hub:
    """Topics, history and subscriptions over one backend.

    Args:
        backend: where events are stored and how they come back for live delivery.
        queue_size: the live queue bound of every subscription, in events (DESIGN.md §3).
        observer: told of subscriptions, publishes, gaps, replays, queue depth and refusals.
        queue_bytes: the live queue bound of every subscription in bytes of the events'
            JSON (``SWITCHBOARD_QUEUE_BYTES``); ``None``: events only.
        presence_topics: ``presence_topics(topic)`` is true for the topics that have
            presence (``SWITCHBOARD_PRESENCE_TOPICS``); ``None``: none has.
        presence_ttl: seconds presence outlives its last sign of life
            (``SWITCHBOARD_PRESENCE_TTL``; see :class:`~app.hub.presence.Presence`).
        queues: the work-queue store (:mod:`app.hub.queues`); ``None``: no queues.
    """

    def __init__(
        self,
        backend: Backend,
        queue_size: int = 256,
        observer: HubObserver | None = None,
        queue_bytes: int | None = None,
        queues=None,
        *,
        presence_topics: Callable[[str], bool] | None = None,
        presence_ttl: float = 15.0,
    ):
        self.backend = backend
        self.queues = queues  # the work-queue store (app.hub.queues), or None
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.observer = observer or NullObserver()
        self.published = 0
        self._subs: dict[str, set[Subscription]] = {}
        self._patterns: set[PatternSubscription] = set()  # wildcard subscriptions (app.hub.wildcard)
        self._members: dict[Subscription, Callable[[], None]] = {}  # presence held by a subscription
        self._closed_reason: str | None = None
        set_resync = getattr(backend, "set_resync", None)
        if set_resync is not None:
            set_resync(self.resync_all)
        set_in_use = getattr(backend, "set_in_use", None)
        if set_in_use is not None:
            set_in_use(self._subs.__contains__)  # _forget deletes a topic's entry with its last subscriber
        self._watch = getattr(backend, "watch", None)
        self._unwatch = getattr(backend, "unwatch", None)
        self._watch_pattern = getattr(backend, "watch_pattern", None)
        self._unwatch_pattern = getattr(backend, "unwatch_pattern", None)
        backend.start(self._dispatch)
        self.presence = Presence(backend, presence_ttl, presence_topics, self._announced)
        self.presence.start()

    # -- writing ------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        type: str = "message",
        sender: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        raw: RawBody | None = None,
    ) -> Event:
        """Append an event to the topic's history and deliver it to every subscriber.

        Args:
            topic: a valid topic name.
            data: any JSON-serialisable value.
            type: the event type (SSE ``event:`` field); ``message`` by default.
            sender: who sent it, as the transport established it (never from the body).
            headers: user-defined headers (checked by :func:`app.events.check_headers`).
            raw: a STOMP SEND's own octets and content-type, when ``data`` would not give
                them back exactly.

        Returns:
            The stored event, with its cursor.

        Raises:
            app.events.InvalidTopic, app.events.InvalidEventType: bad names.
            BackendUnavailable: the backend cannot store events now.
            TooManyTopics: ``topic`` is new and the backend holds its maximum of topics
                (counted here, once for every transport, as limit ``topics``).
        """
        check_topic(topic)
        check_type(type)
        try:
            event = self.backend.append(topic, type, data, sender, headers=headers, raw=raw)
        except TooManyTopics:
            self.observer.refused("topics")
            raise
        self.published += 1
        self.observer.published(topic)
        return event

    def publish_batch(self, items: Sequence[Publication]) -> list[Event]:
        """Publish several events (topics and queues) together, or none of them.

        Every item is checked first (names, types, the topic limit, queue bounds), then all
        are stored; see :mod:`app.hub.batch`.

        Returns:
            The stored events, in the order of ``items``.

        Raises:
            app.events.InvalidTopic, app.events.InvalidEventType: bad names (nothing stored).
            TooManyTopics, QueueFull: a bound refused an item (nothing stored).
            BackendUnavailable: the backend cannot store events now (nothing stored).
        """
        for item in items:
            check_publication(item)
        if self.queues is not None:
            return self.queues.commit(self, items)
        if any(item.kind == "queue" for item in items):
            raise ValueError("this hub has no queue store")
        self._check_topic_room([item.name for item in items])
        return [
            self.publish(item.name, item.data, type=item.type, sender=item.sender, headers=item.headers, raw=item.raw)
            for item in items
        ]

    def _check_topic_room(self, topics: list[str]) -> None:
        """Raise TooManyTopics before a batch whose new topics would not all fit (memory:
        nothing yields between this check and the appends that follow)."""
        limit = getattr(self.backend, "max_topics", 0)
        if not limit or self.backend.name != "memory":
            return
        new = {topic for topic in topics if self.backend.last_cursor(topic) is None}
        if len(new) > 1 and (self.backend.topic_count() or 0) + len(new) > limit:
            self.observer.refused("topics")
            raise TooManyTopics(limit, getattr(self.backend, "sweep_interval", 1.0))

    # -- reading ------------------------------------------------------------------------

    def history(self, topic: str, since: str | None = None, limit: int = 50) -> Page:
        """Read retained events, for polling and for a page's first view.

        Args:
            topic: a valid topic name.
            since: a cursor the client saw last; ``None`` or ``""`` means "the newest
                ``limit`` events".
            limit: the most events to return.

        Returns:
            A :class:`Page`. Its ``cursor`` is the id of the last event returned, else the
            ``since`` given, else the topic's newest cursor, else ``""``. ``gap`` is True
            when events between ``since`` and the first returned event are lost (too old,
            or ``since`` is from another epoch); the page then starts at the oldest
            retained event.

        Raises:
            app.events.InvalidTopic: bad topic.
            app.events.InvalidCursor: ``since`` is not a cursor at all.
        """
        check_topic(topic)
        if not since:
            events = self.backend.read_latest(topic, limit)
            return Page(events, events[-1].id if events else self._newest(topic), False)
        cursor = Cursor.parse(since)
        events, gap = self.backend.read_after(topic, cursor, limit)
        if events:
            return Page(events, events[-1].id, gap)
        return Page(events, self._newest(topic) if gap else since, gap)

    def subscribe(self, topic: str, since: str | None = None, *, member: str | None = None) -> Subscription:
        """Start receiving a topic's events.

        The subscription is registered for live events before any history is read, so
        nothing published from this call on is missed (seam rule).

        Args:
            topic: a valid topic name.
            since: resume after this cursor: the events after it are replayed first
                (preceded by a :class:`Gap` if some are lost), then live ones follow.
                ``None`` or ``""``: live events only, from now on.
            member: the sender of the client behind a stream: it counts as present in the
                topic (if the topic has presence) until the subscription closes. Not for
                a parked long poll, which holds nothing between polls (``presence.touch``).

        Returns:
            A :class:`Subscription`; close it when done.

        Raises:
            app.events.InvalidTopic, app.events.InvalidCursor: bad arguments.
            SubscriptionClosed: the hub is shutting down.
        """
        check_topic(topic)
        cursor = Cursor.parse(since) if since else None
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)

        def read_after(after: Cursor, limit: int) -> tuple[list[Event], bool]:
            return self.backend.read_after(topic, after, limit)

        sub = Subscription(
            topic, cursor, read_after, self.queue_size, self._forget, self.observer, max_bytes=self.queue_bytes
        )
        self._subs.setdefault(topic, set()).add(sub)
        self.observer.subscribed(topic)
        if self._watch is not None:
            # Registered first, then the backend hears the topic, then (lazily) history is
            # read: an event is either live for this subscription or in what it reads.
            self._watch(topic)
        if member is not None:
            release = self.presence.hold(topic, member)
            if release is not None:
                self._members[sub] = release
        return sub

    def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        type: str = "message",
        sender: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        raw: RawBody | None = None,
    ) -> Event:
        """Send a message to a work queue (:mod:`app.hub.queues`): kept until one consumer
        has taken and acknowledged it.

        Raises:
            QueueFull: the queue (or the number of queues) is at its bound; nothing stored.
            BackendUnavailable: the queue store cannot store it now.
        """
        (event,) = self.publish_batch([Publication("queue", queue, data, type, sender, headers, raw)])
        return event

    def consume(self, queue: str, prefetch: int) -> "Consumer":
        """Start consuming a work queue, holding at most ``prefetch`` messages un-acknowledged.

        Raises:
            app.events.InvalidTopic: not a valid queue name.
            SubscriptionClosed: the hub is shutting down.
            QueueFull: a new queue beyond the number of queues held.
            BackendUnavailable: the queue store cannot be reached.
        """
        check_topic(queue)
        if self.queues is None:
            raise ValueError("this hub has no queue store")
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)
        return self.queues.consume(queue, prefetch)

    def queue_stats(self) -> dict:
        """Each queue's waiting and in-flight messages (``{name: QueueStats}``); empty without queues.

        Raises:
            BackendUnavailable: the queue store cannot tell now.
        """
        return self.queues.stats() if self.queues is not None else {}

    def subscribe_pattern(self, pattern: str) -> PatternSubscription:
        """Start receiving the live events of every topic ``pattern`` matches (``chat.*``,
        ``chat.#``; see :mod:`app.hub.wildcard`). No history is replayed.

        Raises:
            app.events.InvalidTopic: not a wildcard this hub takes.
            SubscriptionClosed: the hub is shutting down.
        """
        problem = pattern_problem(pattern)
        if problem is not None:
            raise InvalidTopic(problem)
        if not getattr(self.backend, "wildcards", True):
            raise InvalidTopic(
                "wildcard subscriptions are not available on a Redis Cluster with per-topic routing "
                "(sharded Pub/Sub has no pattern subscription); subscribe to each topic"
            )
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)
        sub = PatternSubscription(
            pattern, self.queue_size, self._forget_pattern, self.observer, max_bytes=self.queue_bytes
        )
        self._patterns.add(sub)
        self.observer.subscribed(pattern)
        if self._watch_pattern is not None:
            # As for a topic: registered first, then the backend hears the pattern's topics.
            self._watch_pattern(pattern)
        return sub

    def status(self) -> dict:
        """The backend's name, whether it can serve now, and its epoch (for health checks);
        with a backend that has more to say (Redis: mode, shards, counters), that under
        ``details``."""
        backend = self.backend
        status = {"backend": backend.name, "healthy": backend.healthy, "epoch": backend.epoch}
        details = getattr(backend, "status", None)
        if details is not None:
            status["details"] = details()
        return status

    def acquire_lock(self, name: str, ttl: float) -> bool:
        """Lead a deployment-wide singleton job for ``ttl`` seconds (the holder renews)."""
        return self.backend.acquire_lock(name, ttl)

    def release_lock(self, name: str) -> None:
        """Give up a lock taken with :meth:`acquire_lock`."""
        self.backend.release_lock(name)

    def claim_once(self, name: str, ttl: float) -> bool:
        """True the first time ``name`` is claimed in the deployment within ``ttl`` seconds
        (single-use tickets).

        Raises:
            BackendUnavailable: the backend cannot tell; treat it as a refusal.
        """
        return self.backend.claim_once(name, ttl)

    def subscriber_count(self, topic: str | None = None) -> int:
        """Live subscriptions in this process, for one topic or all."""
        if topic is not None:
            return len(self._subs.get(topic, ()))
        return sum(len(subs) for subs in self._subs.values()) + len(self._patterns)

    def topics(self) -> list[str]:
        """Topics with at least one local subscriber."""
        return [topic for topic, subs in self._subs.items() if subs]

    def topic_count(self) -> int | None:
        """Topics the backend holds now (memory: this process; Redis: the deployment, when
        ``SWITCHBOARD_MAX_TOPICS`` is set, else ``None``: not counted).

        Raises:
            BackendUnavailable: the backend cannot tell now.
        """
        return self.backend.topic_count()

    def resync_all(self, start_for: Callable[[str], Cursor] | None = None, topics: Iterable[str] | None = None) -> int:
        """Put every subscription into catch-up-from-history mode.

        For a backend whose live feed can miss events: Redis Pub/Sub calls this (through
        ``set_resync``, see :class:`Backend`) once it is subscribed again after a broken
        connection, and when it finds that history was lost (a new epoch). Each
        subscription then reads history after the last event it took
        (:meth:`Subscription.resync`), so no event that reached the backend is lost, and
        a loss of history shows up as a gap.

        Args:
            start_for: ``start_for(topic)`` is the cursor to read after for subscriptions
                that have received nothing yet (live-only ones): at or before the first
                event the live feed may have missed. Called once per such topic, before
                any subscription changes. Without it those subscriptions stay live.
            topics: only the subscriptions of these topics (a feed that carries some);
                ``None``: all.

        Returns:
            How many subscriptions were told to resync.

        Raises:
            BackendUnavailable: from ``start_for``; then no subscription was changed,
                and the backend calls again when it has reconnected.
        """
        if topics is None:
            subs = [sub for topic_subs in list(self._subs.values()) for sub in list(topic_subs)]
        else:
            subs = [sub for topic in topics for sub in list(self._subs.get(topic, ()))]
        starts: dict[str, Cursor] = {}
        if start_for is not None:
            for sub in subs:
                if not sub.positioned and sub.topic not in starts:
                    starts[sub.topic] = start_for(sub.topic)
        for sub in subs:
            sub.resync(starts.get(sub.topic))
        for pattern_sub in list(self._patterns):
            pattern_sub.resync()  # no history to read: a plain gap (app.hub.wildcard)
        return len(subs) + len(self._patterns)

    def close(self, reason: str = "shutdown", *, backend: bool = True) -> None:
        """Close every subscription (waking their readers) and refuse new ones.

        Presence stops first: what this process held is left to expire rather than
        announced as leaving (see :meth:`Presence.close`).

        Args:
            reason: the :class:`SubscriptionClosed` reason their readers get.
            backend: close the backend too. A graceful stop passes False: requests
                still in flight (a publish, a poll) keep using it until the process exits.
        """
        self._closed_reason = reason
        self.presence.close()
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close(reason)
        for pattern_sub in list(self._patterns):
            pattern_sub.close(reason)
        if self.queues is not None:
            self.queues.close(reason)  # consumers end; what they held goes back to its queue
        if backend:
            self.backend.close()

    # -- internals ----------------------------------------------------------------------

    def _newest(self, topic: str) -> str:
        last = self.backend.last_cursor(topic)
        return "" if last is None else str(last)

    def _dispatch(self, event: Event) -> None:
        subs = self._subs.get(event.topic)
        if subs:
            size = event.size  # measured once per event; each queue only adds it up
            for sub in tuple(subs):
                sub.offer(event, size)
        if self._patterns:
            for pattern_sub in tuple(self._patterns):
                if pattern_sub.matches(event.topic):
                    pattern_sub.offer(event)

    def _forget_pattern(self, sub: PatternSubscription) -> None:
        if sub in self._patterns:
            self._patterns.discard(sub)
            self.observer.unsubscribed(sub.topic, sub.close_reason or "closed")
            if self._unwatch_pattern is not None:
                self._unwatch_pattern(sub.topic)

    def _announced(self, topic: str, action: str) -> None:
        # A presence event the backend appended for this process: counted as published.
        self.published += 1
        self.observer.published(topic)
        self.observer.presence(topic, action)

    def _forget(self, sub: Subscription) -> None:
        release = self._members.pop(sub, None)
        if release is not None:
            release()
        subs = self._subs.get(sub.topic)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self.observer.unsubscribed(sub.topic, sub.close_reason or "closed")
            if not subs:
                del self._subs[sub.topic]
                if self._unwatch is not None:
                    self._unwatch(sub.topic)
