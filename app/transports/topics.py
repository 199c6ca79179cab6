"""Several topics on one request: the topic list, where each topic starts, and one reader
over their subscriptions.

A multi-topic SSE stream or long poll holds one hub subscription per topic, and no
greenlet per topic: the subscriptions share one wake-up signal
(:meth:`app.hub.Subscription.wake_with`), which is the stream's feed on the delivery layer
or the parked poll itself (or, under a server that cannot defer, :class:`TopicSet`'s own,
which its request's greenlet waits on), and :class:`TopicSet` takes what each subscription
has ready without waiting. Per topic, the hub's seam rule
holds as on a one-topic stream (each event once, in order, or a gap); across topics,
events go out in the order they were published, within each batch.
"""

from __future__ import annotations

import heapq
import time
from typing import Mapping

from flask import Request
from gevent.event import Event as Signal

from ..auth import Identity
from ..auth.web import authorize
from ..errors import ApiError
from ..events import Event, InvalidTopic, check_topic
from ..hub import Hub, Item, Subscription, SubscriptionClosed
from ..services import services


def read_topics(req: Request, maximum: int) -> list[str]:
    """The ``topic`` query parameters, in order.

    Raises:
        ApiError: 400 ``bad_topic`` when there is none, one is not a topic name, or one is
            named twice; 400 ``too_many_topics`` beyond ``maximum`` (counted as a
            ``stream_topics`` limit rejection).
    """
    topics = req.args.getlist("topic")
    if not topics:
        raise ApiError(400, "bad_topic", "name the topics to follow: ?topic=a&topic=b")
    if len(topics) > maximum:
        services().limits.rejected("stream_topics")
        raise ApiError(
            400,
            "too_many_topics",
            f"at most {maximum} topics per request (SWITCHBOARD_MAX_STREAM_TOPICS); {len(topics)} given",
        )
    for topic in topics:
        try:
            check_topic(topic)
        except InvalidTopic as exc:
            raise ApiError(400, "bad_topic", f"{topic[:40]!r}: {exc}") from None
    if len(set(topics)) < len(topics):
        twice = next(topic for topic in topics if topics.count(topic) > 1)
        raise ApiError(400, "bad_topic", f"topic {twice!r} is named twice")
    return topics


def authorize_topics(topics: list[str], transport: str) -> Identity:
    """The request's identity, if it may subscribe to every one of ``topics``.

    Raises:
        app.auth.AccessError: the refusal of the first topic it may not follow (401 or
            403, naming that topic): one refused topic refuses the whole request.
    """
    return [authorize("subscribe", topic, transport) for topic in topics][0]


def start_positions(hub: Hub, topics: list[str], resume: Mapping[str, str]) -> dict[str, str]:
    """Where each topic starts: its cursor in ``resume``, else its newest event now.

    Pinning "now" to the newest event (rather than to "live from whenever the subscription
    starts") gives every topic a position in the first compound cursor the client gets,
    so a reconnect resumes even the topics that had no event meanwhile. A topic that has
    never had an event has no position: it starts live.

    Raises:
        app.hub.BackendUnavailable: the history cannot be read.
    """
    positions = {}
    for topic in topics:
        cursor = resume.get(topic) or hub.history(topic, limit=1).cursor
        if cursor:
            positions[topic] = cursor
    return positions


def _arrival(item: Item) -> float:
    # A gap goes out before the topic's next event (merge keeps each topic's order anyway).
    return item.time if isinstance(item, Event) else float("-inf")


class TopicSet:
    """One subscription per topic, read as one: :meth:`get_many` as on a
    :class:`~app.hub.Subscription`, with the items of every topic.

    Args:
        hub: the hub to subscribe to.
        starts: topic -> the cursor to resume after (replayed, then live); a topic missing
            from it, or with an empty cursor, is live only.
        topics: every topic to follow, in order.
        member: the client's sender, present in each topic while the set is open (a
            stream's); ``None`` for a parked long poll (see :meth:`app.hub.Hub.subscribe`).

    Raises:
        SubscriptionClosed: the hub is shutting down (no subscription is left open).
    """

    def __init__(self, hub: Hub, topics: list[str], starts: Mapping[str, str], member: str | None = None):
        self._signal = Signal()
        self._subs: list[Subscription] = []
        self._turn = 0
        try:
            for topic in topics:
                sub = hub.subscribe(topic, since=starts.get(topic) or None, member=member)
                sub.wake_with(self._signal)
                self._subs.append(sub)
        except BaseException:
            self.close()
            raise

    def take(self, max_items: int) -> list[Item]:
        """Take what is ready now, up to ``max_items``, without waiting (see
        :meth:`app.hub.Subscription.take`)."""
        return self.get_many(max_items, 0)

    def wake_with(self, signal) -> None:
        """Have every subscription set ``signal`` instead of the set's own (see
        :meth:`app.hub.Subscription.wake_with`): for a reader that takes with ``timeout=0``."""
        self._signal = signal
        for sub in self._subs:
            sub.wake_with(signal)

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Item]:
        """Wait up to ``timeout`` for an item of any topic, then take what is ready, up to
        ``max_items``, in publication order across topics (each topic in its own order).

        Returns:
            The items; an empty list on timeout.

        Raises:
            SubscriptionClosed: a subscription closed (shutdown, or a slow consumer after
                its gap was taken) and nothing was taken before it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Cleared before the takes: an offer made while they run sets it again, so the
            # wait below returns at once instead of missing it.
            self._signal.clear()
            items = self._take(max_items)
            if items:
                return items
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._signal.wait(remaining)

    def _take(self, budget: int) -> list[Item]:
        # Each subscription in turn gets a share of the budget, starting one further along
        # each time, so a busy topic cannot keep a quiet one waiting.
        count = len(self._subs)
        start, self._turn = self._turn, (self._turn + 1) % count
        order = self._subs[start:] + self._subs[:start]
        share = max(1, budget // count)
        taken_by: dict[int, list[Item]] = {}  # one list per subscription, in its order
        taken = 0
        while taken < budget:
            before = taken
            for index, sub in enumerate(order):
                want = min(share, budget - taken)
                if want <= 0:
                    break
                try:
                    batch = sub.get_many(want, timeout=0)
                except SubscriptionClosed:
                    if taken:
                        return self._merge(taken_by)  # give out what was taken; raised next call
                    raise
                if batch:
                    taken_by.setdefault(index, []).extend(batch)
                    taken += len(batch)
            if taken == before:
                break
        return self._merge(taken_by)

    @staticmethod
    def _merge(taken_by: dict[int, list[Item]]) -> list[Item]:
        # heapq.merge only ever takes a list's head, so each topic keeps its own order
        # whatever the clock did; across topics, the older event goes first.
        if len(taken_by) == 1:
            return next(iter(taken_by.values()))
        return list(heapq.merge(*taken_by.values(), key=_arrival))

    def close(self) -> None:
        """Close every subscription. Idempotent."""
        for sub in self._subs:
            sub.close()

    def __enter__(self) -> "TopicSet":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
