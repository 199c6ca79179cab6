"""One contract, two backends: the hub behaves the same over memory and over a real Redis.

Every test in the first part runs twice, through the ``make_hub`` fixture: with
:class:`MemoryBackend` and with :class:`RedisBackend` on a real ``redis-server`` (marked
``redis``). The second part covers what only Redis has: several workers on one history,
the leadership lock, and outages.

These tests run in the pytest process without gevent's monkey-patching (patching here
would change every other test in the session). The Redis backend does not need it: its
listener waits on its socket with gevent (``gevent.socket.wait_read``), so it runs
whenever a test waits on a subscription; commands block the process for their
round-trip, which only removes interleavings that the tests create on purpose with
``gevent.sleep(0)``. The monkey-patched path runs under real gunicorn workers in
tests/e2e/test_redis_scaleout.py.

Live delivery over Redis is asynchronous, so nothing here asserts "nothing more came"
after a fixed wait: :func:`assert_next_is` publishes a marker and checks that it is the
very next item, which holds only if nothing else was queued before it.
"""

from __future__ import annotations

import time
import uuid

import gevent
import pytest

from app.events import Cursor, Event
from app.hub import BackendUnavailable, Hub, SubscriptionClosed, TooManyTopics
from app.hub.memory import MemoryBackend
from app.hub.redis import RedisBackend, _encode_body
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import RedisClusterServers, SentinelGroup
from tests.support.timing import scaled

