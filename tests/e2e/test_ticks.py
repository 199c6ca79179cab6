"""The ``ticks`` demo producer: an event a second while someone listens, one producer per deployment.

The end-to-end part runs a real gunicorn and listens over SSE, then two gunicorn "hosts"
on one real redis-server, each with a listener: they must tick once per second between
them, and hand over when the leader's listener leaves. The leadership logic is also
driven in-process with a fake clock and a shared lock store, to check every beat of
minute-long runs (renewable and non-renewable locks, hand-over, a dead leader).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from gevent import monkey

from app.producers import LOCK_NAME, TICKS_TOPIC, TicksProducer
from app.services import services
from tests.e2e.test_sse import parse_sse, stream
from tests.support.redis_server import RedisServer
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

# One-shot requests ask the server to close the connection: a keep-alive socket left
# open by a lingering Response object would make the server's graceful stop wait for it.
ONE_SHOT = {"Connection": "close"}


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, headers={**ONE_SHOT, **kwargs.pop("headers", {})}, **kwargs)


def subscribers(base: str) -> int:
    return get(base + "/healthz", timeout=scaled(5)).json()["subscribers"]


def newest_tick(base: str) -> str:
    return get(f"{base}/api/topics/ticks/events", params={"limit": 1}, timeout=scaled(5)).json()["cursor"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("ticks"), env={"SWITCHBOARD_SSE_HEARTBEAT": "1"}) as running:
        yield running


class TestTicksOverSSE:
    def test_a_listener_gets_a_tick_about_every_second_and_silence_follows_it(self, server):
        quiet = 2.5  # seconds watched for ticks that should not come
        time.sleep(quiet)
        assert newest_tick(server.url) == "", "no tick while nobody listens"

        with stream(server.url, TICKS_TOPIC) as raw:
            events = raw.read_events(4, timeout=8)
            arrivals = [t for t, chunk in raw.chunks[1:] if b"event: tick" in chunk]
        assert [e["type"] for e in events] == ["tick"] * 4
        ticks = [json.loads(e["data"]) for e in events]
        assert all(t["topic"] == "ticks" and t["sender"] is None for t in ticks)
        counts = [t["data"]["n"] for t in ticks]
        assert counts == list(range(counts[0], counts[0] + 4))
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert all(0.7 <= gap <= 1.0 + scaled(0.5) for gap in gaps), gaps

        wait_until(lambda: subscribers(server.url) == 0, timeout=5, message="the listener to be released")
        last = newest_tick(server.url)
        time.sleep(quiet)
        assert newest_tick(server.url) == last, "ticks stop when the last listener leaves"

    def test_ticks_can_be_switched_off(self, start_server):
        off = start_server({"SWITCHBOARD_TICKS": "0"})
        res = get(f"{off.url}/api/topics/ticks/long-poll", params={"timeout": 1.5}, timeout=scaled(10))
        assert res.status_code == 204

    def test_no_producer_outside_gevent(self):
        if monkey.is_module_patched("socket"):
            pytest.skip("this process is monkey-patched")
        from app import create_app

        app = create_app()
        assert services(app).producers == [], "unit tests get no background greenlet"


def tick_times(raw) -> list[tuple[float, dict]]:
    """(publish time on the server, event dict) of every tick a RawStream has read."""
    ticks = [json.loads(e["data"]) for e in parse_sse(raw.body)[0] if e["type"] == "tick"]
    return [(tick["time"], tick) for tick in ticks]


@pytest.mark.redis
class TestOneProducerPerDeployment:
    def test_two_hosts_on_one_redis_tick_once_between_them_and_hand_over(self, tmp_path, start_server):
        with RedisServer(tmp_path / "redis") as redis_server:
            env = {"SWITCHBOARD_REDIS_URL": redis_server.url, "SWITCHBOARD_SSE_HEARTBEAT": "0.5"}
            hosts = [start_server(env), start_server(env)]
            raws = [stream(host.url, TICKS_TOPIC) for host in hosts]
            try:
                raws[0].read_events(4, timeout=10)
                first = tick_times(raws[0])
                ids = [event["id"] for _, event in first]
                raws[1].read_until(lambda events: ids[-1] in {json.loads(e["data"])["id"] for e in events}, timeout=5)
                leaders = {event["data"]["worker"] for _, event in first}
                assert len(leaders) == 1, f"one producer for both hosts, got ticks from {leaders}"
                gaps = [b - a for (a, _), (b, _) in zip(first, first[1:])]
                assert all(0.7 <= gap <= 1.0 + scaled(0.5) for gap in gaps), gaps

                (leader,) = leaders
                lead = next(i for i, host in enumerate(hosts) if leader in host.worker_pids())
                other = 1 - lead
                raws[lead].close()  # the leader's last listener leaves: it must hand over
                left = time.monotonic()
                raws[other].read_until(
                    lambda events: any(
                        json.loads(e["data"])["data"]["worker"] != leader for e in events if e["type"] == "tick"
                    ),
                    timeout=10,
                )
                taken_over = time.monotonic() - left
                assert taken_over < 2 * 0.5 + 2 + scaled(1.0), "released within two heartbeats and a beat"
                raws[other].read_events(len([e for e in raws[other].events() if e["type"] == "tick"]) + 2, timeout=5)
                ticks = tick_times(raws[other])
                gaps = [b - a for (a, _), (b, _) in zip(ticks, ticks[1:])]
                assert min(gaps) >= 0.5, f"never two producers at once: {gaps}"
                assert len({event["id"] for _, event in ticks}) == len(ticks)
            finally:
                for raw in raws:
                    raw.close()


# -------------------------------------------------------------------- leadership logic


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LockStore:
    """Locks with expiry, shared by several fake workers (what Redis is to real ones)."""

    def __init__(self, clock: Clock, renewable: bool):
        self.clock = clock
        self.renewable = renewable
        self.locks: dict[str, tuple[str, float]] = {}


class FakeBackend:
    def __init__(self, store: LockStore, owner: str):
        self.store = store
        self.owner = owner

    def acquire_lock(self, name: str, ttl: float) -> bool:
        held = self.store.locks.get(name)
        now = self.store.clock()
        if held is None or held[1] <= now or (held[0] == self.owner and self.store.renewable):
            self.store.locks[name] = (self.owner, now + ttl)
            return True
        return False

    def release_lock(self, name: str) -> None:
        if self.store.locks.get(name, ("",))[0] == self.owner:
            del self.store.locks[name]


class FakeHub:
    def __init__(self, backend: FakeBackend, log: list):
        self.backend = backend
        self.listeners = 1
        self.log = log

    def subscriber_count(self, topic=None) -> int:
        return self.listeners

    def acquire_lock(self, name: str, ttl: float) -> bool:
        return self.backend.acquire_lock(name, ttl)

    def release_lock(self, name: str) -> None:
        self.backend.release_lock(name)

    def publish(self, topic, data, *, type="message", sender=None):
        self.log.append((self.backend.store.clock(), self.backend.owner, topic, type))
        return object()


def deployment(workers: int, renewable: bool):
    clock = Clock()
    store = LockStore(clock, renewable)
    log: list = []
    producers = [
        TicksProducer(FakeHub(FakeBackend(store, f"w{i}"), log), interval=1.0, clock=clock) for i in range(workers)
    ]
    return clock, producers, log


def run(clock: Clock, producers, beats: int, each_beat=lambda beat: None, alive=None) -> None:
    for beat in range(beats):
        each_beat(beat)
        for i, producer in enumerate(producers):
            if alive is None or alive(i, beat):
                producer.step()
        clock.now += 1.0


def per_beat(log, beats: int) -> list[int]:
    counts = [0] * beats
    for at, *_ in log:
        counts[int(at)] += 1
    return counts


class TestLeadership:
    @pytest.mark.parametrize("renewable", [True, False])
    def test_never_two_producers_at_once(self, renewable):
        clock, producers, log = deployment(3, renewable)
        run(clock, producers, 60)
        assert max(per_beat(log, 60)) == 1
        assert all(topic == TICKS_TOPIC and type_ == "tick" for _, _, topic, type_ in log)

    def test_a_renewable_lock_gives_a_tick_every_beat_from_one_leader(self):
        clock, producers, log = deployment(3, renewable=True)
        run(clock, producers, 60)
        assert per_beat(log, 60) == [1] * 60
        assert {owner for _, owner, *_ in log} == {"w0"}

    def test_a_lock_that_cannot_be_renewed_only_pauses_briefly(self):
        clock, producers, log = deployment(2, renewable=False)
        run(clock, producers, 60)
        assert sum(per_beat(log, 60)) >= 60 * 3 / 5, "at most two quiet beats per five-second lease"

    def test_a_worker_whose_listeners_leave_hands_over_at_once(self):
        clock, producers, log = deployment(2, renewable=True)

        def listeners(beat):
            producers[0].hub.listeners = 1 if beat < 10 else 0

        run(clock, producers, 20, listeners)
        assert per_beat(log, 20) == [1] * 20, "no beat lost in the hand-over"
        assert [owner for at, owner, *_ in log if at >= 10] == ["w1"] * 10
        assert LOCK_NAME in producers[1].hub.backend.store.locks

    def test_nobody_listening_means_no_ticks_and_no_lock(self):
        clock, producers, log = deployment(2, renewable=True)
        for producer in producers:
            producer.hub.listeners = 0
        run(clock, producers, 10)
        assert log == [] and producers[0].hub.backend.store.locks == {}

    def test_a_dead_leader_is_replaced_within_its_lease(self):
        clock, producers, log = deployment(2, renewable=True)
        run(clock, producers, 20, alive=lambda i, beat: i == 1 or beat < 5)  # w0 dies at beat 5
        counts = per_beat(log, 20)
        assert max(counts) == 1
        quiet = [beat for beat, n in enumerate(counts) if n == 0]
        assert len(quiet) <= producers[0].ttl, quiet
        assert all(owner == "w1" for at, owner, *_ in log if at >= 5 + producers[0].ttl)
