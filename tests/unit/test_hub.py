"""The hub and the in-memory backend: ordering, history bounds, gaps, epochs, the seam
rule and slow consumers (DESIGN.md §3), and forgetting idle topics (the sweep)."""

from __future__ import annotations

import time

import gevent
import pytest

from app.events import Event, Gap, InvalidCursor, InvalidEventType, InvalidTopic
from app.hub import Hub, NullObserver, SubscriptionClosed, TooManyTopics
from app.hub.memory import MemoryBackend
from tests.support.timing import scaled


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_hub(history_size=1000, history_ttl=3600.0, queue_size=256, clock=None, epoch=None) -> Hub:
    backend = MemoryBackend(history_size, history_ttl, clock=clock or FakeClock(), epoch=epoch)
    return Hub(backend, queue_size=queue_size)


def seqs(items):
    return [item.cursor.position[0] if isinstance(item, Event) else "gap" for item in items]


def drain(sub, timeout=0.0):
    items = []
    while True:
        item = sub.get(timeout=timeout)
        if item is None:
            return items
        items.append(item)


class TestPublishAndHistory:
    def test_events_get_increasing_cursors_in_publish_order(self):
        hub = make_hub()
        published = [hub.publish("chat", {"n": n}) for n in range(10)]
        assert [e.data["n"] for e in hub.history("chat", limit=100).events] == list(range(10))
        positions = [e.cursor.position for e in published]
        assert positions == sorted(positions) and len(set(positions)) == 10
        assert all(e.cursor.epoch == hub.backend.epoch for e in published)

    def test_event_carries_topic_type_sender_and_time(self):
        clock = FakeClock(1234.5)
        hub = make_hub(clock=clock)
        event = hub.publish("chat", {"text": "hi"}, type="note", sender="guest-1")
        assert event.to_dict() == {
            "id": event.id,
            "topic": "chat",
            "type": "note",
            "data": {"text": "hi"},
            "sender": "guest-1",
            "time": 1234.5,
        }

    def test_history_without_since_returns_newest_limit(self):
        hub = make_hub()
        for n in range(20):
            hub.publish("chat", n)
        page = hub.history("chat", limit=5)
        assert [e.data for e in page.events] == [15, 16, 17, 18, 19]
        assert page.cursor == page.events[-1].id and not page.gap

    def test_history_since_returns_what_follows(self):
        hub = make_hub()
        events = [hub.publish("chat", n) for n in range(10)]
        page = hub.history("chat", since=events[3].id, limit=3)
        assert [e.data for e in page.events] == [4, 5, 6]
        assert page.cursor == events[6].id and not page.gap
        empty = hub.history("chat", since=events[-1].id)
        assert empty.events == [] and empty.cursor == events[-1].id and not empty.gap

    def test_empty_topic_has_empty_cursor(self):
        page = make_hub().history("nothing-here")
        assert page.events == [] and page.cursor == "" and not page.gap

    def test_topics_are_independent(self):
        hub = make_hub()
        hub.publish("a", 1)
        hub.publish("b", 2)
        assert [e.data for e in hub.history("a").events] == [1]
        assert [e.data for e in hub.history("b").events] == [2]

    @pytest.mark.parametrize("topic", ["", "-x", "a b", "a/b", "x" * 129, "é", None, 5])
    def test_bad_topics_are_refused(self, topic):
        hub = make_hub()
        with pytest.raises(InvalidTopic):
            hub.publish(topic, 1)
        with pytest.raises(InvalidTopic):
            hub.history(topic)
        with pytest.raises(InvalidTopic):
            hub.subscribe(topic)

    @pytest.mark.parametrize("type_", ["", "gap", "error", "a\nb", "x" * 65])
    def test_bad_and_reserved_types_are_refused(self, type_):
        with pytest.raises(InvalidEventType):
            make_hub().publish("chat", 1, type=type_)

    @pytest.mark.parametrize("since", ["nope", "abc", "abc-x", "a-1-2-3", "-1", "a" * 200, "ab-1\n"])
    def test_malformed_cursor_is_an_error(self, since):
        with pytest.raises(InvalidCursor):
            make_hub().history("chat", since=since)


