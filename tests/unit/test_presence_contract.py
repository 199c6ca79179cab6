"""Presence, one contract on memory and on real Redis (one server, a cluster, Sentinel).

Who is in a topic: a stream holds its sender's presence while open (``hub.subscribe(...,
member=)``), a poll for a window (``hub.presence.touch``); the deployment counts each sender
once and announces a ``presence`` event on the topic when their count goes 0 -> 1 (join) and
1 -> 0 (leave). The second part is Redis only: several workers, one of which dies.

As in test_backend_contract.py (whose fixtures this reuses), nothing asserts "nothing more
came" after a fixed wait: :func:`assert_next_is` publishes a marker that must be the very
next item of a watching subscription.
"""

from __future__ import annotations

import time

import gevent
import pytest

from app.events import Event, InvalidEventType
from app.hub import Hub
from tests.support.timing import scaled
from tests.unit.test_backend_contract import KINDS, Hubs, redis_cluster, redis_sentinel, redis_server, take, wait_for  # noqa: F401 (the server fixtures)

TOPIC = "room"


class PresenceHubs(Hubs):
    """Hubs whose topics have presence (all but those named ``off...``), with a short TTL."""

    ttl = 15.0

    def _hub(self, backend, queue_size, queue_bytes=None) -> Hub:
        hub = Hub(
            backend,
            queue_size=queue_size,
            queue_bytes=queue_bytes,
            presence_ttl=self.ttl,
            presence_topics=lambda topic: not topic.startswith("off"),
        )
        self.hubs.append(hub)
        return hub


@pytest.fixture(params=KINDS)
def hubs(request):
    made = PresenceHubs(request.param, request)
    yield made
    made.close()


@pytest.fixture
def redis_hubs(request):
    made = PresenceHubs("redis", request)
    yield made
    made.close()


def presence_events(items) -> list[tuple[str, str]]:
    """``(action, sender)`` of each presence event, checking each one's shape on the way."""
    out = []
    for item in items:
        assert isinstance(item, Event) and item.type == "presence", item
        assert set(item.data) == {"action", "sender"} and item.sender == item.data["sender"], item
        out.append((item.data["action"], item.data["sender"]))
    return out


def assert_next_is_marker(hub: Hub, watcher) -> None:
    """Nothing but a marker published now is queued for ``watcher`` (no stray join or leave)."""
    # Let the presence writer run first: a change still in its hands would come after the marker.
    hub.presence.flush()
    marker = hub.publish(watcher.topic, "marker")
    item = watcher.get(timeout=scaled(5))
    assert isinstance(item, Event) and item.id == marker.id, f"expected only the marker, got {item!r}"


def senders(hub: Hub, topic: str = TOPIC) -> list[str]:
    return [member["sender"] for member in hub.presence.members(topic)]


class TestOnePerUser:
    def test_tabs_of_one_user_join_once_and_leave_once(self, hubs):
        hub = hubs.make()
        with hub.subscribe(TOPIC) as watcher:
            tabs = [hub.subscribe(TOPIC, member="alice") for _ in range(3)]
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            assert senders(hub) == ["alice"]
            tabs[0].close()
            tabs[1].close()
            assert_next_is_marker(hub, watcher)
            assert senders(hub) == ["alice"], "two tabs closed, one still open"
            tabs[2].close()
            assert presence_events(take(watcher, 1)) == [("leave", "alice")]
            assert senders(hub) == []
            assert_next_is_marker(hub, watcher)

    def test_two_users_each_join_and_leave(self, hubs):
        hub = hubs.make()
        with hub.subscribe(TOPIC) as watcher:
            alice = hub.subscribe(TOPIC, member="alice")
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            bob = hub.subscribe(TOPIC, member="bob")
            assert presence_events(take(watcher, 1)) == [("join", "bob")]
            members = hub.presence.members(TOPIC)
            assert [m["sender"] for m in members] == ["alice", "bob"], "oldest join first"
            assert members[0]["since"] <= members[1]["since"] <= time.time() + 1
            bob.close()
            assert presence_events(take(watcher, 1)) == [("leave", "bob")]
            assert senders(hub) == ["alice"]
            alice.close()
            assert presence_events(take(watcher, 1)) == [("leave", "alice")]

    def test_a_stream_and_a_poll_of_one_user_count_once(self, hubs):
        hubs.ttl = 1.0
        hub = hubs.make()
        with hub.subscribe(TOPIC) as watcher:
            stream = hub.subscribe(TOPIC, member="alice")
            hub.presence.touch(TOPIC, "alice")
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            stream.close()
            assert_next_is_marker(hub, watcher)
            assert senders(hub) == ["alice"], "the poll's window still holds her"
            # The window ends a TTL after the poll; the writer notices at its next quarter-TTL tick.
            started = time.monotonic()
            assert presence_events(take(watcher, 1, timeout=3)) == [("leave", "alice")]
            assert time.monotonic() - started <= scaled(1.25 * hubs.ttl + 0.5)
            assert senders(hub) == []

    def test_a_poll_is_renewed_by_the_next_one(self, hubs):
        hubs.ttl = 1.0
        hub = hubs.make()
        with hub.subscribe(TOPIC) as watcher:
            hub.presence.touch(TOPIC, "poller")
            assert presence_events(take(watcher, 1)) == [("join", "poller")]
            for _ in range(6):  # 1.5 TTL of polls, each renewing the window
                gevent.sleep(0.25)
                hub.presence.touch(TOPIC, "poller")
            assert_next_is_marker(hub, watcher)
            assert presence_events(take(watcher, 1, timeout=3)) == [("leave", "poller")]

    def test_a_connection_that_comes_and_goes_at_once_announces_nothing(self, hubs):
        hub = hubs.make()
        with hub.subscribe(TOPIC) as watcher:
            hub.subscribe(TOPIC, member="flicker").close()  # before the writer has run
            assert_next_is_marker(hub, watcher)
            assert senders(hub) == []


