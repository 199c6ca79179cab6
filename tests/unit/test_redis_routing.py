"""Per-topic routing on real Redis (one server, a 3-primary cluster, Sentinel): a worker hears
only the topics it has subscribers of, and the seam rule holds while a topic's SUBSCRIBE is
being confirmed.

A "worker" here is one :class:`~app.hub.Hub` with its own :class:`RedisBackend` (its own
connections and feeds), as each gunicorn worker has; several share one Redis deployment.
"""

from __future__ import annotations

import gevent
import pytest

from app.events import Event, Gap, InvalidTopic
from app.hub import Hub
from tests.support.timing import scaled
from tests.unit.test_backend_contract import (  # noqa: F401 (the server fixtures)
    REDIS_KINDS,
    Hubs,
    redis_cluster,
    redis_sentinel,
    redis_server,
    take,
    wait_for,
)

pytestmark = pytest.mark.redis


@pytest.fixture(params=REDIS_KINDS)
def workers(request):
    made = Hubs(request.param, request)
    yield made
    made.close()


def drain_until(sub, marker: Event, timeout: float = 10.0) -> list:
    """Every item of ``sub`` up to and including ``marker`` (each awaited, bounded)."""
    items: list = []
    while True:
        item = sub.get(timeout=scaled(timeout))
        assert item is not None, f"{marker.data!r} did not come; got {len(items)} items before the wait ran out"
        items.append(item)
        if isinstance(item, Event) and (item.topic, item.id) == (marker.topic, marker.id):  # ids repeat across topics
            return items


def history_after(hub: Hub, topic: str, since: str) -> list[Event]:
    page = hub.history(topic, since, limit=1000)
    assert not page.gap
    return page.events


def same_node(hub: Hub, topic: str, candidates) -> str:
    """A topic that this worker's feed for ``topic`` also carries (the same shard on a cluster)."""
    backend = hub.backend
    for other in candidates:
        if backend.client.owner(backend.keys.slot(other)) == backend.client.owner(backend.keys.slot(topic)):
            return other
    raise AssertionError("no candidate topic on the same shard")


class TestSeamWhileSubscribing:
    def test_publishers_racing_the_first_subscriber_miss_nothing(self, workers):
        """Three workers publish to fresh topics without pause while a fourth, which has
        never heard of them, subscribes: one subscription resumes from a cursor, one is
        live-only. The first gets exactly the history after its cursor, the second a
        contiguous run that holds every event whose publish began after its subscribe
        returned; both once each, in order."""
        listener = workers.make(queue_size=10_000)
        publishers = [workers.peer(listener) for _ in range(3)]
        for round_ in range(6):
            topic = f"race{round_}"
            first = publishers[0].publish(topic, -1)
            started = [0]  # numbers taken so far; a number is taken before its append starts
            running = True

            def publish(hub: Hub) -> None:
                while running:
                    started[0] += 1
                    hub.publish(topic, started[0] - 1)
                    gevent.sleep(0)  # the unit tests' sockets block (no monkey-patching): yield by hand

            tasks = [gevent.spawn(publish, hub) for hub in publishers]
            try:
                gevent.sleep(0)  # the publishers are mid-append when the SUBSCRIBE goes out
                live = listener.subscribe(topic)  # the topic's first subscriber on this worker
                started_before_live = started[0]  # every number from here on began after the subscribe
                resumed = listener.subscribe(topic, since=first.id)
                wait_for(lambda: started[0] > started_before_live + 60, message="more publishes")
            finally:
                running = False
                gevent.joinall(tasks, timeout=scaled(10), raise_error=True)
            marker = publishers[1].publish(topic, "marker")
            everything = history_after(listener, topic, first.id)
            assert everything[-1].id == marker.id
            got_resumed = drain_until(resumed, marker)
            assert [e.id for e in got_resumed] == [e.id for e in everything], "resumed: once each, in order"
            got_live = drain_until(live, marker)
            assert all(isinstance(item, Event) for item in got_live), got_live[:3]
            start = [e.id for e in everything].index(got_live[0].id)
            assert [e.id for e in got_live] == [e.id for e in everything[start:]], "live: contiguous, once, in order"
            missing = {e.data for e in everything if isinstance(e.data, int) and e.data >= started_before_live}
            missing -= {e.data for e in got_live}
            assert not missing, f"live-only subscription missed events published after it started: {missing}"
            resumed.close()
            live.close()

    def test_a_topic_dropped_and_taken_again_while_published_to_resumes_exactly(self, workers):
        """Subscribers of one topic come and go on a worker (its last one leaving drops the
        SUBSCRIBE, the next one takes it again, sometimes before Redis answered the first)
        while another worker publishes; each resumes from its predecessor's last cursor and
        gets exactly what history holds after it."""
        listener = workers.make(queue_size=10_000)
        publisher = workers.peer(listener)
        running = True
        received: list[Event] = []

        def publish():
            n = 0
            while running:
                if n - len(received) > 100:  # stay well within the 1000 events history keeps
                    gevent.sleep(0.001)
                    continue
                publisher.publish("churn", n)
                n += 1
                gevent.sleep(0)  # sockets block here: yield by hand

        last = publisher.publish("churn", "start")
        task = gevent.spawn(publish)
        for turn in range(40):
            sub = listener.subscribe("churn", since=last.id)
            items = [sub.get(timeout=scaled(5)) for _ in range(1 + turn % 4)]
            assert all(isinstance(item, Event) for item in items), items
            received += items
            last = items[-1]
            sub.close()  # the last local subscriber: the worker drops the topic
            if turn % 3 == 0:
                gevent.sleep(0)  # sometimes Redis answers the UNSUBSCRIBE before the next SUBSCRIBE
        running = False
        task.get(timeout=scaled(10))
        everything = [e for e in history_after(listener, "churn", received[0].id)]
        assert [e.id for e in received[1:]] == [e.id for e in everything[: len(received) - 1]]
        wait_for(lambda: listener.backend.status()["topics_routed"] == 0, message="the topic unrouted")