class TestHistoryBounds:
    def test_count_bound_keeps_newest(self):
        hub = make_hub(history_size=5)
        for n in range(12):
            hub.publish("chat", n)
        assert hub.backend.retained("chat") == 5
        assert [e.data for e in hub.history("chat", limit=100).events] == [7, 8, 9, 10, 11]

    def test_100k_events_keep_the_default_bound(self):
        hub = make_hub()  # default history: 1000 events
        for n in range(100_000):
            hub.publish("flood", n)
        assert hub.backend.retained("flood") == 1000
        events = hub.history("flood", limit=1000).events
        assert len(events) == 1000 and events[0].data == 99_000 and events[-1].data == 99_999

    def test_age_bound_expires_old_events(self):
        clock = FakeClock(0.0)
        hub = make_hub(history_ttl=10, clock=clock)
        first = hub.publish("chat", "old")
        clock.now = 5.0
        hub.publish("chat", "newer")
        clock.now = 12.0
        assert [e.data for e in hub.history("chat").events] == ["newer"]
        assert hub.backend.retained("chat") == 1
        clock.now = 100.0
        page = hub.history("chat")
        assert page.events == [] and page.cursor != "", "cursor stays at the topic's newest position"
        gap = hub.history("chat", since=first.id)
        assert gap.gap and gap.events == []


class TestGaps:
    def test_cursor_older_than_history_is_a_gap(self):
        hub = make_hub(history_size=3)
        events = [hub.publish("chat", n) for n in range(10)]
        page = hub.history("chat", since=events[2].id)
        assert page.gap and [e.data for e in page.events] == [7, 8, 9]

    def test_cursor_at_the_edge_of_history_is_not_a_gap(self):
        hub = make_hub(history_size=3)
        events = [hub.publish("chat", n) for n in range(10)]
        page = hub.history("chat", since=events[6].id)
        assert not page.gap and [e.data for e in page.events] == [7, 8, 9]

    def test_cursor_from_another_epoch_is_a_gap_not_a_match(self):
        old = make_hub(epoch="old")
        stale = [old.publish("chat", n) for n in range(5)][2]
        new = make_hub(epoch="new")
        for n in range(5):
            new.publish("chat", n)
        page = new.history("chat", since=stale.id)  # same number 3, other epoch
        assert page.gap and [e.data for e in page.events] == [0, 1, 2, 3, 4]

    def test_cursor_from_the_future_is_a_gap(self):
        hub = make_hub(epoch="ep")
        hub.publish("chat", 0)
        page = hub.history("chat", since="ep-99")
        assert page.gap and [e.data for e in page.events] == [0]

    def test_subscription_with_stale_cursor_gets_gap_then_history_then_live(self):
        hub = make_hub(history_size=3)
        events = [hub.publish("chat", n) for n in range(10)]
        with hub.subscribe("chat", since=events[0].id) as sub:
            first = sub.get(timeout=0)
            hub.publish("chat", 10)
            items = [first] + drain(sub)
        assert isinstance(items[0], Gap) and not items[0].slow
        assert [e.data for e in items[1:]] == [7, 8, 9, 10]


class TestSubscriptions:
    def test_live_only_subscription_sees_new_events(self):
        hub = make_hub()
        hub.publish("chat", "before")
        with hub.subscribe("chat") as sub:
            hub.publish("chat", "after")
            assert [e.data for e in drain(sub)] == ["after"]

    def test_get_times_out_with_none(self):
        hub = make_hub()
        with hub.subscribe("chat") as sub:
            assert sub.get(timeout=0.01) is None

    def test_get_wakes_on_publish_from_another_greenlet(self):
        hub = make_hub()
        with hub.subscribe("chat") as sub:
            gevent.spawn_later(0.01, hub.publish, "chat", "wake")
            event = sub.get(timeout=5)
        assert event is not None and event.data == "wake"

    def test_get_many_drains_what_is_queued(self):
        hub = make_hub()
        with hub.subscribe("chat") as sub:
            for n in range(5):
                hub.publish("chat", n)
            assert [e.data for e in sub.get_many(3, timeout=1)] == [0, 1, 2]
            assert [e.data for e in sub.get_many(10, timeout=1)] == [3, 4]
            assert sub.get_many(10, timeout=0.01) == []

    def test_close_releases_and_wakes_reader(self):
        hub = make_hub()
        sub = hub.subscribe("chat")
        assert hub.subscriber_count("chat") == 1
        waiter = gevent.spawn(sub.get, 5)
        gevent.sleep(0)
        sub.close()
        with pytest.raises(SubscriptionClosed):
            waiter.get(timeout=5)
        assert hub.subscriber_count() == 0

    def test_hub_close_ends_subscriptions_and_refuses_new(self):
        hub = make_hub()
        sub = hub.subscribe("chat")
        hub.close()
        with pytest.raises(SubscriptionClosed) as info:
            sub.get(timeout=1)
        assert info.value.reason == "shutdown"
        with pytest.raises(SubscriptionClosed):
            hub.subscribe("chat")

    def test_seam_rule_with_publishes_during_replay(self):
        """Events published while a replay is read arrive once, in order."""
        hub = make_hub(queue_size=10_000)
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
                hub.publish("chat", n)
                if n % 3 == 0:
                    gevent.sleep(0)

        sub = hub.subscribe("chat", since=first.id)
        sub.maxsize = 100  # small pages and overflow during the replay
        task = gevent.spawn(publisher)
        got = []
        while len(got) < 1199:
            item = sub.get(timeout=5)
            assert isinstance(item, Event), item
            got.append(item.data)
        task.get(timeout=5)
        assert sub.get(timeout=0.01) is None
        assert got == list(range(1, 1200))


