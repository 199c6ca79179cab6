"""Past one Redis: gunicorn with 4 workers on a 3-primary Redis Cluster and behind Sentinel.

Real processes only (redis-server cluster nodes, redis-sentinel, gunicorn with the real worker
class), clients over real sockets; the subscriber and publisher clients are those of
test_redis_scaleout.py. The assertions are the scale-out ones: every subscriber gets every
event that got a 201, once, in order; refusals are 503 with Retry-After, never a 500; and a
resumed subscriber never skips events silently (any hole in its sequence has a gap marker).
"""

from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.e2e.test_redis_scaleout import (
    JSON,
    ONE_SHOT,
    SERVER_ENV,
    LongPoller,
    Poller,
    SSESubscriber,
    WebSocketSubscriber,
    by_position,
    health,
    subscribers_on_workers,
    wait_for_all,
)
from tests.e2e.test_stomp_ws import Wire, build
from tests.support.auth import auth_env, bearer, mint
from tests.support.redis_topologies import RedisClusterServers, SentinelGroup
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

pytestmark = pytest.mark.redis


class PublishLoop(threading.Thread):
    """Publishes to ``topics`` in turn, over HTTP, until stopped; records each topic's 201s
    and every refusal (status, error code, Retry-After)."""

    def __init__(self, server: Gunicorn, topics: list[str]):
        super().__init__(daemon=True)
        self.server = server
        self.topics = topics
        self.accepted: dict[str, list[str]] = {topic: [] for topic in topics}
        self.refused: list[dict] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        with requests.Session() as http:
            while not self.stopping.is_set():
                topic = self.topics[n % len(self.topics)]
                try:
                    res = http.post(
                        f"{self.server.url}/api/topics/{topic}/events",
                        data=json.dumps({"data": n}),
                        headers=JSON,
                        timeout=scaled(10),
                    )
                except requests.RequestException as exc:  # never expected: the server stays up
                    self.refused.append({"topic": topic, "error": repr(exc)})
                    continue
                if res.status_code == 201:
                    self.accepted[topic].append(res.json()["id"])
                else:
                    self.refused.append(
                        {
                            "topic": topic,
                            "status": res.status_code,
                            **res.json(),
                            "retry_after": res.headers.get("Retry-After"),
                        }
                    )
                n += 1
                self.stopping.wait(0.003)

    def count(self, topic: str) -> int:
        return len(self.accepted[topic])

    def stop(self) -> None:
        self.stopping.set()
        self.join(scaled(15))
        assert not self.is_alive()


def seq(event_id: str) -> tuple[str, int]:
    epoch, _, seq_text = event_id.rpartition("-")
    return epoch.split("-")[0], int(seq_text)


def assert_no_silent_hole(sub) -> None:
    """Between two gap markers, each event follows the one before it (same epoch, next
    number), once. After a gap the answer restarts at the oldest retained event (DESIGN.md
    3), so what follows a gap may repeat what came before it."""
    segments: list[list[str]] = [[]]
    for item in sub.items:
        if item == "gap":
            segments.append([])
        else:
            segments[-1].append(item)
    for segment in segments:
        for before, item in zip(segment, segment[1:]):
            (epoch_a, n_a), (epoch_b, n_b) = seq(before), seq(item)
            assert epoch_a == epoch_b and n_b == n_a + 1, f"{sub.kind}: {before} then {item} with no gap between"


def topics_per_node(cluster: RedisClusterServers, per_node: int) -> list[str]:
    """``per_node`` topic names on each node of the cluster (a topic's slot is its name's)."""
    found: dict[int, list[str]] = {i: [] for i in range(len(cluster.nodes))}
    n = 0
    while any(len(names) < per_node for names in found.values()):
        name = f"topic{n}"
        names = found[cluster.node_of(name)]
        if len(names) < per_node:
            names.append(name)
        n += 1
    return [name for names in found.values() for name in names]


# -- a cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    with RedisClusterServers(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def on_cluster(redis_cluster, tmp_path_factory):
    """gunicorn with 4 workers, given one node's URL: it asks the node and finds a cluster."""
    env = {**SERVER_ENV, "SWITCHBOARD_REDIS_URL": redis_cluster.url}
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"), env=env) as server:
        yield server


