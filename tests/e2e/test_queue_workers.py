"""A work queue under churn: consumers join, leave, NACK and crash, and (Redis) a worker is SIGKILLed.

Real processes: gunicorn (one worker in memory; three on Redis, one server or a three-primary
cluster, the kernel spreading the STOMP connections over them), raw STOMP clients on
threads, HTTP producers. Throughout,
each message is delivered to one consumer at a time (no (message, delivery count) pair is
ever seen twice); at the end every message was acknowledged exactly once or is in the
dead-letter queue, none is lost, and /metrics agrees with what the clients counted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import pytest
import requests
import websocket

from tests.e2e.test_stomp_ws import Closed, Wire
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import RedisClusterServers
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

QUEUE = "work"
MAX_DELIVERIES = 3


class Consumer(threading.Thread):
    """A STOMP consumer of /queue/work on its own thread.

    ``mode``: ``ack`` (ACK each message, with a receipt), ``nack`` (NACK each message the
    first time it sees it), ``hold`` (keep what it gets, acknowledge nothing). Every
    consumer NACKs a message with header ``x-poison``.
    """

    def __init__(self, server, name: str, mode: str, ledger: "Ledger") -> None:
        super().__init__(daemon=True, name=name)
        self.name_ = name
        self.mode = mode
        self.ledger = ledger
        self.wire = Wire(server)
        self.wire.connect()
        self.wire.subscribe(f"/queue/{QUEUE}", sub_id=name, ack="client-individual", prefetch_count="2")
        self.port = self.wire.ws.sock.getsockname()[1]
        self.held: list[str] = []
        self.stop = threading.Event()
        self.gone = threading.Event()
        self._receipts: dict[str, str] = {}
        self._seen: set[str] = set()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    frame = self.wire.frame(timeout=0.2)
                except websocket.WebSocketTimeoutException:
                    continue
                if frame.command == "MESSAGE":
                    self._on_message(frame)
                elif frame.command == "RECEIPT":
                    event_id = self._receipts.pop(frame.get("receipt-id"), None)
                    if event_id is not None:
                        self.ledger.acked(event_id, self.name_)
                elif frame.command == "ERROR":
                    raise AssertionError(f"{self.name_}: {frame.get('message')}: {frame.body!r}")
        except (Closed, websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            pass  # its worker was killed, or it was closed on purpose
        finally:
            self.gone.set()

    def _on_message(self, frame) -> None:
        event_id, count = frame.get("event-id"), int(frame.get("delivery-count"))
        self.ledger.delivered(event_id, count, self.name_)
        first = event_id not in self._seen
        self._seen.add(event_id)
        if frame.get("x-poison") or (self.mode == "nack" and first):
            self.wire.send_frame("NACK", {"id": frame.get("ack")})
        elif self.mode == "hold":
            self.held.append(event_id)
        else:
            receipt = f"a{len(self._receipts)}-{frame.get('ack')}"
            self._receipts[receipt] = event_id
            self.wire.send_frame("ACK", {"id": frame.get("ack"), "receipt": receipt})

    def leave(self) -> None:
        """DISCONNECT politely: what it holds goes back to the queue."""
        self.stop.set()
        self.join(scaled(5))
        self.wire.send_frame("DISCONNECT", {"receipt": "bye"})
        self.wire.close()

    def crash(self) -> None:
        """Vanish without DISCONNECT (the TCP connection just drops)."""
        self.stop.set()
        self.join(scaled(5))
        self.wire.ws.sock.close()


class Ledger:
    """What every consumer saw, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: dict[tuple[str, int], str] = {}  # (message, delivery count) -> consumer
        self.acks: dict[str, list[str]] = {}  # message -> consumers whose ACK got a RECEIPT
        self.doubles: list = []

    def delivered(self, event_id: str, count: int, consumer: str) -> None:
        with self.lock:
            key = (event_id, count)
            if key in self.deliveries:
                self.doubles.append((key, self.deliveries[key], consumer))
            self.deliveries[key] = consumer

    def acked(self, event_id: str, consumer: str) -> None:
        with self.lock:
            self.acks.setdefault(event_id, []).append(consumer)


def send_many(base: str, start: int, count: int, poison: bool = False) -> list[str]:
    ids = []
    for n in range(start, start + count):
        body = {"data": n, **({"headers": {"x-poison": "1"}} if poison else {})}
        res = requests.post(f"{base}/api/queues/{QUEUE}/messages", json=body, timeout=scaled(10))
        assert res.status_code == 201, res.text
        ids.append(res.json()["id"])
    return ids


