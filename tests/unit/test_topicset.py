"""Several topics read as one (app/transports/topics.py TopicSet) and the compound cursor
(app/transports/cursor.py): per topic every event once and in order, or an explicit gap;
across topics in publication order within a batch; one greenlet, woken by any topic."""

from __future__ import annotations

import time

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import ApiError
from app.events import Event, Gap
from app.hub import Hub, SubscriptionClosed
from app.hub.memory import MemoryBackend
from app.transports.cursor import format_compound, parse_compound
from app.transports.topics import TopicSet

TOPICS = ["a", "b", "c"]


class TickingClock:
    """Each reading one second later: events of any topic get distinct, increasing times."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def make_hub(history_size=1000, queue_size=256) -> Hub:
    return Hub(MemoryBackend(history_size, 1e9, clock=TickingClock(), epoch="ep"), queue_size=queue_size)


def seq(event: Event) -> int:
    return event.cursor.position[0]


# ------------------------------------------------------------------ the compound cursor


class TestCompoundCursor:
    def test_round_trip_and_the_documented_form(self):
        positions = {"chat": "ep-17", "room.a:b_c-d": "ep-1-2"}
        text = format_compound(positions)
        assert text == "chat~ep-17~room.a:b_c-d~ep-1-2"
        assert parse_compound(text, 16) == positions
        assert format_compound({"chat": "ep-1", "empty": ""}) == "chat~ep-1", "a topic without a position is left out"
        assert parse_compound("", 16) == {}

    @pytest.mark.parametrize(
        "text",
        [
            "ep-1",  # a plain cursor
            "chat~",  # a topic without its cursor
            "chat~ep-1~ticks",  # odd number of parts
            "chat~nope",  # not a cursor
            "-bad~ep-1",  # not a topic
            "chat~ep-1~chat~ep-2",  # a topic twice
            "chat~ep-1-2-3",  # a cursor of too many numbers
            "chat~ep-1\n",  # a line break
            "~".join(f"t{n}~ep-{n}" for n in range(17)),  # more topics than allowed
            "x~" * 100_000,  # oversized
        ],
    )
    def test_anything_else_is_bad_cursor(self, text):
        with pytest.raises(ApiError) as info:
            parse_compound(text, 16)
        assert info.value.status == 400 and info.value.code == "bad_cursor"


# ------------------------------------------------------------------------- the reader


ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(TOPICS), st.integers(1, 8)),
        st.tuples(st.just("take"), st.integers(1, 12)),
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(
    history_size=st.integers(1, 10),
    queue_size=st.integers(1, 5),
    script=ops,
    resume=st.fixed_dictionaries({topic: st.integers(-1, 6) for topic in TOPICS}),
)
def test_each_topic_once_in_order_or_a_gap_and_batches_in_publication_order(history_size, queue_size, script, resume):
    hub = make_hub(history_size, queue_size)
    published: dict[str, list[Event]] = {topic: [] for topic in TOPICS}
    for topic in TOPICS:  # some history before the reader starts
        published[topic] += [hub.publish(topic, n) for n in range(3)]
    starts = {topic: published[topic][n].id for topic, n in resume.items() if 0 <= n < 3}
    reader = TopicSet(hub, TOPICS, starts)
    got: list = []
    closed = False

    def take(budget: int) -> None:
        nonlocal closed
        if closed:
            return
        try:
            batch = reader.get_many(budget, timeout=0)
        except SubscriptionClosed:
            closed = True
            return
        assert len(batch) <= budget
        times = [item.time for item in batch if isinstance(item, Event)]
        assert times == sorted(times), "a batch is in publication order across topics"
        got.extend(batch)

    for op in script:
        if op[0] == "publish":
            published[op[1]] += [hub.publish(op[1], n) for n in range(op[2])]
        else:
            take(op[1])
    for _ in range(200):
        take(50)
    reader.close()

    for topic in TOPICS:
        items = [item for item in got if item.topic == topic]
        numbers = [seq(item) for item in items if isinstance(item, Event)]
        assert numbers == sorted(set(numbers)), f"{topic}: once and in order"
        # Where each stretch of events must start: after the resume point, or after a gap
        # anywhere at or after the oldest event history could still hold.
        # (a live topic starts with the first event published after the reader opened)
        expected_next = seq(published[topic][resume[topic]] if topic in starts else published[topic][2]) + 1
        for item in items:
            if isinstance(item, Gap):
                expected_next = None
                continue
            if expected_next is not None:
                assert seq(item) == expected_next, f"{topic}: skipped events without a gap"
            expected_next = seq(item) + 1
        if not closed and numbers:
            assert numbers[-1] == seq(published[topic][-1]), f"{topic}: everything published was taken"


class TestWaking:
    def test_one_greenlet_wakes_on_any_topic(self):
        hub = make_hub()
        with TopicSet(hub, TOPICS, {}) as reader:
            assert reader.get_many(10, timeout=0) == []
            gevent.spawn_later(0.05, hub.publish, "c", "late")
            started = time.monotonic()
            (event,) = reader.get_many(10, timeout=5)
            assert event.topic == "c" and time.monotonic() - started < 1
            assert hub.subscriber_count() == 3
        assert hub.subscriber_count() == 0, "closing the set closes every subscription"

    def test_a_timeout_returns_nothing(self):
        with TopicSet(make_hub(), TOPICS, {}) as reader:
            started = time.monotonic()
            assert reader.get_many(10, timeout=0.1) == []
            assert 0.09 <= time.monotonic() - started < 1

    def test_a_busy_topic_does_not_starve_a_quiet_one(self):
        hub = make_hub()
        with TopicSet(hub, TOPICS, {}) as reader:
            for n in range(50):
                hub.publish("a", n)
            hub.publish("b", "quiet")
            assert "b" in {event.topic for event in reader.get_many(6, timeout=0)}

    def test_what_was_taken_is_handed_out_before_a_closed_subscription_raises(self):
        hub = make_hub(history_size=1, queue_size=1)
        with TopicSet(hub, TOPICS, {}) as reader:
            hub.publish("b", "kept")
            for n in range(5):  # c's queue and history overflow: a slow-consumer gap
                hub.publish("c", n)
            items = reader.get_many(10, timeout=0)
            assert [(type(item).__name__, item.topic) for item in items] == [
                ("Event", "b"),
                ("Event", "c"),
                ("Gap", "c"),
            ]
            assert items[-1].slow
            with pytest.raises(SubscriptionClosed):
                reader.get_many(10, timeout=0)

    def test_a_shutdown_closes_the_set_and_leaves_nothing_subscribed(self):
        hub = make_hub()
        reader = TopicSet(hub, TOPICS, {})
        gevent.spawn_later(0.05, hub.close)
        with pytest.raises(SubscriptionClosed):
            reader.get_many(10, timeout=5)
        with pytest.raises(SubscriptionClosed):
            TopicSet(hub, TOPICS, {})
        assert hub.subscriber_count() == 0