class TestSlowConsumers:
    def test_slow_subscriber_is_bounded_and_caught_up_from_history(self):
        hub = make_hub(history_size=1000, queue_size=10)
        slow = hub.subscribe("chat")
        fast = hub.subscribe("chat")
        fast_got = []
        for n in range(500):
            hub.publish("chat", n)  # never blocks on the slow one
            fast_got.extend(e.data for e in fast.get_many(100, timeout=0))
            assert slow.depth <= 10
        assert fast_got == list(range(500))
        assert [e.data for e in drain(slow)] == list(range(500)), "caught up transparently"
        assert slow.overflows >= 1

    def test_subscriber_behind_history_gets_slow_gap_and_is_dropped(self):
        hub = make_hub(history_size=50, queue_size=10)
        slow = hub.subscribe("chat")
        for n in range(200):
            hub.publish("chat", n)
        items = []
        with pytest.raises(SubscriptionClosed) as info:
            for _ in range(100):
                items.append(slow.get(timeout=0))
        assert info.value.reason == "slow consumer"
        assert [e.data for e in items[:-1]] == list(range(10))
        assert isinstance(items[-1], Gap) and items[-1].slow
        assert hub.subscriber_count() == 0


def make_backend(clock, **options) -> MemoryBackend:
    return MemoryBackend(10, 60.0, clock=clock, epoch="ep", **options)


class CountingObserver(NullObserver):
    def __init__(self):
        self.refusals: list[str] = []

    def refused(self, limit):
        self.refusals.append(limit)


class TestSweep:
    """The in-memory backend forgets a topic with no subscriber and no event younger than
    the TTL (``MemoryBackend.sweep``, run by its greenlet; called directly here with a fake
    clock)."""

    def test_only_idle_topics_without_subscribers_are_forgotten(self):
        clock = FakeClock()
        hub = Hub(make_backend(clock))
        backend = hub.backend
        hub.publish("idle", 1)
        hub.publish("followed", 1)
        follower = hub.subscribe("followed")
        clock.now += 30
        hub.publish("busy", 1)
        assert backend.sweep() == 0
        clock.now += 31  # idle and followed: 61 s without an event; busy: 31 s
        assert backend.sweep() == 1 and set(backend._topics) == {"followed", "busy"}
        follower.close()
        clock.now += 30  # busy is 61 s old; followed was seen in use 30 s ago
        assert backend.sweep() == 1 and set(backend._topics) == {"followed"}
        clock.now += 31
        assert backend.sweep() == 1 and backend.topic_count() == 0 and backend.swept == 3

    def test_a_read_keeps_nothing_alive_and_a_forgotten_topic_reads_as_new(self):
        clock = FakeClock()
        hub = Hub(make_backend(clock))
        events = [hub.publish("t", n) for n in range(3)]
        clock.now += 61
        hub.history("t", since=events[0].id)
        assert hub.backend.sweep() == 1
        page = hub.history("t")
        assert page.events == [] and page.cursor == "" and not page.gap
        assert hub.backend.last_cursor("t") is None and hub.backend.retained("t") == 0

    def test_the_last_cursor_of_the_highest_forgotten_topic_is_provably_caught_up(self):
        clock = FakeClock()
        hub = Hub(make_backend(clock))
        old = [hub.publish("t", n) for n in range(3)]
        other = hub.publish("u", "u")
        clock.now += 61
        assert hub.backend.sweep() == 2
        # Nothing missed after t's last event: no topic ever reached a higher number.
        caught_up = hub.history("t", since=old[-1].id)
        assert caught_up.events == [] and not caught_up.gap
        new = hub.publish("t", "new")
        assert new.cursor > old[-1].cursor
        page = hub.history("t", since=old[-1].id)
        assert [e.data for e in page.events] == ["new"] and not page.gap
        assert hub.history("t", since=old[1].id).gap, "events after old[1] were forgotten"
        # u's last number is below the highest forgotten: whether it was u's last is unknown.
        assert hub.history("u", since=other.id).gap

    def test_the_sweep_reads_only_what_it_forgets(self):
        clock = FakeClock()
        backend = MemoryBackend(10, 600.0, clock=clock)
        Hub(backend)
        looked: list[str] = []
        backend.set_in_use(lambda topic: looked.append(topic) or False)
        for n in range(1000):
            backend.append(f"t{n}", "message", n, None)  # t<n> at 1000 + n
            clock.now += 1
        clock.now = 1499.5 + 600  # t0 ... t499 are older than the TTL
        assert backend.sweep(limit=100) == 100
        assert backend.sweep() == 400 and backend.topic_count() == 500
        assert looked == [f"t{n}" for n in range(500)], "each idle topic looked at once, no other"
        assert backend.sweep() == 0 and len(looked) == 500

    def test_the_sweeper_greenlet_runs_by_itself(self):
        backend = MemoryBackend(10, scaled(0.2))  # real clock; sweeps every 50 ms
        hub = Hub(backend)
        try:
            for n in range(100):
                hub.publish(f"t{n}", n)
            deadline = time.monotonic() + scaled(5)
            while backend.topic_count() and time.monotonic() < deadline:
                gevent.sleep(0.01)  # the sweeper runs while this greenlet waits
            assert backend.topic_count() == 0 and backend.swept == 100
        finally:
            hub.close()
        assert backend._sweeper is None


