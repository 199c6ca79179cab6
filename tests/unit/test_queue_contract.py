"""One queue contract, two stores: work queues behave the same in memory and on a real Redis.

Every test in the first part runs three times, through the ``stores`` fixture: with
:class:`MemoryQueues`, and with :class:`RedisQueues` (Streams and consumer groups) on a real
``redis-server`` and on a three-primary Redis Cluster (marked ``redis``). The second part
covers what only Redis has: several workers on one queue, and a worker that dies holding
messages (one server and the cluster); the third what only a cluster has: queues on every
shard, and batches that must keep to one hash slot. As in
test_backend_contract.py, nothing is monkey-patched here: the Redis store's greenlets run
whenever a test waits on a consumer.
"""

from __future__ import annotations

import uuid

import gevent
import pytest

from app.events import InvalidTopic
from app.hub import Hub, QueueFull, TooManyTopics
from app.hub.batch import Publication
from app.hub.memory import MemoryBackend
from app.hub.memory_queues import MemoryQueues
from app.hub.queues import QueueLimits
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import RedisClusterServers
from tests.support.timing import scaled

REDIS_KINDS = ["redis", "cluster"]
KINDS = ["memory", *(pytest.param(kind, marks=pytest.mark.redis) for kind in REDIS_KINDS)]
SERVER_FIXTURES = {"redis": "redis_server", "cluster": "redis_cluster"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis-queues")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    with RedisClusterServers(tmp_path_factory.mktemp("cluster-queues")) as cluster:
        yield cluster


class Stores:
    """Builds hubs with queue stores of one kind; ``peer(hub)`` is another worker on the same
    Redis (Redis only)."""

    def __init__(self, kind: str, request):
        self.kind = kind
        self.request = request
        self.hubs: list[Hub] = []
        self.prefix = f"q{uuid.uuid4().hex[:10]}"
        self.limits = QueueLimits()

    def make(self, max_topics: int = 0, **limits) -> Hub:
        self.limits = QueueLimits(**{"ack_timeout": 30.0, **limits})
        self.max_topics = max_topics
        return self._hub()

    def peer(self) -> Hub:
        assert self.kind != "memory"
        return self._hub()

    def _hub(self) -> Hub:
        if self.kind == "memory":
            backend = MemoryBackend(1000, 3600.0, max_topics=self.max_topics)
            store = MemoryQueues(self.limits, sweep_interval=0.05)
        else:
            from app.hub.redis import RedisBackend
            from app.hub.redis_queues import RedisQueues

            server = self.request.getfixturevalue(SERVER_FIXTURES[self.kind])
            cluster = {"cluster": True} if self.kind == "cluster" else {}
            backend = RedisBackend(
                server.url,
                1000,
                3600.0,
                prefix=self.prefix,
                max_topics=self.max_topics,
                connect_timeout=scaled(1),
                reconnect_cap=0.3,
                **cluster,
            )
            store = RedisQueues(
                server.url,
                self.limits,
                prefix=self.prefix,
                sweep_interval=0.05,
                block_ms=100,
                heartbeat_ttl=scaled(0.6),
                **cluster,
            )
        hub = Hub(backend, queues=store)
        self.hubs.append(hub)
        return hub

    def close(self) -> None:
        for hub in self.hubs:
            hub.close()


@pytest.fixture(params=KINDS)
def stores(request):
    made = Stores(request.param, request)
    yield made
    made.close()


@pytest.fixture(params=REDIS_KINDS)
def redis_stores(request):
    made = Stores(request.param, request)
    yield made
    made.close()


def take(consumer, count: int = 1, timeout: float = 5.0) -> list:
    got = []
    for _ in range(count):
        delivery = consumer.get(timeout=scaled(timeout))
        assert delivery is not None, f"only {len(got)} of {count} deliveries came"
        got.append(delivery)
    return got


def nothing(consumer, seconds: float = 0.3) -> None:
    assert consumer.get(timeout=seconds) is None


def skip_on_cluster(stores: Stores, why: str) -> None:
    if stores.kind == "cluster":
        pytest.skip(f"a cluster refuses this batch whole: {why}")


class TestContract:
    def test_kept_until_consumed_then_in_order(self, stores):
        hub = stores.make()
        sent = [hub.enqueue("jobs", n, headers=(("x-n", str(n)),)) for n in range(3)]
        assert hub.queue_stats()["jobs"].depth == 3
        with hub.consume("jobs", 10) as consumer:
            got = take(consumer, 3)
            assert [d.event.data for d in got] == [0, 1, 2]
            assert [d.event.id for d in got] == [e.id for e in sent]
            assert got[0].event.headers == (("x-n", "0"),) and got[0].count == 1 and not got[0].redelivered
            assert hub.queue_stats()["jobs"].in_flight == 3
            for delivery in got:
                assert consumer.ack(delivery.event.id)
            assert not consumer.ack(got[0].event.id)  # acknowledged once only
            nothing(consumer)
        assert hub.queue_stats().get("jobs", None) in (None,) or hub.queue_stats()["jobs"].depth == 0

    def test_a_name_with_a_tag_is_a_name_like_any_other(self, stores):
        hub = stores.make()
        with hub.subscribe("audit.{eu}") as sub, hub.consume("jobs.{eu}", 1) as consumer:
            stored = hub.publish_batch([Publication("queue", "jobs.{eu}", 1), Publication("topic", "audit.{eu}", 2)])
            assert [e.topic for e in stored] == ["jobs.{eu}", "audit.{eu}"]
            (delivery,) = take(consumer)
            assert delivery.event.topic == "jobs.{eu}" and delivery.event.data == 1
            assert consumer.ack(delivery.event.id)
            assert sub.get(timeout=scaled(5)).data == 2
            stats = hub.queue_stats()
            assert stats["jobs.{eu}"].depth == 0 and stats["jobs.{eu}"].in_flight == 0 and "jobs" not in stats
        assert [e.data for e in hub.history("audit.{eu}").events] == [2]

    def test_round_robin_among_consumers_with_room(self, stores):
        hub = stores.make()
        a, b = hub.consume("rr", 1), hub.consume("rr", 1)
        for n in range(4):
            hub.enqueue("rr", n)
        (first_a,), (first_b,) = take(a), take(b)
        assert {first_a.event.data, first_b.event.data} == {0, 1}
        nothing(a, 0.2)  # a full window takes no more
        a.ack(first_a.event.id)
        b.ack(first_b.event.id)
        rest = [take(a)[0].event.data, take(b)[0].event.data]
        assert sorted(rest) == [2, 3]

    def test_nack_goes_to_another_consumer_with_a_higher_count(self, stores):
        hub = stores.make()
        a = hub.consume("nack", 1)
        hub.enqueue("nack", "x")
        (delivery,) = take(a)
        b = hub.consume("nack", 1)
        assert a.nack(delivery.event.id)
        (again,) = take(b)
        assert again.event.id == delivery.event.id and again.count == 2 and again.redelivered
        nothing(a, 0.2)

    def test_a_closed_consumer_releases_what_it_held(self, stores):
        hub = stores.make()
        a = hub.consume("rel", 5)
        for n in range(3):
            hub.enqueue("rel", n)
        got = take(a, 3)
        a.ack(got[1].event.id)
        a.close()
        b = hub.consume("rel", 5)
        back = take(b, 2)
        assert sorted(d.event.data for d in back) == [0, 2] and all(d.redelivered for d in back)
        nothing(b, 0.2)

    def test_dead_letter_after_max_deliveries(self, stores):
        hub = stores.make(max_deliveries=2)
        consumer = hub.consume("poison", 1)
        hub.enqueue("poison", "bad")
        for count in (1, 2):
            (delivery,) = take(consumer)
            assert delivery.count == count
            consumer.nack(delivery.event.id)
        nothing(consumer, 0.3)
        with hub.consume("poison.dlq", 1) as dead:
            (letter,) = take(dead)
            assert letter.event.data == "bad" and letter.event.topic == "poison.dlq"

    def test_ack_timeout_takes_it_back(self, stores):
        hub = stores.make(ack_timeout=0.3)
        slow = hub.consume("slow", 1)
        hub.enqueue("slow", "late")
        (held,) = take(slow)
        fast = hub.consume("slow", 1)
        (again,) = take(fast, timeout=5)
        assert again.event.id == held.event.id and again.redelivered
        assert not slow.ack(held.event.id)  # no longer its: a late ack does nothing
        assert fast.ack(again.event.id)

    @pytest.mark.parametrize("bound", ["messages", "bytes", "queues"])
    def test_bounds_refuse_and_store_nothing(self, stores, bound):
        limits = {"messages": {"max_messages": 2}, "bytes": {"max_bytes": 1024}, "queues": {"max_queues": 1}}[bound]
        hub = stores.make(**limits)
        hub.enqueue("full", "x" * 300)
        hub.enqueue("full", "x" * 300) if bound != "queues" else None
        with pytest.raises(QueueFull) as refused:
            hub.enqueue("other" if bound == "queues" else "full", "x" * 600)
        assert refused.value.bound == bound
        assert hub.queue_stats()["full"].depth == (1 if bound == "queues" else 2)
        assert "other" not in hub.queue_stats()

    def test_a_batch_is_stored_whole_or_not_at_all(self, stores):
        skip_on_cluster(stores, "its topic and queue hash to two slots (TestCluster has the one-slot batch)")
        hub = stores.make(max_messages=2)
        hub.enqueue("batch", 0)
        with hub.subscribe("batch-topic") as sub:
            with pytest.raises(QueueFull):
                hub.publish_batch(
                    [
                        Publication("topic", "batch-topic", "t"),
                        Publication("queue", "batch", 1),
                        Publication("queue", "batch", 2),
                    ]
                )
            assert hub.history("batch-topic").events == []
            assert hub.queue_stats()["batch"].depth == 1
            stored = hub.publish_batch([Publication("topic", "batch-topic", "t"), Publication("queue", "batch", 1)])
            assert [e.topic for e in stored] == ["batch-topic", "batch"]
            assert sub.get(timeout=scaled(5)).data == "t"
        assert hub.queue_stats()["batch"].depth == 2

    def test_a_batch_over_the_topic_limit_stores_nothing(self, stores):
        skip_on_cluster(stores, "its topics hash to several slots (TestCluster has the one-slot batch)")
        hub = stores.make(max_topics=2)
        hub.publish("t1", 1)
        with pytest.raises(TooManyTopics):
            hub.publish_batch(
                [Publication("queue", "tl", 1), Publication("topic", "t2", 2), Publication("topic", "t3", 3)]
            )
        assert "tl" not in hub.queue_stats() or hub.queue_stats()["tl"].depth == 0
        assert hub.history("t2").events == []


@pytest.mark.redis
class TestRedisWorkers:
    def test_workers_share_one_queue_each_message_once(self, redis_stores):
        hubs = [redis_stores.make(), redis_stores.peer(), redis_stores.peer()]
        consumers = [hub.consume("shared", 2) for hub in hubs]
        for n in range(30):
            hubs[n % 3].enqueue("shared", n)
        seen = []

        def drain(consumer):
            while True:
                delivery = consumer.get(timeout=scaled(1))
                if delivery is None:
                    return
                seen.append(delivery.event.data)
                assert consumer.ack(delivery.event.id)

        gevent.joinall([gevent.spawn(drain, c) for c in consumers], timeout=scaled(20))
        assert sorted(seen) == list(range(30))

    def test_a_dead_worker_loses_nothing(self, redis_stores):
        alive = redis_stores.make()
        doomed = redis_stores.peer()
        dying = doomed.consume("crash", 5)
        for n in range(3):
            alive.enqueue("crash", n)
        held = take(dying, 3)
        doomed.queues.crash()  # as SIGKILL: no release, no XACK, its heartbeat stops
        survivor = alive.consume("crash", 5)
        back = take(survivor, 3, timeout=10)
        assert sorted(d.event.data for d in back) == [0, 1, 2] and all(d.redelivered for d in back)
        assert {d.event.id for d in back} == {d.event.id for d in held}


def names_on_each_node(cluster: RedisClusterServers, stores: Stores, per_node: int) -> list[str]:
    """``per_node`` queue names whose keys live on each primary of the cluster."""
    found: dict[int, list[str]] = {i: [] for i in range(len(cluster.nodes))}
    n = 0
    while any(len(names) < per_node for names in found.values()):
        name = f"spread-{n}"
        names = found[cluster.node_of(f"{stores.prefix}:q:{{{name}}}")]
        if len(names) < per_node:
            names.append(name)
        n += 1
    return [name for names in found.values() for name in names]


@pytest.fixture
def cluster_stores(request):
    made = Stores("cluster", request)
    yield made
    made.close()


@pytest.mark.redis
class TestCluster:
    """What only a cluster has: queues on every shard, and batches that must keep to one slot."""

    def test_queues_on_every_shard_reach_each_message_once(self, cluster_stores, redis_cluster):
        hubs = [cluster_stores.make(), cluster_stores.peer()]
        queues = names_on_each_node(redis_cluster, cluster_stores, 2)
        consumers = [hub.consume(queue, 3) for hub in hubs for queue in queues]
        sent = {(queue, n) for queue in queues for n in range(8)}
        for i, (queue, n) in enumerate(sorted(sent)):
            hubs[i % 2].enqueue(queue, n)
        seen: list[tuple[str, int]] = []

        def drain(consumer):
            while True:
                delivery = consumer.get(timeout=scaled(1))
                if delivery is None:
                    return
                seen.append((delivery.event.topic, delivery.event.data))
                assert consumer.ack(delivery.event.id)

        gevent.joinall([gevent.spawn(drain, c) for c in consumers], timeout=scaled(20))
        assert sorted(seen) == sorted(sent)  # every message, once
        for queue in queues:  # nothing left waiting on any shard
            assert cluster_stores.hubs[0].queue_stats()[queue].depth == 0

    @pytest.mark.parametrize("queue", ["poison", "orders.{eu}"])
    def test_a_dead_letter_stays_in_its_queues_slot(self, cluster_stores, redis_cluster, queue):
        hub = cluster_stores.make(max_deliveries=1)
        dead = f"{queue}.dlq"
        keys = hub.queues.keys
        assert keys.slot(dead) == keys.slot(queue)
        assert redis_cluster.node_of(keys.stream(dead)) == redis_cluster.node_of(keys.stream(queue))
        with hub.consume(queue, 1) as consumer:
            hub.enqueue(queue, "bad")
            (delivery,) = take(consumer)
            assert consumer.nack(delivery.event.id)  # its first delivery was its last
            nothing(consumer, 0.2)
        with hub.consume(dead, 1) as letters:
            (letter,) = take(letters)
            assert letter.event.data == "bad" and letter.event.topic == dead and letter.event.id == delivery.event.id
            assert letters.ack(letter.event.id)
        assert hub.queue_stats()[dead].depth == 0 and hub.queue_stats()[queue].depth == 0

    def test_a_batch_across_slots_is_refused_whole(self, cluster_stores):
        hub = cluster_stores.make()
        assert hub.backend.keys.slot("audit") != hub.queues.keys.slot("orders")
        with hub.subscribe("audit") as sub:
            with pytest.raises(InvalidTopic) as refused:
                hub.publish_batch([Publication("queue", "orders", 1), Publication("topic", "audit", 2)])
            assert "must keep to one hash slot" in str(refused.value) and "{tag}" in str(refused.value)
            assert sub.get(timeout=0.3) is None
        assert hub.history("audit").events == []
        assert "orders" not in hub.queue_stats()  # not even registered

    def test_a_batch_with_a_common_tag_is_stored_whole_or_not_at_all(self, cluster_stores):
        hub = cluster_stores.make(max_messages=2)
        names = ["orders.{eu}", "billing.{eu}", "audit.{eu}"]
        assert (
            len({hub.queues.keys.slot(names[0]), hub.queues.keys.slot(names[1]), hub.backend.keys.slot(names[2])}) == 1
        )
        hub.enqueue("orders.{eu}", 0)
        hub.enqueue("orders.{eu}", 1)
        with hub.subscribe("audit.{eu}") as sub:
            with pytest.raises(QueueFull):  # orders is full: billing and audit are not stored either
                hub.publish_batch(
                    [
                        Publication("queue", "billing.{eu}", "b"),
                        Publication("topic", "audit.{eu}", "a"),
                        Publication("queue", "orders.{eu}", 2),
                    ]
                )
            assert hub.history("audit.{eu}").events == []
            assert hub.queue_stats()["billing.{eu}"].depth == 0
            stored = hub.publish_batch(
                [Publication("queue", "billing.{eu}", "b"), Publication("topic", "audit.{eu}", "a")]
            )
            assert [e.topic for e in stored] == ["billing.{eu}", "audit.{eu}"]
            assert sub.get(timeout=scaled(5)).data == "a"
        assert [e.data for e in hub.history("audit.{eu}").events] == ["a"]
        assert hub.queue_stats()["billing.{eu}"].depth == 1
        assert hub.queue_stats()["orders.{eu}"].depth == 2

    def test_max_queues_holds_across_shards(self, cluster_stores, redis_cluster):
        hub = cluster_stores.make(max_queues=3)
        queues = names_on_each_node(redis_cluster, cluster_stores, 2)
        for queue in queues[:3]:
            hub.enqueue(queue, 1)
        with pytest.raises(QueueFull) as refused:
            hub.enqueue(queues[3], 1)
        assert refused.value.bound == "queues"
        with pytest.raises(QueueFull):
            hub.consume(queues[4], 1)
        assert sorted(hub.queue_stats()) == sorted(queues[:3])