class TestOnlyWhatIsServed:
    def test_a_worker_spends_nothing_on_a_topic_it_does_not_serve(self, workers):
        serving = workers.make()
        other = workers.peer(serving)
        topic = "loud"
        quiet = same_node(serving, topic, (f"quiet{n}" for n in range(1000)))
        watching = serving.subscribe(quiet)
        heard = serving.backend.received
        for n in range(200):
            other.publish(topic, n)
        marker = other.publish(quiet, "after the loud ones")  # same connection: it comes after them, had they come
        assert take(watching, 1)[0].id == marker.id
        assert serving.backend.received - heard == 1, "the worker decoded events of a topic it does not serve"
        assert serving.backend.status()["topics_routed"] == 1

    def test_the_last_subscriber_leaving_stops_the_topic(self, workers):
        hub = workers.make()
        other = workers.peer(hub)
        first, second = hub.subscribe("brief"), hub.subscribe("brief")
        other.publish("brief", 1)
        assert take(first, 1)[0].data == take(second, 1)[0].data == 1
        first.close()
        assert hub.backend.status()["topics_routed"] == 1, "one subscriber left: still routed"
        second.close()
        assert hub.backend.status()["topics_routed"] == 0
        wait_for(
            lambda: sum(feed["topics"] for feed in hub.backend.status()["shards"]) == 0,
            message="the feeds dropped the topic",
        )
        keep = hub.subscribe(same_node(hub, "brief", (f"keep{n}" for n in range(1000))))
        heard = hub.backend.received
        other.publish("brief", 2)
        marker = other.publish(keep.topic, "marker")
        assert take(keep, 1)[0].id == marker.id
        assert hub.backend.received - heard == 1

    def test_shared_routing_hears_everything(self, workers):
        """The former design, kept for the bench's comparison: one channel, every worker
        decodes every event."""
        hub = workers.make(routing="shared")
        other = workers.peer(hub)
        watching = hub.subscribe("watched")
        heard = hub.backend.received
        for n in range(20):
            other.publish("unwatched", n)
        marker = other.publish("watched", "marker")
        assert take(watching, 1)[0].id == marker.id
        assert hub.backend.received - heard == 21