class TestEvents:
    def test_presence_events_are_in_history_with_the_user_as_sender(self, hubs):
        hub = hubs.make()
        with hub.subscribe(TOPIC) as watcher:
            with hub.subscribe(TOPIC, member="alice"):
                take(watcher, 1)
            take(watcher, 1)
        events = hub.history(TOPIC).events
        assert presence_events(events) == [("join", "alice"), ("leave", "alice")]

    def test_a_client_cannot_publish_a_presence_event(self, hubs):
        hub = hubs.make()
        with pytest.raises(InvalidEventType, match="reserved"):
            hub.publish(TOPIC, {"action": "join", "sender": "mallory"}, type="presence", sender="mallory")
        assert hub.history(TOPIC).events == []

    def test_a_topic_without_presence_counts_no_one(self, hubs):
        hub = hubs.make()
        assert not hub.presence.tracked("off-topic") and hub.presence.tracked(TOPIC)
        with hub.subscribe("off-topic") as watcher, hub.subscribe("off-topic", member="alice"):
            hub.presence.touch("off-topic", "bob")
            assert_next_is_marker(hub, watcher)
        assert hub.presence.members("off-topic") == []

    def test_no_presence_anywhere_without_tracked_topics(self, hubs):
        hub = hubs.make()
        bare = Hub(hub.backend)  # a second hub object on the same backend, presence off
        assert not bare.presence.tracked(TOPIC)
        assert bare.presence.hold(TOPIC, "alice") is None


# -- Redis only -------------------------------------------------------------------------


@pytest.mark.redis
class TestAcrossWorkers:
    def test_one_user_on_two_workers_joins_once_and_leaves_with_the_last(self, redis_hubs):
        a = redis_hubs.make()
        b = redis_hubs.peer(a)
        with a.subscribe(TOPIC) as watcher:
            on_a = a.subscribe(TOPIC, member="alice")
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            on_b = b.subscribe(TOPIC, member="alice")
            b.presence.flush()
            assert_next_is_marker(a, watcher)
            on_a.close()
            a.presence.flush()
            assert_next_is_marker(a, watcher)
            assert senders(a) == senders(b) == ["alice"]
            on_b.close()
            assert presence_events(take(watcher, 1)) == [("leave", "alice")]
            assert senders(a) == senders(b) == []

    def test_two_workers_entering_together_announce_one_join(self, redis_hubs):
        a = redis_hubs.make()
        b = redis_hubs.peer(a)
        with a.subscribe(TOPIC) as watcher:
            a.presence.hold(TOPIC, "alice")
            b.presence.hold(TOPIC, "alice")
            both = [gevent.spawn(hub.presence.flush) for hub in (a, b)]
            gevent.joinall(both, raise_error=True)
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            assert_next_is_marker(a, watcher)

    def test_entries_are_renewed_while_held(self, redis_hubs):
        redis_hubs.ttl = 0.8
        a = redis_hubs.make()
        with a.subscribe(TOPIC) as watcher, a.subscribe(TOPIC, member="alice"):
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            gevent.sleep(scaled(2.5 * redis_hubs.ttl))  # three TTLs: renewed every quarter
            assert_next_is_marker(a, watcher)
            assert senders(a) == ["alice"]

    def test_the_users_of_a_dead_worker_leave_within_the_ttl(self, redis_hubs):
        redis_hubs.ttl = 1.0
        survivor = redis_hubs.make()
        doomed = redis_hubs.peer(survivor)
        with survivor.subscribe(TOPIC) as watcher:
            doomed.subscribe(TOPIC, member="alice")
            doomed.subscribe(TOPIC, member="bob")
            both = survivor.subscribe(TOPIC, member="carol")
            doomed.subscribe(TOPIC, member="carol")
            assert sorted(presence_events(take(watcher, 3))) == [("join", "alice"), ("join", "bob"), ("join", "carol")]
            died = time.monotonic()
            doomed.presence.close()  # no more renewals, nothing withdrawn: as after SIGKILL
            left = presence_events(take(watcher, 2, timeout=4))
            assert sorted(left) == [("leave", "alice"), ("leave", "bob")]
            assert time.monotonic() - died <= scaled(1.25 * redis_hubs.ttl + 1)
            assert senders(survivor) == ["carol"], "carol is still connected to the survivor"
            both.close()
            assert presence_events(take(watcher, 1)) == [("leave", "carol")]

    def test_reading_presence_sweeps_what_has_expired(self, redis_hubs):
        redis_hubs.ttl = 0.5
        survivor = redis_hubs.make()
        survivor.presence.close()  # no sweeps of its own: only the read may expire entries
        doomed = redis_hubs.peer(survivor)
        with survivor.subscribe(TOPIC) as watcher:
            doomed.presence.hold(TOPIC, "alice")
            doomed.presence.flush()
            assert presence_events(take(watcher, 1)) == [("join", "alice")]
            doomed.presence.close()
            gevent.sleep(scaled(0.6))
            assert senders(survivor) == []
            assert presence_events(take(watcher, 1)) == [("leave", "alice")]

    def test_a_flushed_redis_hears_the_holders_again(self, redis_hubs):
        redis_hubs.ttl = 0.8
        a = redis_hubs.make()
        with a.subscribe(TOPIC, member="alice"):
            wait_for(lambda: senders(a) == ["alice"], message="alice present")
            with redis_hubs.server.client() as client:
                client.flushall()
            assert senders(a) == []
            wait_for(lambda: senders(a) == ["alice"], timeout=3, message="alice renewed into the new epoch")