class TestCluster:
    def test_every_subscriber_gets_every_event_once_in_order_with_topics_on_every_shard(
        self, on_cluster, redis_cluster
    ):
        topics = topics_per_node(redis_cluster, 2)
        starts = {}
        for topic in topics:
            res = requests.post(
                f"{on_cluster.url}/api/topics/{topic}/events",
                data='{"data": "start"}',
                headers={**JSON, **ONE_SHOT},
                timeout=scaled(5),
            )
            assert res.status_code == 201, res.text
            starts[topic] = res.json()["id"]
        subscribers: dict[str, list] = {}
        for i, topic in enumerate(topics):
            kind = SSESubscriber if i % 2 else WebSocketSubscriber
            subscribers[topic] = list(subscribers_on_workers(on_cluster, topic, starts[topic], kind, wanted=2).values())
            poller = (LongPoller if i % 2 else Poller)(on_cluster, topic, starts[topic])
            poller.start()
            subscribers[topic].append(poller)
        loops = [PublishLoop(on_cluster, topics[i:] + topics[:i]) for i in range(3)]
        for loop in loops:
            loop.start()
        wait_until(
            lambda: sum(loop.count(t) for loop in loops for t in topics) >= 300,
            timeout=60,
            message="300 events published",
        )
        for loop in loops:
            loop.stop()
        assert not any(loop.refused for loop in loops), [loop.refused[:3] for loop in loops]
        for topic in topics:
            expected = by_position([event for loop in loops for event in loop.accepted[topic]])
            wait_for_all(subscribers[topic], expected, timeout=30)
        for topic in topics:
            expected = by_position([event for loop in loops for event in loop.accepted[topic]])
            for sub in subscribers[topic]:
                sub.stop()
                assert sub.items == expected, f"{topic}, {sub.kind}: not every event once and in order"

    def test_health_and_metrics_show_every_shard(self, on_cluster, redis_cluster):
        pages = [health(on_cluster) for _ in range(8)]
        assert {(p["backend"], p["backend_healthy"]) for p in pages} == {("redis", True)}
        for page in pages:
            redis_status = page["redis"]
            assert redis_status["mode"] == "cluster" and redis_status["routing"] == "topic"
            assert {shard["address"] for shard in redis_status["shards"]} == set(redis_cluster.addresses)
            assert {shard["state"] for shard in redis_status["shards"]} == {"up"}
        metrics = requests.get(f"{on_cluster.url}/metrics", headers=ONE_SHOT, timeout=scaled(5)).text
        for address in redis_cluster.addresses:
            assert f'switchboard_redis_shard_up{{shard="{address}"}} 1.0' in metrics, metrics[-2000:]
        assert "switchboard_redis_topics_routed" in metrics

    def test_work_queues_on_the_cluster_and_a_transaction_keeps_to_one_slot(self, on_cluster):
        """Queues on a cluster (README "Redis Cluster"): an HTTP send reaches a STOMP consumer;
        a COMMIT whose destinations hash to two slots is refused whole with the rule, and one
        whose names share a {tag} is stored whole (its queue message and its topic event)."""
        consumer, listener, producer = Wire(on_cluster), Wire(on_cluster), Wire(on_cluster)
        try:
            for client in (consumer, listener, producer):
                client.connect()
            consumer.subscribe("/queue/jobs.{eu}")
            listener.subscribe("/topic/audit.{eu}", sub_id="1")
            res = requests.post(
                f"{on_cluster.url}/api/queues/jobs.{{eu}}/messages",
                data='{"data": "first"}',
                headers={**JSON, **ONE_SHOT},
                timeout=scaled(5),
            )
            assert res.status_code == 201, res.text
            assert consumer.messages(1)[0].body == b"first"
            producer.send(
                build("BEGIN", {"transaction": "t"})
                + build("SEND", {"destination": "/queue/jobs.{eu}", "transaction": "t"}, "tagged")
                + build("SEND", {"destination": "/topic/audit.{eu}", "transaction": "t"}, "tagged")
                + build("COMMIT", {"transaction": "t", "receipt": "c"})
            )
            producer.expect_receipt("c")
            assert consumer.messages(1)[0].body == b"tagged"
            assert listener.messages(1)[0].body == b"tagged"
            producer.send(
                build("BEGIN", {"transaction": "u"})
                + build("SEND", {"destination": "/queue/jobs.{eu}", "transaction": "u"}, "split")
                + build("SEND", {"destination": "/topic/audit.{us}", "transaction": "u"}, "split")
                + build("COMMIT", {"transaction": "u", "receipt": "d"})
            )
            error = producer.expect_error("transaction spans hash slots")
            assert b"must keep to one hash slot" in error.body and b"{tag}" in error.body, error.body
            assert producer.expect_close() == 1008
            consumer.nothing_for()  # nothing of it was stored
            history = requests.get(f"{on_cluster.url}/api/topics/audit.{{us}}/events", timeout=scaled(5))
            assert history.status_code == 200 and history.json()["events"] == [], history.text
        finally:
            for client in (consumer, listener, producer):
                client.close()

    def test_queue_access_control_holds_on_the_cluster(self, redis_cluster, tmp_path):
        """A queue the client may not use is refused on a cluster as on one Redis."""
        env = auth_env(**SERVER_ENV, SWITCHBOARD_REDIS_URL=redis_cluster.url, SWITCHBOARD_REDIS_PREFIX="guarded")
        with Gunicorn(tmp_path, env=env) as guarded:
            clients = [Wire(guarded) for _ in range(3)]
            worker, nosy, sender = clients
            try:
                worker.connect(passcode=mint("worker", subscribe=["queue.jobs"], publish=["queue.jobs"]))
                worker.subscribe("/queue/jobs")
                nosy.connect(passcode=mint("nosy", subscribe=["jobs", "queue.other"]))
                nosy.send_frame("SUBSCRIBE", {"id": "0", "destination": "/queue/jobs"})
                assert nosy.expect_error("forbidden: /queue/jobs").get("destination") == "/queue/jobs"
                sender.connect(passcode=mint("s", publish=["queue.other"]))
                sender.send_frame("SEND", {"destination": "/queue/jobs"}, "refused")
                sender.expect_error("forbidden: /queue/jobs")
                res = requests.post(
                    f"{guarded.url}/api/queues/jobs/messages",
                    json={"data": "allowed"},
                    headers=bearer(mint("app", publish=["queue.*"])),
                    timeout=scaled(5),
                )
                assert res.status_code == 201, res.text
                assert worker.messages(1)[0].body == b"allowed"  # the refused SEND stored nothing
                worker.nothing_for()
            finally:
                for client in clients:
                    client.close()

    @pytest.mark.soak
    def test_a_shard_killed_and_restarted_pauses_only_its_topics(self, tmp_path):
        """One shard is SIGKILLed under load and restarted (with its AOF): publishes to its
        topics get 503 with Retry-After, then go through again, and their subscribers get every
        accepted event with no gap; the other shards' topics go on throughout, their streams
        stay open, and what is published to them during the outage arrives during the outage."""
        with RedisClusterServers(tmp_path / "cluster", appendonly=True) as cluster:
            server = Gunicorn(tmp_path, env={**SERVER_ENV, "SWITCHBOARD_REDIS_URL": cluster.url}).start()
            try:
                self._check_shard_outage(server, cluster)
            finally:
                server.stop()

    def _check_shard_outage(self, server: Gunicorn, cluster: RedisClusterServers) -> None:
        topics = topics_per_node(cluster, 1)
        victim_topic, others = topics[1], [topics[0], topics[2]]
        subscribers = {
            topic: list(subscribers_on_workers(server, topic, None, SSESubscriber, wanted=2).values())
            for topic in topics
        }
        wait_until(
            lambda: sum(page["subscribers"] for page in [health(server) for _ in range(8)]) > 0,
            timeout=10,
            message="streams subscribed",
        )
        loop = PublishLoop(server, topics)
        loop.start()
        try:
            wait_until(lambda: loop.count(victim_topic) >= 30, timeout=20, message="30 events before the outage")
            cluster.kill(1)
            wait_until(lambda: len(loop.refused) >= 5, timeout=10, message="publishes to the shard refused")
            during = {topic: loop.count(topic) for topic in others}
            wait_until(
                lambda: all(loop.count(topic) >= during[topic] + 30 for topic in others),
                timeout=20,
                message="the other shards' topics to go on",
            )
            for topic in others:
                wait_for_all(subscribers[topic], by_position(loop.accepted[topic]), timeout=10)
            stalled = loop.count(victim_topic)
            cluster.restart(1)
            wait_until(lambda: loop.count(victim_topic) >= stalled + 30, timeout=30, message="the shard's topic back")
        finally:
            loop.stop()
        assert loop.refused, "the outage refused nothing"
        for refusal in loop.refused:
            assert refusal["topic"] == victim_topic, f"a topic of another shard was refused: {refusal}"
            assert refusal.get("status") == 503 and refusal.get("retry_after"), refusal
        for topic in topics:
            expected = by_position(loop.accepted[topic])
            wait_for_all(subscribers[topic], expected, timeout=30)
            for sub in subscribers[topic]:
                sub.stop()
                assert "gap" not in sub.items, f"{topic}: the shard kept its data (AOF): nothing may be lost"
                assert_no_silent_hole(sub)
                missing = set(expected) - set(sub.events())
                assert not missing, f"{topic}: {len(missing)} accepted event(s) lost"
                # A publish cut off by the kill may have been stored without its 201.
                assert len(sub.events()) - len(expected) <= 1
                if topic != victim_topic:
                    assert sub.reconnects == 0, f"{topic}: its stream was cut by another shard's outage"