class TestTopicLimit:
    def test_a_new_topic_beyond_the_limit_is_refused_and_counted_once(self):
        clock = FakeClock()
        observer = CountingObserver()
        hub = Hub(make_backend(clock, max_topics=2), observer=observer)
        hub.publish("a", 1)
        clock.now += 10
        hub.publish("b", 1)
        with pytest.raises(TooManyTopics) as info:
            hub.publish("c", 1)
        assert info.value.limit == 2 and info.value.retry_after == pytest.approx(50 + hub.backend.sweep_interval)
        assert observer.refusals == ["topics"] and hub.backend.topic_count() == 2
        hub.publish("a", 2)  # held topics take events

    def test_idle_topics_make_room_at_once(self):
        clock = FakeClock()
        hub = Hub(make_backend(clock, max_topics=2))
        hub.publish("a", 1)
        hub.publish("b", 1)
        clock.now += 61  # both idle, not yet swept
        hub.publish("c", 1)
        assert hub.backend.topic_count() == 1


class TestHistoryBytes:
    def test_bytes_follow_every_way_an_event_leaves_history(self):
        clock = FakeClock()
        backend = make_backend(clock, history_bytes=1000)  # and 10 events, 60 s
        hub = Hub(backend)
        events = [hub.publish("t", "x" * 150) for _ in range(12)]
        kept = hub.history("t", limit=100).events
        assert sum(e.size for e in kept) == backend.retained_bytes("t") <= 1000
        assert sum(e.size for e in kept) + events[-len(kept) - 1].size > 1000
        clock.now += 30
        hub.publish("t", "y")
        clock.now += 31  # the 150-byte events expire, "y" stays
        assert [e.data for e in hub.history("t").events] == ["y"]
        assert backend.retained_bytes("t") == hub.history("t").events[0].size

    def test_size_is_the_events_utf8_json(self):
        event = make_hub().publish("t", {"text": "héllo \ud800"})
        assert event.size == len(event.json().encode("utf-8", "surrogatepass"))


def test_take_applies_the_seam_rule_on_its_fast_path():
    hub = make_hub(queue_size=8)
    first = hub.publish("t", 0)
    for n in range(1, 4):
        hub.publish("t", n)
    sub = hub.subscribe("t", since=first.id)
    hub.publish("t", 4)  # queued live while history still has to be replayed
    taken = sub.take(2) + sub.take(10)  # a replay page, then the rest
    hub.publish("t", 5)
    taken += sub.take(10)  # live only: the fast path
    assert seqs(taken) == [2, 3, 4, 5, 6]
    assert sub.take(10) == []
    sub.close()
    with pytest.raises(SubscriptionClosed):
        sub.take(10)


def test_take_after_an_overflow_catches_up_from_history():
    hub = make_hub(queue_size=2)
    sub = hub.subscribe("t")
    for n in range(6):
        hub.publish("t", n)  # the queue holds 2, the rest is read back from history
    assert seqs(sub.take(100)) == [1, 2, 3, 4, 5, 6]
