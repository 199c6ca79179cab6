"""Work queues over STOMP (``/queue/<name>``) and HTTP, on a real gunicorn with the in-memory hub.

Each message to exactly one consumer, round robin; kept until a consumer takes it, even
with none subscribed; owned by its consumer until ACK in the client ack modes; NACK, a
disconnect and the ack timeout put it back (``redelivered:true``, ``delivery-count``);
after ``SWITCHBOARD_QUEUE_MAX_DELIVERIES`` it goes to ``<name>.dlq``; bounded, and counted
in /metrics. Every test runs on the in-memory hub and on Redis (one worker; three workers,
one of them killed with messages in flight, are in test_queue_workers.py).
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.e2e.test_stomp_ws import Wire, build
from tests.support.auth import auth_env, mint
from tests.support.redis_server import RedisServer
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

ACK_TIMEOUT = 1.5


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def server(request, tmp_path_factory):
    """The same server on the in-memory hub, and on Redis (Streams consumer groups)."""
    env = {
        "SWITCHBOARD_QUEUE_MAX_DELIVERIES": "3",
        "SWITCHBOARD_QUEUE_MAX_MESSAGES": "5",
        "SWITCHBOARD_QUEUE_ACK_TIMEOUT": str(scaled(ACK_TIMEOUT)),
    }
    directory = tmp_path_factory.mktemp(f"queues-{request.param}")
    if request.param == "memory":
        with Gunicorn(directory, env=env) as running:
            yield running
        return
    with RedisServer(directory / "redis") as redis_server:
        with Gunicorn(directory, env={**env, "SWITCHBOARD_REDIS_URL": redis_server.url}) as running:
            yield running


@pytest.fixture
def clients(server):
    made: list[Wire] = []

    def make(target=None, **connect) -> Wire:
        client = Wire(target or server)
        made.append(client)
        client.connect(**connect)
        return client

    yield make
    for client in made:
        client.close()


def send(client: Wire, queue: str, body: str, receipt: str | None = None, **headers) -> None:
    frame = {"destination": f"/queue/{queue}", "content-type": "text/plain", **headers}
    if receipt:
        frame["receipt"] = receipt
    client.send_frame("SEND", frame, body)
    if receipt:
        client.expect_receipt(receipt)


def http_send(base: str, queue: str, data, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(
        f"{base}/api/queues/{queue}/messages", json={"data": data}, headers=headers, timeout=scaled(10)
    )


def metric(base: str, name: str, queue: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=scaled(10)).text
    match = re.search(rf'^{name}{{queue="{re.escape(queue)}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


class TestDelivery:
    def test_kept_until_a_consumer_comes_then_in_order(self, clients):
        producer = clients()
        for n in range(3):
            send(producer, "q-kept", f"m{n}", receipt=f"r{n}")
        consumer = clients()
        consumer.subscribe("/queue/q-kept")
        messages = consumer.messages(3)
        assert [m.body for m in messages] == [b"m0", b"m1", b"m2"]
        assert all(m.get("destination") == "/queue/q-kept" for m in messages)
        assert [m.get("delivery-count") for m in messages] == ["1", "1", "1"] and "redelivered" not in messages[0]
        consumer.nothing_for()

    def test_round_robin_exactly_one_consumer_each(self, server, clients):
        a, b = clients(), clients()
        a.subscribe("/queue/q-rr", sub_id="a")
        b.subscribe("/queue/q-rr", sub_id="b")
        ids = [http_send(server.url, "q-rr", n).json()["id"] for n in range(4)]
        got_a, got_b = a.messages(2), b.messages(2)
        assert [m.body for m in got_a] == [b"0", b"2"] and [m.body for m in got_b] == [b"1", b"3"]
        assert sorted(m.get("event-id") for m in got_a + got_b) == sorted(ids)
        a.nothing_for()
        b.nothing_for()

    def test_an_unacked_message_goes_to_the_other_consumer_when_its_holder_dies(self, clients):
        a, b = clients(), clients()
        a.subscribe("/queue/q-crash", sub_id="a", ack="client-individual", prefetch_count="1")
        b.subscribe("/queue/q-crash", sub_id="b", ack="client-individual", prefetch_count="1")
        producer = clients()
        send(producer, "q-crash", "first", receipt="1")
        send(producer, "q-crash", "second", receipt="2")
        (held,) = a.messages(1)
        (other,) = b.messages(1)
        assert (held.body, other.body) == (b"first", b"second")
        b.send_frame("ACK", {"id": other.get("ack")})
        a.ws.sock.close()  # killed, no DISCONNECT, no ACK
        (again,) = b.messages(1)
        assert again.body == b"first" and again.get("redelivered") == "true" and again.get("delivery-count") == "2"
        assert again.get("event-id") == held.get("event-id")

    def test_nack_puts_it_back_for_another_consumer(self, clients):
        a, b = clients(), clients()
        a.subscribe("/queue/q-nack", sub_id="a", ack="client-individual", prefetch_count="1")
        b.subscribe("/queue/q-nack", sub_id="b", ack="client-individual", prefetch_count="1")
        send(clients(), "q-nack", "refuse me", receipt="r")
        (refused,) = a.messages(1)
        a.send_frame("NACK", {"id": refused.get("ack"), "receipt": "n"})
        a.expect_receipt("n")
        (again,) = b.messages(1)
        assert again.body == b"refuse me" and again.get("redelivered") == "true"
        a.nothing_for()

    def test_client_mode_ack_is_cumulative(self, clients):
        consumer = clients()
        consumer.subscribe("/queue/q-cum", ack="client", prefetch_count="3")
        producer = clients()
        for n in range(4):
            send(producer, "q-cum", f"m{n}", receipt=f"r{n}")
        first = consumer.messages(3)
        consumer.nothing_for()
        consumer.send_frame("ACK", {"id": first[2].get("ack")})  # all three
        (fourth,) = consumer.messages(1)
        assert fourth.body == b"m3" and "redelivered" not in fourth

    def test_dead_letter_queue_after_max_deliveries(self, server, clients):
        consumer = clients()
        consumer.subscribe("/queue/q-poison", ack="client-individual", prefetch_count="1")
        send(clients(), "q-poison", "poison", receipt="r")
        for delivery in (1, 2, 3):
            (message,) = consumer.messages(1)
            assert message.get("delivery-count") == str(delivery)
            consumer.send_frame("NACK", {"id": message.get("ack")})
        consumer.nothing_for()
        dlq = clients()
        dlq.subscribe("/queue/q-poison.dlq")
        (dead,) = dlq.messages(1)
        assert dead.body == b"poison" and dead.get("destination") == "/queue/q-poison.dlq"
        assert metric(server.url, "switchboard_queue_dead_lettered_total", "q-poison") == 1
        assert metric(server.url, "switchboard_queue_redeliveries_total", "q-poison") == 2

    def test_the_ack_timeout_gives_it_to_another_and_a_late_ack_is_harmless(self, clients):
        slow, fast = clients(), clients()
        slow.subscribe("/queue/q-timeout", sub_id="slow", ack="client-individual", prefetch_count="1")
        send(clients(), "q-timeout", "hurry", receipt="r")
        (held,) = slow.messages(1)
        fast.subscribe("/queue/q-timeout", sub_id="fast", ack="client-individual", prefetch_count="1")
        started = time.monotonic()
        (again,) = fast.messages(1, timeout=ACK_TIMEOUT * 4)
        assert time.monotonic() - started >= scaled(ACK_TIMEOUT) * 0.5
        assert again.body == b"hurry" and again.get("redelivered") == "true"
        slow.send_frame("ACK", {"id": held.get("ack"), "receipt": "late"})
        slow.expect_receipt("late")  # too late to count, but not an error
        fast.send_frame("ACK", {"id": again.get("ack"), "receipt": "ok"})
        fast.expect_receipt("ok")

    def test_transactional_acks_apply_at_commit_and_vanish_at_abort(self, clients):
        consumer = clients()
        consumer.subscribe("/queue/q-txack", ack="client-individual", prefetch_count="2")
        producer = clients()
        send(producer, "q-txack", "keep", receipt="1")
        send(producer, "q-txack", "done", receipt="2")
        keep, done = consumer.messages(2)
        consumer.send_frame("BEGIN", {"transaction": "a"})
        consumer.send_frame("ACK", {"id": keep.get("ack"), "transaction": "a"})
        consumer.send_frame("ABORT", {"transaction": "a"})
        consumer.send_frame("BEGIN", {"transaction": "c"})
        consumer.send_frame("ACK", {"id": done.get("ack"), "transaction": "c"})
        consumer.send_frame("COMMIT", {"transaction": "c", "receipt": "c"})
        consumer.expect_receipt("c")
        consumer.close()  # "keep" was never acknowledged: it comes back
        other = clients()
        other.subscribe("/queue/q-txack")
        (back,) = other.messages(1)
        assert back.body == b"keep" and back.get("redelivered") == "true"
        other.nothing_for()

    def test_a_transaction_sends_to_queues_and_topics_together(self, clients):
        topic_listener, consumer = clients(), clients()
        topic_listener.subscribe("/topic/q-tx-topic")
        consumer.subscribe("/queue/q-tx")
        producer = clients()
        producer.send(
            build("BEGIN", {"transaction": "t"})
            + build("SEND", {"destination": "/queue/q-tx", "transaction": "t"}, "to the queue")
            + build("SEND", {"destination": "/topic/q-tx-topic", "transaction": "t"}, "to the topic")
            + build("COMMIT", {"transaction": "t", "receipt": "c"})
        )
        producer.expect_receipt("c")
        assert consumer.messages(1)[0].body == b"to the queue"
        assert topic_listener.messages(1)[0].body == b"to the topic"


class TestBoundsAndBadInput:
    def test_a_full_queue_refuses_and_drops_nothing(self, server, clients):
        producer = clients()
        for n in range(5):
            send(producer, "q-full", f"m{n}", receipt=f"r{n}")
        res = http_send(server.url, "q-full", "sixth")
        assert res.status_code == 429 and res.json()["error"] == "queue_full"
        send(producer, "q-full", "sixth")
        error = producer.expect_error("queue full")
        assert b"nothing was published" in error.body
        assert producer.expect_close() == 1008
        consumer = clients()
        consumer.subscribe("/queue/q-full")
        assert [m.body for m in consumer.messages(5)] == [f"m{n}".encode() for n in range(5)]
        consumer.nothing_for()

    def test_a_full_queue_refuses_a_whole_transaction(self, clients):
        producer = clients()
        producer.send_frame("BEGIN", {"transaction": "t"})
        for n in range(6):
            producer.send_frame("SEND", {"destination": "/queue/q-full-tx", "transaction": "t"}, f"m{n}")
        producer.send_frame("COMMIT", {"transaction": "t"})
        assert b"published nothing" in producer.expect_error("queue full").body
        consumer = clients()
        consumer.subscribe("/queue/q-full-tx")
        consumer.nothing_for()

    @pytest.mark.parametrize("ack_id", ["never-delivered", "other"])
    def test_ack_of_an_id_never_delivered_or_of_another_session(self, clients, ack_id):
        owner, stranger = clients(), clients()
        owner.subscribe("/queue/q-badack", ack="client-individual")
        send(clients(), "q-badack", "mine", receipt="r")
        (message,) = owner.messages(1)
        stranger.subscribe("/queue/q-badack", ack="client-individual")
        stranger.send_frame("ACK", {"id": message.get("ack") if ack_id == "other" else "nope"})
        stranger.expect_error("bad ack id")
        assert stranger.expect_close() == 1002
        owner.send_frame("ACK", {"id": message.get("ack"), "receipt": "mine"})
        owner.expect_receipt("mine")

    def test_a_queue_subscription_takes_no_last_event_id(self, clients):
        client = clients()
        client.send_frame("SUBSCRIBE", {"id": "0", "destination": "/queue/q-resume", "last-event-id": "a-1"})
        assert client.expect_error().get("message") == "a queue subscription takes no last-event-id"

    @pytest.mark.parametrize("destination", ["/queue/", "/queue/a/b", "/queue/.x", "/queues/x", "/queue/" + "x" * 101])
    def test_bad_queue_names(self, clients, destination):
        client = clients()
        client.send_frame("SEND", {"destination": destination}, "x")
        assert client.expect_error().get("message") == "invalid destination"

    def test_metrics_show_depth_and_in_flight(self, server, clients):
        producer = clients()
        for n in range(3):
            send(producer, "q-metrics", f"m{n}", receipt=f"r{n}")
        assert metric(server.url, "switchboard_queue_depth", "q-metrics") == 3
        consumer = clients()
        consumer.subscribe("/queue/q-metrics", ack="client-individual", prefetch_count="2")
        first, _second = consumer.messages(2)
        assert metric(server.url, "switchboard_queue_depth", "q-metrics") == 1
        assert metric(server.url, "switchboard_queue_in_flight", "q-metrics") == 2
        consumer.send_frame("ACK", {"id": first.get("ack"), "receipt": "a"})
        consumer.expect_receipt("a")
        consumer.messages(1)
        assert metric(server.url, "switchboard_queue_acked_total", "q-metrics") == 1
        assert metric(server.url, "switchboard_queue_depth", "q-metrics") == 0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("queues-auth"), env=auth_env()) as running:
        yield running


class TestQueueAccess:
    def test_queue_permissions_are_queue_dot_name(self, guarded, clients):
        worker = clients(guarded, passcode=mint("worker", subscribe=["queue.jobs"], publish=["queue.jobs"]))
        worker.subscribe("/queue/jobs")
        assert http_send(guarded.url, "jobs", 1, token=mint("app", publish=["queue.*"])).status_code == 201
        assert worker.messages(1)[0].body == b"1"
        res = http_send(guarded.url, "jobs", 2, token=mint("app", publish=["jobs"]))
        assert res.status_code == 403 and res.json()["error"] == "forbidden"
        nosy = clients(guarded, passcode=mint("nosy", subscribe=["jobs", "queue.other"]))
        nosy.send_frame("SUBSCRIBE", {"id": "0", "destination": "/queue/jobs"})
        assert nosy.expect_error("forbidden: /queue/jobs").get("destination") == "/queue/jobs"
        sender = clients(guarded, passcode=mint("s", publish=["queue.other"]))
        sender.send_frame("SEND", {"destination": "/queue/jobs"}, "x")
        sender.expect_error("forbidden: /queue/jobs")
        assert http_send(guarded.url, "jobs", 3).status_code == 401
        wait_until(lambda: True, timeout=0.1)