# -- Sentinel -----------------------------------------------------------------------------


@pytest.mark.soak
class TestSentinel:
    def test_failover_under_load_loses_no_acknowledged_event(self, tmp_path):
        """A primary, two replicas, three sentinels; 4 workers with SWITCHBOARD_REDIS_MIN_REPLICAS=1.
        The primary is SIGKILLed under load: every event that got a 201 reaches every subscriber
        after the failover, the publishes during the switch get 503 with Retry-After, and no
        subscriber has a hole without a gap marker."""
        with SentinelGroup(tmp_path / "sentinel") as group:
            env = {
                **SERVER_ENV,
                "SWITCHBOARD_REDIS_MIN_REPLICAS": "1",
                "SWITCHBOARD_REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in group.sentinels),
                "SWITCHBOARD_REDIS_SENTINEL_MASTER": group.master_name,
            }
            server = Gunicorn(tmp_path, env=env).start()
            try:
                self._check_failover(server, group)
            finally:
                server.stop()

    def _check_failover(self, server: Gunicorn, group: SentinelGroup) -> None:
        topic = "failover"
        res = requests.post(
            f"{server.url}/api/topics/{topic}/events",
            data='{"data": "start"}',
            headers={**JSON, **ONE_SHOT},
            timeout=scaled(5),
        )
        assert res.status_code == 201, res.text
        start = res.json()["id"]
        subscribers = list(subscribers_on_workers(server, topic, start, SSESubscriber, wanted=3).values())
        subscribers += [LongPoller(server, topic, start), Poller(server, topic, start)]
        for poller in subscribers[-2:]:
            poller.start()
        loop = PublishLoop(server, [topic])
        loop.start()
        try:
            wait_until(lambda: loop.count(topic) >= 100, timeout=20, message="100 events before the failover")
            old = group.kill_primary()
            group.wait_failover(old.port)
            before = loop.count(topic)
            wait_until(lambda: loop.count(topic) >= before + 100, timeout=30, message="100 events after it")
        finally:
            loop.stop()
        assert loop.refused, "the switch refused nothing: was the primary killed?"
        for refusal in loop.refused:
            assert refusal.get("status") == 503 and refusal.get("error") == "backend_unavailable", refusal
            assert refusal.get("retry_after"), refusal
        expected = by_position([start] + loop.accepted[topic])[1:]
        for sub in subscribers:
            wait_until(
                lambda: set(expected) <= set(sub.events()),
                timeout=30,
                interval=0.05,
                message=f"{sub.kind} to get every acknowledged event",
            )
        for sub in subscribers:
            sub.stop()
            assert_no_silent_hole(sub)
        pages = [health(server) for _ in range(8)]
        assert all(page["redis"]["mode"] == "sentinel" for page in pages)
        assert any(page["redis"]["failovers"] >= 1 for page in pages), [page["redis"] for page in pages]