class TestManyTopicsManyWorkers:
    def test_every_subscriber_gets_every_event_once_in_order_while_subscribers_come_and_go(self, workers):
        """Three workers, 24 topics (spread over every shard of a cluster), each topic with
        subscribers on every worker; some subscribers leave and come back (resuming from their
        last cursor) while all three workers publish."""
        hubs = [workers.make(queue_size=10_000)]
        hubs += [workers.peer(hubs[0], queue_size=10_000) for _ in range(2)]
        topics = [f"t{n}" for n in range(24)]
        if workers.kind == "cluster":
            backend = hubs[0].backend
            owners = {backend.client.owner(backend.keys.slot(topic)) for topic in topics}
            assert len(owners) == 3, "the topics should cover every shard"
        starts = {topic: hubs[0].publish(topic, "start") for topic in topics}
        # Per (worker, topic): a steady subscriber and a coming-and-going one.
        steady = {(w, t): hub.subscribe(t, since=starts[t].id) for w, hub in enumerate(hubs) for t in topics}
        moving = {(w, t): hub.subscribe(t, since=starts[t].id) for w, hub in enumerate(hubs) for t in topics}
        moving_got: dict[tuple[int, str], list[Event]] = {key: [] for key in moving}
        running = True

        def publish(w: int) -> None:
            n = 0
            while running:
                hubs[w].publish(topics[(n * 7 + w) % len(topics)], f"{w}:{n}")
                n += 1
                gevent.sleep(0)  # sockets block here: yield by hand

        def come_and_go(key) -> None:
            w, topic = key
            sub = moving[key]
            while running:
                item = sub.get(timeout=scaled(5))
                assert isinstance(item, Event), item
                moving_got[key].append(item)
                if len(moving_got[key]) % 5 == 0:  # leave, and come back from the last cursor
                    sub.close()
                    sub = moving[key] = hubs[w].subscribe(topic, since=item.id)
            sub.close()

        publishers = [gevent.spawn(publish, w) for w in range(3)]
        movers = [gevent.spawn(come_and_go, key) for key in list(moving)[::5]]
        wait_for(
            lambda: min(len(got) for key, got in moving_got.items() if key in list(moving)[::5]) >= 15,
            timeout=30,
            message="every moving subscriber to have come back three times",
        )
        running = False
        gevent.joinall(publishers, timeout=scaled(10), raise_error=True)
        gevent.joinall(movers, timeout=scaled(10), raise_error=True)
        markers = {topic: hubs[1].publish(topic, "end") for topic in topics}
        for (w, topic), sub in steady.items():
            everything = history_after(hubs[0], topic, starts[topic].id)
            got = drain_until(sub, markers[topic])
            assert [e.id for e in got] == [e.id for e in everything], f"worker {w}, topic {topic}"
        for key in list(moving)[::5]:
            everything = history_after(hubs[0], key[1], starts[key[1]].id)
            got = moving_got[key]
            assert [e.id for e in got] == [e.id for e in everything[: len(got)]], f"moving {key}"
            assert not any(isinstance(item, Gap) for item in got)


class TestWildcards:
    def test_a_wildcard_hears_the_topics_it_matches_once_each(self, workers):
        """A wildcard subscription on one worker gets the matching topics' events published on
        another, once each, even where the worker also subscribes to one of those topics (its
        channel and the pattern both carry the event); on a cluster with per-topic routing it
        is refused, with the reason."""
        hub = workers.make()
        other = workers.peer(hub)
        if workers.kind == "cluster":
            with pytest.raises(InvalidTopic, match="Redis Cluster"):
                hub.subscribe_pattern("room.*")
            return
        wildcard = hub.subscribe_pattern("room.*")
        plain = hub.subscribe("room.a")
        sent = [other.publish(topic, n) for n, topic in enumerate(["room.a", "room.b", "hall", "room.b.c", "room.a"])]
        marker = other.publish("room.z", "marker")
        got = drain_until(wildcard, marker)
        assert [(e.topic, e.id) for e in got] == [(e.topic, e.id) for e in (sent[0], sent[1], sent[4], marker)]
        assert [e.id for e in take(plain, 2)] == [sent[0].id, sent[4].id]
        wildcard.close()
        heard = hub.backend.received
        other.publish("room.b", "unheard")
        marker = other.publish("room.a", "after")
        assert take(plain, 1)[0].id == marker.id
        assert hub.backend.received - heard == 1, "the pattern was dropped with its last subscription"