# Redis three ways: one server, a three-primary cluster (sharded Pub/Sub), and a primary with
# two replicas behind three sentinels. Each is started once per module, on loopback ports.
REDIS_KINDS = ["redis", "cluster", "sentinel"]
KINDS = ["memory", *(pytest.param(kind, marks=pytest.mark.redis) for kind in REDIS_KINDS)]
SERVER_FIXTURES = {"redis": "redis_server", "cluster": "redis_cluster", "sentinel": "redis_sentinel"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    with RedisClusterServers(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory):
    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


class Hubs:
    """Builds hubs of one kind and closes them after the test.

    ``make(...)`` gives a hub with a fresh history; ``peer(hub)`` another hub on the same
    history, as a second gunicorn worker would have (Redis only).
    """

    def __init__(self, kind: str, request):
        self.kind = kind
        self.request = request
        self.hubs: list[Hub] = []
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self._settings: dict = {}

    @property
    def redis(self) -> bool:
        return self.kind != "memory"

    @property
    def server(self):
        """The kind's servers (``client()`` gives a plain client for the test's checks)."""
        return self.request.getfixturevalue(SERVER_FIXTURES[self.kind])

    def make(
        self,
        history_size=1000,
        history_ttl=3600.0,
        queue_size=256,
        *,
        history_bytes=None,
        max_topics=0,
        queue_bytes=None,
        **redis_options,
    ) -> Hub:
        bounds = dict(history_bytes=history_bytes, max_topics=max_topics)
        if self.kind == "memory":
            backend = MemoryBackend(history_size, history_ttl, **bounds)
        else:
            self.prefix = f"t{uuid.uuid4().hex[:10]}"
            self._settings = dict(history_size=history_size, history_ttl=history_ttl, **bounds, **redis_options)
            backend = self._redis_backend()
        return self._hub(backend, queue_size, queue_bytes)

    def peer(self, hub: Hub, queue_size=256) -> Hub:
        assert self.redis, "only Redis shares one history between processes"
        return self._hub(self._redis_backend(), queue_size, hub.queue_bytes)

    def _redis_backend(self) -> RedisBackend:
        settings = dict(self._settings)
        where: dict = (
            {"url": self.server.url}
            if self.kind != "sentinel"
            else {"url": None, "sentinels": self.server.sentinels, "sentinel_master": self.server.master_name}
        )
        if self.kind == "cluster":
            where["cluster"] = True
        return RedisBackend(
            where.pop("url"),
            settings.pop("history_size"),
            settings.pop("history_ttl"),
            prefix=self.prefix,
            connect_timeout=scaled(1),
            reconnect_cap=0.3,
            **where,
            **settings,
        )

    def _hub(self, backend, queue_size, queue_bytes=None) -> Hub:
        hub = Hub(backend, queue_size=queue_size, queue_bytes=queue_bytes)
        self.hubs.append(hub)
        return hub

    def stored_size(self, event: Event) -> int:
        """What the backend's history byte bound counts for ``event``: its JSON in memory,
        the stored body (type, sender, data) with Redis."""
        if self.kind == "memory":
            return event.size
        return len(_encode_body({"type": event.type, "sender": event.sender, "data": event.data}))

    def held(self, hub: Hub, topic: str) -> bool:
        """Whether the backend still holds any state of ``topic`` (Redis: its keys)."""
        if self.kind == "memory":
            return topic in hub.backend._topics
        with self.server.client() as client:
            keys = hub.backend.keys
            return client.exists(keys.stream(topic), keys.meta(topic)) > 0

    def close(self) -> None:
        for hub in self.hubs:
            hub.close()


@pytest.fixture(params=KINDS)
def hubs(request):
    made = Hubs(request.param, request)
    yield made
    made.close()


@pytest.fixture(params=REDIS_KINDS)
def redis_hubs(request):
    """Hubs on each kind of Redis deployment."""
    made = Hubs(request.param, request)
    yield made
    made.close()


@pytest.fixture
def single_redis_hubs(request):
    """Hubs on one redis-server (tests of that server's own outages and connections)."""
    made = Hubs("redis", request)
    yield made
    made.close()


# -- helpers ----------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 5.0, message: str = "condition"):
    """Yield to other greenlets (the Redis listener) until ``predicate()`` is true."""
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        gevent.sleep(0.002)


def take(sub, count: int, timeout: float = 5.0) -> list:
    """The next ``count`` items, each awaited (fails if one does not come in time)."""
    items = []
    for _ in range(count):
        item = sub.get(timeout=scaled(timeout))
        assert item is not None, f"only {len(items)} of {count} items arrived: {items!r}"
        items.append(item)
    return items


def assert_next_is(hub: Hub, *subs):
    """Publish a marker; it must be each subscription's very next item (nothing else queued)."""
    marker = hub.publish(subs[0].topic, "marker")
    for sub in subs:
        item = sub.get(timeout=scaled(5))
        assert isinstance(item, Event) and item.id == marker.id, f"expected only the marker, got {item!r}"


def data(items) -> list:
    return [item.data if isinstance(item, Event) else ("gap", item.slow) for item in items]


def future_of(cursor: Cursor) -> str:
    """A cursor of the right epoch and shape, past anything published."""
    return str(Cursor(cursor.epoch, cursor.position[:-1] + (cursor.position[-1] + 1000,)))


def lose_history(hubs: Hubs, hub: Hub) -> Hub:
    """What loses a backend's history: a restarted process (memory), a FLUSHALL (Redis).

    Returns the hub that serves afterwards (a new one in memory, the same one with Redis).
    """
    if hubs.kind == "memory":
        return hubs.make()
    with hubs.server.client() as client:
        client.flushall()
    return hub


# -- the contract -----------------------------------------------------------------------


class TestOrdering:
    def test_cursors_increase_in_publish_order_and_name_the_epoch(self, hubs):
        hub = hubs.make()
        published = [hub.publish("chat", n) for n in range(30)]
        cursors = [e.cursor for e in published]
        assert cursors == sorted(cursors) and len(set(cursors)) == 30
        assert {c.epoch for c in cursors} == {hub.backend.epoch}
        assert [Cursor.parse(e.id) for e in published] == cursors
        assert data(hub.history("chat", limit=100).events) == list(range(30))

    @pytest.mark.parametrize(
        "value",
        [
            {"text": 'héllo\n\u2028"<>'},
            [1, 2.5, None, True, "x"],
            2**63 + 1,
            0.1,
            -0.0,
            "",
            None,
            {"nested": {"deep": [[], {}]}},
            "\U0001f600" * 3,
            "lone \ud800 surrogate",
        ],
    )
    def test_event_round_trips_through_history_and_live(self, hubs, value):
        hub = hubs.make()
        with hub.subscribe("chat") as sub:
            before = time.time()
            event = hub.publish("chat", value, type="note", sender="guest-1")
            live = take(sub, 1)[0]
        stored = hub.history("chat").events[0]
        for copy in (live, stored):
            assert copy.to_dict() == event.to_dict()
            assert copy.json() == event.json()
        assert event.topic == "chat" and event.type == "note" and event.sender == "guest-1"
        assert before - 1 <= event.time <= time.time() + 1

    def test_no_sender(self, hubs):
        hub = hubs.make()
        hub.publish("chat", 1)
        assert hub.history("chat").events[0].sender is None

    def test_live_subscribers_get_their_topics_in_order(self, hubs):
        hub = hubs.make()
        subs = {topic: [hub.subscribe(topic), hub.subscribe(topic)] for topic in ("a", "b", "c")}
        for n in range(150):
            hub.publish("abc"[n % 3], n)
        for i, topic in enumerate("abc"):
            for sub in subs[topic]:
                assert data(take(sub, 50)) == list(range(i, 150, 3))
            assert_next_is(hub, *subs[topic])

    def test_topics_are_independent(self, hubs):
        hub = hubs.make()
        hub.publish("a", 1)
        hub.publish("b", 2)
        assert data(hub.history("a").events) == [1] and data(hub.history("b").events) == [2]
        assert hub.backend.retained("a") == 1


class TestHistory:
    def test_without_since_the_newest_limit(self, hubs):
        hub = hubs.make()
        for n in range(20):
            hub.publish("chat", n)
        page = hub.history("chat", limit=5)
        assert data(page.events) == [15, 16, 17, 18, 19]
        assert page.cursor == page.events[-1].id and not page.gap

    def test_since_pages_through_what_follows(self, hubs):
        hub = hubs.make()
        events = [hub.publish("chat", n) for n in range(10)]
        page = hub.history("chat", since=events[3].id, limit=3)
        assert data(page.events) == [4, 5, 6] and page.cursor == events[6].id and not page.gap
        page = hub.history("chat", since=page.cursor, limit=3)
        assert data(page.events) == [7, 8, 9]
        end = hub.history("chat", since=events[-1].id)
        assert end.events == [] and end.cursor == events[-1].id and not end.gap

    def test_empty_topic(self, hubs):
        hub = hubs.make()
        page = hub.history("nothing-here")
        assert page.events == [] and page.cursor == "" and not page.gap
        assert hub.backend.last_cursor("nothing-here") is None
        assert hub.backend.retained("nothing-here") == 0

    def test_count_bound_keeps_the_newest(self, hubs):
        hub = hubs.make(history_size=5)
        for n in range(300):
            hub.publish("chat", n)
        assert hub.backend.retained("chat") == 5
        assert data(hub.history("chat", limit=100).events) == [295, 296, 297, 298, 299]
        assert data(hub.backend.read_latest("chat", 3)) == [297, 298, 299]

    def test_age_bound(self, hubs):
        ttl = scaled(0.5)
        hub = hubs.make(history_ttl=ttl)
        old = hub.publish("chat", "old")
        time.sleep(ttl + 0.05)  # time passing is the point here, not synchronisation
        new = hub.publish("chat", "new")
        assert data(hub.history("chat").events) == ["new"]
        assert hub.backend.retained("chat") == 1
        after_old = hub.history("chat", since=old.id)
        assert data(after_old.events) == ["new"] and not after_old.gap, "nothing was lost after 'old'"
        time.sleep(ttl + 0.05)
        page = hub.history("chat")
        assert page.events == [] and page.cursor == new.id, "the cursor stays at the topic's newest"
        assert hub.backend.retained("chat") == 0
        assert hub.history("chat", since=old.id).gap, "'new' expired unseen"
        caught_up = hub.history("chat", since=new.id)
        assert caught_up.events == [] and not caught_up.gap
        assert hub.backend.last_cursor("chat") == new.cursor
        again = hub.publish("chat", "again")
        assert again.cursor > new.cursor
        assert data(hub.history("chat", since=new.id).events) == ["again"]


class TestGaps:
    def test_cursor_older_than_history(self, hubs):
        hub = hubs.make(history_size=3)
        events = [hub.publish("chat", n) for n in range(10)]
        page = hub.history("chat", since=events[2].id)
        assert page.gap and data(page.events) == [7, 8, 9]

    def test_cursor_at_the_edge_of_history_is_not_a_gap(self, hubs):
        hub = hubs.make(history_size=3)
        events = [hub.publish("chat", n) for n in range(10)]
        page = hub.history("chat", since=events[6].id)
        assert not page.gap and data(page.events) == [7, 8, 9]

    def test_cursor_from_another_epoch(self, hubs):
        hub = hubs.make()
        events = [hub.publish("chat", n) for n in range(5)]
        foreign = str(Cursor("other", events[1].cursor.position))  # same numbers, other epoch
        page = hub.history("chat", since=foreign)
        assert page.gap and data(page.events) == [0, 1, 2, 3, 4]

    def test_cursor_from_the_future(self, hubs):
        hub = hubs.make()
        last = [hub.publish("chat", n) for n in range(3)][-1]
        page = hub.history("chat", since=future_of(last.cursor))
        assert page.gap and data(page.events) == [0, 1, 2]

    @pytest.mark.parametrize("shape", [(3,), (1, 1)])
    def test_cursor_of_the_other_backend_kind(self, hubs, shape):
        hub = hubs.make()
        hub.publish("chat", 0)
        mine = len(hub.history("chat").events[0].cursor.position)
        page = hub.history("chat", since=str(Cursor(hub.backend.epoch, shape)))
        if len(shape) != mine:
            assert page.gap and data(page.events) == [0]

    def test_gap_page_cursor_is_its_last_event(self, hubs):
        hub = hubs.make(history_size=2)
        events = [hub.publish("chat", n) for n in range(4)]
        page = hub.history("chat", since="zzz-1")
        assert page.gap and data(page.events) == [2, 3] and page.cursor == events[-1].id

    def test_subscription_with_stale_cursor_gets_gap_then_history_then_live(self, hubs):
        hub = hubs.make(history_size=3)
        events = [hub.publish("chat", n) for n in range(10)]
        with hub.subscribe("chat", since=events[0].id) as sub:
            first = take(sub, 4)
            hub.publish("chat", 10)
            items = first + take(sub, 1)
            assert_next_is(hub, sub)
        assert data(items) == [("gap", False), 7, 8, 9, 10]


class TestEpochs:
    def test_lost_history_starts_a_new_epoch(self, hubs):
        hub = hubs.make()
        old = [hub.publish("chat", n) for n in range(5)]
        old_epoch = hub.backend.epoch
        hub = lose_history(hubs, hub)
        fresh = [hub.publish("chat", f"new{n}") for n in range(2)]
        assert fresh[0].cursor.epoch == hub.backend.epoch != old_epoch
        page = hub.history("chat", since=old[2].id)  # its numbers may exist again: no match
        assert page.gap and data(page.events) == ["new0", "new1"]
        assert not hub.history("chat", since=fresh[0].id).gap

    def test_resuming_subscription_after_lost_history(self, hubs):
        hub = hubs.make()
        old = [hub.publish("chat", n) for n in range(5)]
        hub = lose_history(hubs, hub)
        hub.publish("chat", "new")
        with hub.subscribe("chat", since=old[-1].id) as sub:
            assert data(take(sub, 2)) == [("gap", False), "new"]
            assert_next_is(hub, sub)


class TestSubscriptions:
    def test_live_only_gets_only_new_events(self, hubs):
        hub = hubs.make()
        with hub.subscribe("chat") as witness:
            hub.publish("chat", "before")
            take(witness, 1)  # heard: with Redis, "now" is where this process's live feed is
        with hub.subscribe("chat") as sub:
            hub.publish("chat", "after")
            assert data(take(sub, 1)) == ["after"]
            assert_next_is(hub, sub)

    def test_get_wakes_on_publish_from_another_greenlet(self, hubs):
        hub = hubs.make()
        with hub.subscribe("chat") as sub:
            assert sub.get(timeout=0.01) is None
            gevent.spawn_later(0.01, hub.publish, "chat", "wake")
            assert data([sub.get(timeout=scaled(5))]) == ["wake"]

    def test_get_many_drains_what_is_queued(self, hubs):
        hub = hubs.make()
        with hub.subscribe("chat") as sub:
            for n in range(5):
                hub.publish("chat", n)
            wait_for(lambda: sub.depth == 5, message="5 events queued")
            assert data(sub.get_many(3, timeout=1)) == [0, 1, 2]
            assert data(sub.get_many(10, timeout=1)) == [3, 4]

    def test_hub_close_ends_subscriptions_and_refuses_new(self, hubs):
        hub = hubs.make()
        sub = hub.subscribe("chat")
        hub.close()
        with pytest.raises(SubscriptionClosed) as info:
            sub.get(timeout=1)
        assert info.value.reason == "shutdown"
        with pytest.raises(SubscriptionClosed):
            hub.subscribe("chat")


class TestSeam:
    def test_publishes_during_replay_arrive_once_in_order(self, hubs):
        """Events published while a replay is read arrive exactly once, in order; with
        Redis half of them come from another worker, so only through Pub/Sub."""
        hub = hubs.make(queue_size=10_000)
        publishers = [hub] + ([hubs.peer(hub)] if hubs.redis else [])
        backend = hub.backend
        real_read = backend.read_after

        def slow_read(topic, cursor, limit):  # yield mid-replay so publishes interleave
            gevent.sleep(0)
            events, gap = real_read(topic, cursor, limit)
            gevent.sleep(0)
            return events, gap

        backend.read_after = slow_read
        first = hub.publish("chat", 0)
        for n in range(1, 200):
            hub.publish("chat", n)

        def publisher():
            for n in range(200, 1200):
                publishers[n % len(publishers)].publish("chat", n)
                if n % 3 == 0:
                    gevent.sleep(0)

        sub = hub.subscribe("chat", since=first.id)
        sub.maxsize = 100  # small pages, and overflows during the replay
        task = gevent.spawn(publisher)
        got = take(sub, 1199)
        task.get(timeout=scaled(10))
        assert data(got) == list(range(1, 1200))
        assert_next_is(hub, sub)


class TestSlowConsumers:
    def test_slow_subscriber_is_bounded_and_caught_up_from_history(self, hubs):
        hub = hubs.make(history_size=1000, queue_size=10)
        slow = hub.subscribe("chat")
        fast = hub.subscribe("chat")
        fast_got: list = []
        depths: list[int] = []

        def consume():
            while len(fast_got) < 500:
                items = fast.get_many(100, timeout=scaled(5))
                assert items, f"the fast subscriber stalled after {len(fast_got)} events"
                fast_got.extend(items)
                depths.append(slow.depth)

        consumer = gevent.spawn(consume)
        for n in range(500):
            hub.publish("chat", n)  # never waits for the slow one
            depths.append(slow.depth)
            if n % 10 == 0:
                gevent.sleep(0)
        consumer.get(timeout=scaled(10))
        assert data(fast_got) == list(range(500))
        assert max(depths) <= 10 and slow.overflows >= 1
        assert data(take(slow, 500)) == list(range(500)), "caught up transparently"
        assert_next_is(hub, slow)

    def test_subscriber_behind_history_gets_slow_gap_and_is_dropped(self, hubs):
        hub = hubs.make(history_size=50, queue_size=10)
        slow = hub.subscribe("chat")
        witness = hub.subscribe("chat", since=None)
        witness.maxsize = 1000
        for n in range(200):
            hub.publish("chat", n)
        assert data(take(witness, 200))[-1] == 199  # so every event was offered to `slow` too
        items = []
        with pytest.raises(SubscriptionClosed) as info:
            for _ in range(100):
                items.append(slow.get(timeout=0))
        assert info.value.reason == "slow consumer"
        assert data(items) == list(range(10)) + [("gap", True)]
        assert hub.subscriber_count("chat") == 1


class TestByteBounds:
    """History per topic is bounded in bytes (memory: each event's JSON; Redis: the stored
    body, see ``Hubs.stored_size``), and so is each subscriber's queue (the events' JSON)."""

    def test_history_keeps_the_newest_events_that_fit_in_the_bound(self, hubs):
        bound = 10_000
        hub = hubs.make(history_bytes=bound)
        events = [hub.publish("chat", "x" * (900 + 37 * n % 200)) for n in range(40)]  # assorted sizes
        fit, total = 0, 0
        for event in reversed(events):
            total += hubs.stored_size(event)
            if total > bound:
                break
            fit += 1
        assert 5 <= fit < 40
        kept = hub.history("chat", limit=100).events
        assert [e.id for e in kept] == [e.id for e in events[-fit:]]
        assert hub.backend.retained("chat") == fit
        edge = hub.history("chat", since=events[-fit - 1].id)
        assert not edge.gap and [e.id for e in edge.events] == [e.id for e in kept]
        lost = hub.history("chat", since=events[-fit - 2].id)
        assert lost.gap and [e.id for e in lost.events] == [e.id for e in kept]

    def test_the_newest_event_stays_even_alone_over_the_bound(self, hubs):
        hub = hubs.make(history_bytes=2_000)
        small = hub.publish("chat", "small")
        big = hub.publish("chat", "y" * 5_000)
        assert [e.id for e in hub.history("chat").events] == [big.id]
        hub.publish("chat", "after")
        assert data(hub.history("chat").events) == ["after"]
        page = hub.history("chat", since=small.id)
        assert page.gap and data(page.events) == ["after"]

    def test_resuming_behind_the_byte_bound_is_a_gap(self, hubs):
        hub = hubs.make(history_bytes=3_000)
        events = [hub.publish("chat", "z" * 500 + str(n)) for n in range(20)]
        retained = hub.backend.retained("chat")
        assert 3 <= retained <= 6
        with hub.subscribe("chat", since=events[0].id) as sub:
            items = take(sub, 1 + retained)
            assert data(items[:1]) == [("gap", False)]
            assert [e.id for e in items[1:]] == [e.id for e in events[-retained:]]
            assert_next_is(hub, sub)

    def test_queue_over_its_byte_bound_is_caught_up_from_history(self, hubs):
        hub = hubs.make(queue_size=10_000, queue_bytes=5_000)
        slow = hub.subscribe("chat")
        witness = hub.subscribe("chat")
        witness.max_bytes = None
        for n in range(100):
            hub.publish("chat", {"n": n, "pad": "w" * 1000})
        take(witness, 100)  # so every event was offered to `slow` too
        assert slow.queued_bytes <= 5_000 and slow.depth <= 5 and slow.overflows >= 1
        assert [d["n"] for d in data(take(slow, 100))] == list(range(100)), "caught up transparently"
        assert_next_is(hub, slow)

    def test_queue_over_its_byte_bound_and_behind_history_gets_a_slow_gap(self, hubs):
        hub = hubs.make(history_size=20, queue_size=10_000, queue_bytes=5_000)
        slow = hub.subscribe("chat")
        witness = hub.subscribe("chat")
        witness.max_bytes = None
        for n in range(100):
            hub.publish("chat", {"n": n, "pad": "w" * 1000})
        take(witness, 100)
        items = []
        with pytest.raises(SubscriptionClosed) as info:
            for _ in range(200):
                items.append(slow.get(timeout=0))
        assert info.value.reason == "slow consumer"
        queued = len(items) - 1
        assert 1 <= queued <= 5 and data(items[-1:]) == [("gap", True)]
        assert [d["n"] for d in data(items[:-1])] == list(range(queued))

    def test_an_empty_queue_takes_one_event_of_any_size(self, hubs):
        hub = hubs.make(queue_bytes=1_000)
        with hub.subscribe("chat") as sub, hub.subscribe("chat") as witness:
            witness.max_bytes = None
            hub.publish("chat", "b" * 5_000)
            hub.publish("chat", "small")
            take(witness, 2)  # so both were offered to `sub` too
            assert sub.depth == 1 and sub.overflows == 1, "the big one queued, the small one did not fit"
            assert data(take(sub, 2)) == ["b" * 5_000, "small"]
            assert_next_is(hub, sub)


class TestForgetting:
    """A topic with no subscriber and no event younger than the TTL is forgotten (memory:
    the sweeper greenlet; Redis: the keys' expiry), and a cursor of its old life is never
    matched against the events of a new one."""

    def test_an_idle_topic_is_forgotten(self, hubs):
        ttl = scaled(0.5)
        hub = hubs.make(history_ttl=ttl)
        hub.publish("idle", 1)
        assert hubs.held(hub, "idle")
        wait_for(lambda: not hubs.held(hub, "idle"), timeout=ttl + 3, message="the idle topic forgotten")
        page = hub.history("idle")
        assert page.events == [] and page.cursor == "" and not page.gap
        assert hub.backend.last_cursor("idle") is None

    def test_a_cursor_of_a_forgotten_topic_is_a_gap_never_a_match(self, hubs):
        """With Redis the new life numbers its events 1, 2, 3 again: without the check of the
        topic's birth, a cursor at old event 5 would match new event 6 and skip new 1-5."""
        ttl = scaled(0.5)
        hub = hubs.make(history_size=3, history_ttl=ttl)
        old = [hub.publish("again", f"old{n}") for n in range(5)]
        wait_for(lambda: not hubs.held(hub, "again"), timeout=ttl + 3, message="the topic forgotten")
        new = [hub.publish("again", f"new{n}") for n in range(8)]
        assert all(e.cursor > old[-1].cursor for e in new), "live subscribers see the new life as newer"
        for cursor in old:
            page = hub.history("again", since=cursor.id)
            assert page.gap and data(page.events) == ["new5", "new6", "new7"], cursor.id
        with hub.subscribe("again", since=old[-1].id) as sub:
            assert data(take(sub, 4)) == [("gap", False), "new5", "new6", "new7"]
            assert_next_is(hub, sub)

    def test_a_followed_topic_keeps_delivering_across_its_idle_time(self, hubs):
        ttl = scaled(0.5)
        hub = hubs.make(history_ttl=ttl)
        with hub.subscribe("quiet") as sub:
            first = hub.publish("quiet", "first")
            assert data(take(sub, 1)) == ["first"]
            gevent.sleep(ttl + 1.2)  # the idle time is the point; the sweeper runs meanwhile
            if hubs.kind == "memory":
                assert hubs.held(hub, "quiet"), "a topic with a subscriber is never forgotten"
            later = hub.publish("quiet", "later")
            assert later.cursor > first.cursor
            assert data(take(sub, 1)) == ["later"]
            assert_next_is(hub, sub)
        wait_for(lambda: not hubs.held(hub, "quiet"), timeout=ttl + 3, message="forgotten once unfollowed")


class TestTopicLimit:
    def test_a_new_topic_beyond_the_limit_is_refused_until_one_is_forgotten(self, hubs):
        ttl = scaled(0.5)
        hub = hubs.make(history_ttl=ttl, max_topics=3)
        for topic in ("a", "b", "c"):
            hub.publish(topic, topic)
        with pytest.raises(TooManyTopics) as info:
            hub.publish("d", "d")
        assert info.value.limit == 3 and 0 < info.value.retry_after <= ttl + 1.5
        assert hub.history("d").events == [] and not hubs.held(hub, "d"), "nothing was stored"
        assert data(hub.history("a").events) == ["a"]
        hub.publish("a", "a again")  # a topic it holds takes events
        assert hub.topic_count() == 3
        wait_for(lambda: hub.topic_count() == 0, timeout=ttl + 3, message="the topics forgotten")
        hub.publish("d", "d")
        assert data(hub.history("d").events) == ["d"] and hub.topic_count() == 1


# -- Redis only -------------------------------------------------------------------------


@pytest.mark.redis
class TestWorkersShareOneHistory:
    def test_history_and_live_events_reach_every_worker(self, redis_hubs):
        a = redis_hubs.make()
        b = redis_hubs.peer(a)
        with a.subscribe("chat") as on_a, b.subscribe("chat") as on_b:
            published = [(a if n % 2 else b).publish("chat", n) for n in range(20)]
            assert data(take(on_a, 20)) == data(take(on_b, 20)) == list(range(20))
        assert a.backend.epoch == b.backend.epoch == published[0].cursor.epoch
        for hub in (a, b):
            assert [e.id for e in hub.history("chat", limit=100).events] == [e.id for e in published]
            assert hub.history("chat", since=published[9].id).events[0].id == published[10].id

    def test_the_lock_has_one_owner_at_a_time(self, redis_hubs):
        a = redis_hubs.make().backend
        b = redis_hubs.peer(redis_hubs.hubs[0]).backend
        assert a.acquire_lock("ticks", 10)
        assert not b.acquire_lock("ticks", 10)
        assert a.acquire_lock("ticks", 10), "the owner renews"
        b.release_lock("ticks")  # not the owner: no effect
        assert not b.acquire_lock("ticks", 10)
        a.release_lock("ticks")
        assert b.acquire_lock("ticks", scaled(0.2))
        assert not a.acquire_lock("ticks", 10)
        wait_for(lambda: a.acquire_lock("ticks", 10), timeout=2, message="the lease to expire")
        assert not b.acquire_lock("ticks", 10)

    def test_unix_socket(self, single_redis_hubs):
        if single_redis_hubs.server.unix_url is None:
            pytest.skip("the temporary directory is too deep for a Unix socket path")
        hub = Hub(RedisBackend(single_redis_hubs.server.unix_url, 1000, 3600, prefix=single_redis_hubs.prefix))
        single_redis_hubs.hubs.append(hub)
        with hub.subscribe("chat") as sub:
            event = hub.publish("chat", "over unix")
            assert data(take(sub, 1)) == ["over unix"]
        assert hub.backend.healthy and hub.history("chat").events[0].id == event.id

    def test_two_deployments_on_one_redis_are_apart(self, redis_hubs):
        one = redis_hubs.make()
        other = redis_hubs.make()  # another prefix
        with other.subscribe("chat") as sub:
            one.publish("chat", "one")
            other.publish("chat", "other")
            assert data(take(sub, 1)) == ["other"]
        assert data(other.history("chat").events) == ["other"]


@pytest.mark.redis
class TestRedisForgetting:
    def test_stream_and_meta_expire_after_the_ttl_renewed_by_each_append(self, redis_hubs):
        hub = redis_hubs.make(history_ttl=30)
        keys = [hub.backend.keys.stream("chat"), hub.backend.keys.meta("chat")]
        hub.publish("chat", 1)
        with redis_hubs.server.client() as client:
            for key in keys:
                client.pexpire(key, 5_000)  # as if the last append were 26 s ago
            hub.publish("chat", 2)
            lifetimes = [client.pttl(key) for key in keys]
        assert all(30_000 < ms <= 31_000 for ms in lifetimes), lifetimes

    def test_the_topic_limit_is_the_deployments(self, redis_hubs):
        a = redis_hubs.make(max_topics=3)
        b = redis_hubs.peer(a)
        a.publish("one", 1)
        b.publish("two", 2)
        a.publish("three", 3)
        for hub in (a, b):
            with pytest.raises(TooManyTopics):
                hub.publish("four", 4)
            assert hub.topic_count() == 3
        b.publish("one", "again")


@pytest.mark.redis
class TestOutages:
    def test_listener_cut_is_resynced_from_history(self, single_redis_hubs):
        """Events that reach Redis while the listener is cut are replayed, once, in order."""
        hub = single_redis_hubs.make()
        peer = single_redis_hubs.peer(hub)
        positioned = hub.subscribe("cut")
        hub.publish("cut", "seen")
        assert data(take(positioned, 1)) == ["seen"]
        queued = hub.subscribe("cut")
        hub.publish("cut", "queued")
        wait_for(lambda: queued.depth == 1 and positioned.depth == 1, message="'queued' delivered")
        live_only = hub.subscribe("cut")  # has received nothing: resumes from the cut
        with single_redis_hubs.server.client() as client:
            assert client.client_kill_filter(_type="pubsub") == 2  # both workers' listeners
        # The listeners only run when this greenlet waits, so these land in the gap.
        for n in range(5):
            (hub if n % 2 else peer).publish("cut", n)
        assert data(take(positioned, 6)) == ["queued", 0, 1, 2, 3, 4]
        assert data(take(queued, 6)) == ["queued", 0, 1, 2, 3, 4]
        assert data(take(live_only, 5)) == [0, 1, 2, 3, 4]
        assert_next_is(peer, positioned, queued, live_only)
        assert hub.backend.reconnects == 1 and hub.backend.healthy

    def test_events_of_a_flushed_epoch_never_follow_the_new_one(self, redis_hubs):
        hub = redis_hubs.make()
        _listening = hub.subscribe("chat")  # so this worker hears the topic (per-topic routing); kept referenced
        heard = hub.backend.received
        first = hub.publish("chat", "first")
        stale = [hub.publish("chat", n) for n in range(5)]  # not yet heard by the listener
        with redis_hubs.server.client() as client:
            client.flushall()
        sub = hub.subscribe("chat", since=first.id)
        assert data(take(sub, 1)) == [("gap", False)], "the read sees the new, empty epoch"
        wait_for(lambda: hub.backend.received == heard + 6, message="the stale events heard")
        assert sub.get(timeout=0) is None, "an event of the flushed epoch followed the new one"
        marker = hub.publish("chat", "marker")
        items = []
        while not items or items[-1] != "marker":
            items += data(take(sub, 1))
        assert set(items) <= {("gap", False), "marker"}, f"events of the flushed epoch came after its gap: {items}"
        assert marker.cursor.epoch != stale[0].cursor.epoch

    def test_redis_restart_without_data_is_a_gap_and_nothing_accepted_is_lost(self, single_redis_hubs, tmp_path):
        with RedisServer(tmp_path / "redis") as server:
            hub = Hub(RedisBackend(server.url, 1000, 3600, connect_timeout=scaled(1), reconnect_cap=0.3))
            single_redis_hubs.hubs.append(hub)
            positioned = hub.subscribe("chat")
            old = [hub.publish("chat", n) for n in range(4)]
            assert data(take(positioned, 4)) == [0, 1, 2, 3]
            idle = hub.subscribe("chat")  # nothing received when Redis goes away
            old_epoch = hub.backend.epoch

            server.kill()
            with pytest.raises(BackendUnavailable):
                hub.publish("chat", "lost")
            with pytest.raises(BackendUnavailable):
                hub.history("chat", since=old[0].id)
            catching_up = hub.subscribe("chat", since=old[0].id)
            with pytest.raises(BackendUnavailable):
                catching_up.get(timeout=0)
            wait_for(lambda: not hub.backend.healthy, message="unhealthy")

            server.restart()
            # Accepted before the listener is back: resync must bring them.
            accepted = [hub.publish("chat", f"after{n}") for n in range(3)]
            assert accepted[0].cursor.epoch == hub.backend.epoch != old_epoch
            expected = [("gap", False), "after0", "after1", "after2"]
            for sub in (positioned, idle, catching_up):
                assert data(take(sub, 4)) == expected
            wait_for(lambda: hub.backend.healthy, message="healthy again")
            assert_next_is(hub, positioned, idle, catching_up)

    def test_start_without_redis_then_it_comes(self, tmp_path):
        server = RedisServer(tmp_path / "redis")
        hub = Hub(RedisBackend(server.url, 1000, 3600, connect_timeout=0.2, reconnect_cap=0.3))
        try:
            assert not hub.backend.healthy and hub.backend.epoch == ""
            with pytest.raises(BackendUnavailable):
                hub.publish("chat", 0)
            assert not hub.backend.acquire_lock("ticks", 5)
            sub = hub.subscribe("chat")
            with server:
                first = hub.publish("chat", "first")  # may beat the listener: resync brings it
                assert data(take(sub, 1)) == ["first"]
                wait_for(lambda: hub.backend.healthy, message="healthy")
                assert hub.backend.epoch == first.cursor.epoch
                assert_next_is(hub, sub)
        finally:
            hub.close()


def wildcard_options(hubs: Hubs) -> dict:
    """A cluster serves wildcards only with shared routing (sharded Pub/Sub has no patterns;
    with per-topic routing it refuses them: tests/unit/test_redis_routing.py)."""
    return {"routing": "shared"} if hubs.kind == "cluster" else {}


class TestWildcardSubscriptions:
    def test_live_events_of_every_matching_topic_in_order(self, hubs):
        hub = hubs.make(**wildcard_options(hubs))
        with hub.subscribe_pattern("wc.*") as star, hub.subscribe_pattern("wc.#") as hash_:
            for topic in ("wc", "wc.a", "wcx.a", "wc.a.b", "wc.b"):
                hub.publish(topic, topic)
            star_topics = [item.topic for item in take(star, 2)]
            hash_topics = [item.topic for item in take(hash_, 4)]
            if hubs.kind == "cluster":
                # One order per shard: topics on different shards reach a worker over different
                # paths (the cluster bus), so only each topic's own order holds across them.
                star_topics, hash_topics = sorted(star_topics), sorted(hash_topics)
            assert star_topics == ["wc.a", "wc.b"]
            assert hash_topics == ["wc", "wc.a", "wc.a.b", "wc.b"]
            marker = hub.publish("wc.z", "marker")
            assert take(star, 1)[0].id == marker.id and take(hash_, 1)[0].id == marker.id
        assert hub.subscriber_count() == 0

    def test_an_overflowing_wildcard_gets_a_slow_gap_and_ends(self, hubs):
        hub = hubs.make(queue_size=2, **wildcard_options(hubs))
        sub = hub.subscribe_pattern("of.*")
        for n in range(5):
            hub.publish(f"of.{n}", n)
        wait_for(lambda: sub.overflows, message="the queue to overflow")
        items = take(sub, 3)
        assert data(items) == [0, 1, ("gap", True)]
        with pytest.raises(SubscriptionClosed):
            sub.get(timeout=0)