def worker_of(server: Gunicorn, port: int) -> int:
    """The gunicorn worker holding the server side of the client connection from ``port``."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{server.port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if re.search(rf"127\.0\.0\.1:{port}\s", line):
            return int(re.search(r"pid=(\d+)", line).group(1))
    raise AssertionError(f"no server socket for client port {port}:\n{out}")


def metric(base: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=scaled(10)).text
    match = re.search(rf'^{name}{{queue="{QUEUE}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(
    "kind", ["memory", pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]
)
def test_every_message_once_through_joins_leaves_nacks_and_crashes(tmp_path, kind):
    env = {
        "SWITCHBOARD_QUEUE_MAX_DELIVERIES": str(MAX_DELIVERIES),
        "SWITCHBOARD_QUEUE_ACK_TIMEOUT": "60",
        "SWITCHBOARD_PUBLISH_RATE": "0",
    }
    redis_server = None
    if kind != "memory":
        redis_server = (
            RedisServer(tmp_path / "redis") if kind == "redis" else RedisClusterServers(tmp_path / "rc")
        ).start()
        env.update({"SWITCHBOARD_REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "3"})
    server = Gunicorn(tmp_path, env=env).start()
    ledger = Ledger()
    consumers: list[Consumer] = []

    def join(name: str, mode: str) -> Consumer:
        consumer = Consumer(server, name, mode, ledger)
        consumer.start()
        consumers.append(consumer)
        return consumer

    try:
        for n in range(4):
            join(f"c{n}", "ack")
        join("nacker", "nack")
        sent = send_many(server.url, 0, 60)
        join("late-1", "ack")
        consumers[0].leave()  # leaves with what it holds: it goes back
        sent += send_many(server.url, 60, 20)
        join("late-2", "ack")

        # Some consumers hold messages without acknowledging them, then crash.
        if kind != "memory":
            pids = {c.name_: worker_of(server, c.port) for c in consumers if not c.gone.is_set()}
            victim = pids["c1"]
            doomed = [c for c in consumers if pids.get(c.name_) == victim]
            for consumer in doomed:
                consumer.mode = "hold"
        else:
            doomed = [consumers[2]]
            doomed[0].mode = "hold"
        sent += send_many(server.url, 80, 30)
        wait_until(lambda: all(c.held for c in doomed), timeout=20, message="the doomed consumers to hold messages")
        held = {event_id for c in doomed for event_id in c.held}
        if kind != "memory":
            os.kill(victim, signal.SIGKILL)
            for consumer in doomed:
                assert consumer.gone.wait(scaled(10)), f"{consumer.name_} still connected after SIGKILL"
        else:
            for consumer in doomed:
                consumer.crash()
        join("late-3", "ack")
        poison = send_many(server.url, 110, 3, poison=True)
        sent += poison

        healthy = set(sent) - set(poison)
        wait_until(
            lambda: healthy <= set(ledger.acks),
            timeout=60,
            message=f"every message acknowledged ({len(set(ledger.acks) & healthy)} of {len(healthy)})",
        )
        dlq = Wire(server)
        dlq.connect()
        dlq.subscribe(f"/queue/{QUEUE}.dlq")
        dead = [m.get("event-id") for m in dlq.messages(len(poison), timeout=30)]
        dlq.nothing_for(1.0)
        dlq.close()
        # /metrics: every worker's counters, the killed one's included (its files stay).
        counted = {name: metric(server.url, f"switchboard_queue_{name}_total") for name in ("acked", "dead_lettered")}
    finally:
        for consumer in consumers:
            consumer.stop.set()
        for consumer in consumers:
            consumer.join(scaled(5))
            consumer.wire.close()
        server.stop()
        if redis_server is not None:
            redis_server.stop()

    assert not ledger.doubles, f"delivered to two consumers at once: {ledger.doubles[:5]}"
    assert sorted(dead) == sorted(poison)  # the poison messages, each delivered MAX_DELIVERIES times
    for event_id in poison:
        assert {count for (mid, count) in ledger.deliveries if mid == event_id} == set(range(1, MAX_DELIVERIES + 1))
    twice = {event_id: who for event_id, who in ledger.acks.items() if len(who) > 1}
    assert not twice, f"acknowledged more than once: {twice}"
    assert set(ledger.acks) == set(sent) - set(poison)  # none lost, none acknowledged out of thin air
    assert held, "the crashed consumers held messages"
    for event_id in held:  # what they held went to someone else, marked as a redelivery
        assert any(mid == event_id and count > 1 for (mid, count) in ledger.deliveries), event_id
    assert counted == {"acked": len(ledger.acks), "dead_lettered": len(poison)}


def test_metrics_count_what_the_clients_counted(tmp_path):
    server = Gunicorn(tmp_path, env={"SWITCHBOARD_QUEUE_MAX_DELIVERIES": "2"}).start()
    try:
        ledger = Ledger()
        consumer = Consumer(server, "m", "nack", ledger)
        consumer.start()
        ids = send_many(server.url, 0, 5)
        wait_until(lambda: set(ids) <= set(ledger.acks), timeout=20, message="every message acknowledged")
        assert metric(server.url, "switchboard_queue_acked_total") == 5
        assert metric(server.url, "switchboard_queue_redeliveries_total") == 5  # each NACKed once
        assert metric(server.url, "switchboard_queue_depth") == 0
        assert metric(server.url, "switchboard_queue_in_flight") == 0
        consumer.stop.set()
        consumer.join(scaled(5))
        consumer.wire.close()
    finally:
        server.stop()
