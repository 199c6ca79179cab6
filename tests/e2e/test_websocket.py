"""The ``/ws`` JSON transport against a real gunicorn with the real worker class.

Clients are websocket-client (tests.support.wsclients.JsonClient); each keeps its own
cookie jar when given a requests.Session, so two jars are two senders. Handshake and
frame limits belong to tests/transports/test_wsio.py; this file tests the protocol.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests
import websocket

from tests.support.timing import scaled, wait_until
from tests.support.wsclients import HandshakeFailed, JsonClient, RawWebSocket, ws_url

JSON = {"Content-Type": "application/json"}
EVENT_KEYS = ["op", "id", "topic", "type", "data", "sender", "time"]


def publish_http(session, base, topic, data, **extra) -> dict:
    res = session.post(
        f"{base}/api/topics/{topic}/events", data=json.dumps({"data": data, **extra}), headers=JSON, timeout=scaled(10)
    )
    assert res.status_code == 201, res.text
    return res.json()


def subscribers(base) -> int:
    res = requests.get(f"{base}/healthz", timeout=scaled(5))
    assert res.status_code == 200
    return res.json()["subscribers"]


@pytest.fixture
def connect(server):
    """Factory: ``connect(session=None, **options)`` opens a JsonClient on the module server."""
    clients: list[JsonClient] = []

    def open_client(session=None, base=None, **options) -> JsonClient:
        client = JsonClient(ws_url(base or server.url), session=session, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def subscribed(client: JsonClient, topic: str, **fields) -> dict:
    reply = client.request("subscribe", topic=topic, **fields)
    assert reply["op"] == "ok", reply
    return reply


# ------------------------------------------------------------------------ handshake


class TestHandshake:
    def test_plain_get_is_426_with_a_json_error(self, server):
        res = requests.get(f"{server.url}/ws", timeout=scaled(5))
        assert res.status_code == 426
        assert res.headers["Content-Type"].startswith("application/json")
        assert res.headers["Upgrade"] == "websocket"
        assert res.json()["error"] == "upgrade_required" and "WebSocket" in res.json()["message"]

    def test_post_is_405(self, server):
        res = requests.post(f"{server.url}/ws", data="{}", headers=JSON, timeout=scaled(5))
        assert res.status_code == 405 and res.json()["error"] == "method_not_allowed"

    def test_hostile_origin_is_refused_before_101(self, server):
        with pytest.raises(HandshakeFailed) as refused:
            RawWebSocket.connect(ws_url(server.url), headers={"Origin": "https://evil.example"}, timeout=scaled(5))
        assert refused.value.status == 403
        res = requests.get(
            f"{server.url}/ws",
            timeout=scaled(5),
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Origin": "https://evil.example",
            },
        )
        assert res.status_code == 403 and res.json()["error"] == "forbidden_origin"

    def test_own_origin_is_accepted(self, connect, server):
        client = connect(origin=server.url)
        assert client.request("ping")["op"] == "ok"


# ------------------------------------------------------------------------------ ops


class TestOps:
    def test_ping_answers_ok_echoing_the_ref(self, connect):
        client = connect()
        reply = client.request("ping")
        assert reply["op"] == "ok" and reply["ref"] == "r1"
        assert abs(reply["time"] - time.time()) < 60
        client.send(op="ping", ref=7)
        assert client.recv() == {"op": "ok", "ref": 7, "time": pytest.approx(time.time(), abs=60)}
        client.send(op="ping")
        assert client.recv()["ref"] is None, "no ref given: ref null"

    def test_subscribe_publish_event(self, connect, http, server):
        sender = http.get(f"{server.url}/api/whoami", timeout=5).json()["sender"]
        client = connect(session=http)
        reply = client.request("subscribe", topic="ws-basic")
        assert reply == {"op": "ok", "ref": "r1", "topic": "ws-basic", "cursor": ""}
        published = client.request("publish", topic="ws-basic", data={"text": "hello"})
        assert published["op"] == "ok" and published["topic"] == "ws-basic" and published["id"]
        raw = client.next_event()
        assert list(raw) == EVENT_KEYS, "event keys in the documented order"
        assert raw == {
            "op": "event",
            "id": published["id"],
            "topic": "ws-basic",
            "type": "message",
            "data": {"text": "hello"},
            "sender": sender,
            "time": pytest.approx(time.time(), abs=60),
        }

    def test_event_bytes_are_the_event_json_with_op_first(self, connect, http, server):
        client = connect()
        subscribed(client, "ws-bytes")
        event = publish_http(http, server.url, "ws-bytes", {"text": "é ☃ \u2028"})
        client.ws.settimeout(scaled(5))
        opcode, data = client.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT
        assert data == ('{"op":"event",' + json.dumps(event, ensure_ascii=False, separators=(",", ":"))[1:]).encode()

    def test_subscribe_without_since_starts_at_the_newest_event(self, connect, http, server):
        ids = [publish_http(http, server.url, "ws-newest", n)["id"] for n in range(3)]
        client = connect()
        assert subscribed(client, "ws-newest")["cursor"] == ids[-1]
        publish_http(http, server.url, "ws-newest", 3)
        assert client.next_event()["data"] == 3, "older events are not replayed without since"

    def test_custom_type(self, connect):
        client = connect()
        subscribed(client, "ws-type")
        assert client.request("publish", topic="ws-type", type="score", data=1)["op"] == "ok"
        event = client.next_event()
        assert event["type"] == "score" and event["data"] == 1

    def test_publish_null_data(self, connect):
        client = connect()
        subscribed(client, "ws-null")
        assert client.request("publish", topic="ws-null", data=None)["op"] == "ok"
        assert client.next_event()["data"] is None

    def test_several_topics_on_one_connection_and_unsubscribe(self, connect, http, server):
        client = connect()
        subscribed(client, "ws-multi-a")
        subscribed(client, "ws-multi-b")
        publish_http(http, server.url, "ws-multi-a", "a1")
        publish_http(http, server.url, "ws-multi-c", "c1")  # not subscribed
        publish_http(http, server.url, "ws-multi-b", "b1")
        got = [(e["topic"], e["data"]) for e in client.events(2)]
        assert sorted(got) == [("ws-multi-a", "a1"), ("ws-multi-b", "b1")]

        assert client.request("unsubscribe", topic="ws-multi-a") == {"op": "ok", "ref": "r3", "topic": "ws-multi-a"}
        publish_http(http, server.url, "ws-multi-a", "a2")
        publish_http(http, server.url, "ws-multi-b", "b2")  # the marker: after it, nothing from a
        assert client.next_event()["data"] == "b2"
        assert client.request("ping")["op"] == "ok"
        assert not client.pending, client.pending

        # subscribing again after unsubscribing works
        subscribed(client, "ws-multi-a")
        publish_http(http, server.url, "ws-multi-a", "a3")
        assert client.next_event()["data"] == "a3"

    def test_several_clients_see_the_same_events_in_the_same_order(self, connect):
        clients = [connect(session=requests.Session()) for _ in range(5)]
        for client in clients:
            subscribed(client, "ws-room")
        for n, client in enumerate(clients):
            assert client.request("publish", topic="ws-room", data={"n": n})["op"] == "ok"
        received = [client.events(5) for client in clients]
        orders = [[e["id"] for e in events] for events in received]
        assert all(order == orders[0] for order in orders)
        assert sorted(e["data"]["n"] for e in received[0]) == list(range(5))
        assert len({e["sender"] for e in received[0]}) == 5, "five cookie jars, five senders"

    def test_the_publishers_own_events_come_back(self, connect):
        client = connect()
        subscribed(client, "ws-echo")
        ids = [client.request("publish", topic="ws-echo", data=n)["id"] for n in range(3)]
        assert [e["id"] for e in client.events(3)] == ids


# --------------------------------------------------------------------------- errors


BAD_MESSAGES = [
    # (text, error code, ref in the reply)
    ("{", "bad_json", None),
    ("nope", "bad_json", None),
    ('{"op": "ping", "x": NaN}', "bad_json", None),
    ("[" * 100_000, "bad_json", None),
    ("[1]", "bad_message", None),
    ('"ping"', "bad_message", None),
    ("null", "bad_message", None),
    ('{"ref": "a"}', "bad_message", "a"),
    ('{"op": 5, "ref": "a"}', "bad_message", "a"),
    ('{"op": "shout", "ref": "a"}', "unknown_op", "a"),
    ('{"op": "subscribe", "ref": "a"}', "bad_message", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": "chat", "extra": 1}', "bad_message", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": "bad topic"}', "bad_topic", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": "a/b"}', "bad_topic", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": 5}', "bad_topic", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": "' + "x" * 129 + '"}', "bad_topic", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": "t", "since": "garbage"}', "bad_cursor", "a"),
    ('{"op": "subscribe", "ref": "a", "topic": "t", "since": 5}', "bad_cursor", "a"),
    ('{"op": "unsubscribe", "ref": "a", "topic": "never-subscribed"}', "not_subscribed", "a"),
    ('{"op": "unsubscribe", "ref": "a"}', "bad_message", "a"),
    ('{"op": "publish", "ref": "a", "topic": "t"}', "bad_message", "a"),
    ('{"op": "publish", "ref": "a", "topic": "t", "data": 1, "type": "gap"}', "bad_type", "a"),
    ('{"op": "publish", "ref": "a", "topic": "t", "data": 1, "type": 5}', "bad_type", "a"),
    ('{"op": "publish", "ref": "a", "topic": "t", "data": 1, "sender": "admin"}', "bad_message", "a"),
    ('{"op": "publish", "ref": "a", "topic": "-t", "data": 1}', "bad_topic", "a"),
    ('{"op": "ping", "ref": {"nested": 1}}', "bad_ref", None),
    ('{"op": "ping", "ref": "' + "r" * 257 + '"}', "bad_ref", None),
    ('{"op": "ping", "ref": true}', "bad_ref", None),
]


class TestBadMessages:
    @pytest.mark.parametrize(
        "text,code,ref", BAD_MESSAGES, ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(BAD_MESSAGES)]
    )
    def test_bad_message_gets_an_error_and_the_connection_stays_open(self, connect, text, code, ref):
        client = connect()
        client.send_text(text)
        reply = client.recv()
        assert reply["op"] == "error" and reply["error"] == code, reply
        assert reply["ref"] == ref and reply["message"], reply
        assert list(reply) == ["op", "ref", "error", "message"]
        assert client.request("ping")["op"] == "ok", "still open"

    def test_sender_in_a_publish_is_refused_with_a_hint(self, connect):
        reply = connect().request("publish", topic="t", data=1, sender="admin")
        assert reply["error"] == "bad_message" and "server sets the sender" in reply["message"]

    def test_subscribing_twice(self, connect):
        client = connect()
        subscribed(client, "ws-twice")
        reply = client.request("subscribe", topic="ws-twice")
        assert reply["op"] == "error" and reply["error"] == "already_subscribed" and reply["ref"] == "r2"

    def test_too_many_subscriptions(self, connect):
        from app.transports.websocket import MAX_SUBSCRIPTIONS

        client = connect()
        for n in range(MAX_SUBSCRIPTIONS):
            subscribed(client, f"ws-many-{n}")
        reply = client.request("subscribe", topic="ws-many-last")
        assert reply["error"] == "too_many_subscriptions"
        assert client.request("unsubscribe", topic="ws-many-0")["op"] == "ok"
        subscribed(client, "ws-many-last")

    def test_errors_do_not_disturb_subscriptions(self, connect, http, server):
        client = connect()
        subscribed(client, "ws-undisturbed")
        for text in ("{", "[]", '{"op": "nope"}'):
            client.send_text(text)
            assert client.recv()["op"] == "error"
        publish_http(http, server.url, "ws-undisturbed", "still here")
        assert client.next_event()["data"] == "still here"

    def test_binary_message_closes_with_1003(self, connect, server):
        client = connect()
        subscribed(client, "ws-binary")
        client.ws.send_binary(b"\x00\x01")
        code, reason = client.close_code()
        assert code == 1003 and "text" in reason
        wait_until(lambda: subscribers(server.url) == 0, timeout=5, message="subscription released")

    def test_lone_surrogate_in_data_is_delivered_escaped(self, connect):
        client = connect()
        subscribed(client, "ws-surrogate")
        client.send_text('{"op": "publish", "ref": "s", "topic": "ws-surrogate", "data": "\\ud800x"}')
        assert client.reply("s")["op"] == "ok"
        assert client.next_event()["data"] == "\ud800x"
        assert client.request("ping")["op"] == "ok"


# ------------------------------------------------------------------------- identity


class TestIdentity:
    def test_sender_is_the_session_of_the_handshake(self, connect, server):
        alice, bob = requests.Session(), requests.Session()
        names = [s.get(f"{server.url}/api/whoami", timeout=5).json()["sender"] for s in (alice, bob)]
        assert names[0] != names[1]
        a, b = connect(session=alice), connect(session=bob)
        subscribed(a, "ws-who")
        a_id = a.request("publish", topic="ws-who", data="from a")["id"]
        b_id = b.request("publish", topic="ws-who", data="from b")["id"]
        events = {e["id"]: e["sender"] for e in a.events(2)}
        assert events == {a_id: names[0], b_id: names[1]}
        # the same browser over HTTP has the same name
        assert publish_http(alice, server.url, "ws-who", "http")["sender"] == names[0]

    def test_without_a_cookie_the_connection_gets_a_guest_name(self, connect):
        client = connect()
        subscribed(client, "ws-anon")
        client.request("publish", topic="ws-anon", data=1)
        first = client.next_event()["sender"]
        client.request("publish", topic="ws-anon", data=2)
        assert first.startswith("guest-") and client.next_event()["sender"] == first, "fixed for the connection"


# --------------------------------------------------------------------------- resume


class TestResume:
    def test_resume_after_a_drop_replays_exactly_once_in_order_then_live(self, connect, server):
        topic = "ws-resume"
        http = requests.Session()
        first = connect()
        subscribed(first, topic)
        for n in range(3):
            publish_http(http, server.url, topic, n)
        seen = first.events(3)
        assert [e["data"] for e in seen] == [0, 1, 2]
        first.drop()
        for n in range(3, 6):  # missed while away
            publish_http(http, server.url, topic, n)

        # publish concurrently with the resubscribe: the seam must hold
        go = threading.Event()

        def publisher():
            with requests.Session() as s:
                go.wait(scaled(5))
                for n in range(6, 56):
                    publish_http(s, server.url, topic, n)

        thread = threading.Thread(target=publisher)
        thread.start()
        second = connect()
        go.set()
        reply = subscribed(second, topic, since=seen[-1]["id"])
        assert reply["cursor"] == seen[-1]["id"]
        thread.join(scaled(30))
        events = second.events(53)
        assert [e["op"] for e in events] == ["event"] * 53, "no gap"
        assert [e["data"] for e in events] == list(range(3, 56)), "each missed event once, in order"
        publish_http(http, server.url, topic, "live")
        assert second.next_event()["data"] == "live", "then live, with nothing repeated before it"

    def test_a_cursor_older_than_history_gets_a_gap(self, start_server):
        small = start_server({"SWITCHBOARD_HISTORY_SIZE": "10"})
        # closed before the server stops: an idle keep-alive connection would hold up its exit
        with requests.Session() as http:
            ids = [publish_http(http, small.url, "gap", n)["id"] for n in range(30)]
            with JsonClient(ws_url(small.url)) as client:
                assert subscribed(client, "gap", since=ids[0])["cursor"] == ids[0]
                assert client.next_event() == {"op": "gap", "topic": "gap"}
                assert [e["data"] for e in client.events(10)] == list(range(20, 30))
                publish_http(http, small.url, "gap", "live")
                assert client.next_event()["data"] == "live"
            with JsonClient(ws_url(small.url)) as client:  # a cursor still in history: no gap
                subscribed(client, "gap", since=ids[25])
                assert [e["data"] for e in client.events(5)] == [26, 27, 28, 29, "live"]

    def test_a_cursor_from_another_epoch_gets_a_gap(self, connect, http, server):
        mine = publish_http(http, server.url, "ws-epoch", "x")["id"]
        foreign = "zzz9-" + mine.rsplit("-", 1)[1]
        client = connect()
        subscribed(client, "ws-epoch", since=foreign)
        assert client.next_event() == {"op": "gap", "topic": "ws-epoch"}
        assert client.next_event()["data"] == "x"


# ----------------------------------------------------------------- cross-transport


class TestCrossTransport:
    def test_http_publish_reaches_a_ws_subscriber(self, connect, http, server):
        client = connect()
        subscribed(client, "ws-cross-1")
        event = publish_http(http, server.url, "ws-cross-1", {"text": "from http"})
        got = client.next_event()
        assert got == {"op": "event", **event}

    def test_ws_publish_is_visible_to_http_polling(self, connect, http, server):
        sender = http.get(f"{server.url}/api/whoami", timeout=5).json()["sender"]
        client = connect(session=http)
        published = client.request("publish", topic="ws-cross-2", data={"text": "from ws"})
        page = http.get(f"{server.url}/api/topics/ws-cross-2/events", timeout=5).json()
        assert [(e["id"], e["data"], e["sender"]) for e in page["events"]] == [
            (published["id"], {"text": "from ws"}, sender)
        ]


# ------------------------------------------------------------------------ lifecycle


class TestLifecycle:
    def test_subscriptions_are_released_when_connections_end(self, server, http):
        wait_until(lambda: subscribers(server.url) == 0, timeout=5, message="no subscribers left over")
        clean, dropped, busy = (JsonClient(ws_url(server.url)) for _ in range(3))
        for client in (clean, dropped, busy):
            subscribed(client, "ws-release-a")
            subscribed(client, "ws-release-b")
        assert subscribers(server.url) == 6
        for n in range(200):  # busy has unread events queued when it goes
            publish_http(http, server.url, "ws-release-a", {"n": n, "pad": "x" * 1000})
        clean.close()
        dropped.drop()
        busy.drop()
        wait_until(lambda: subscribers(server.url) == 0, timeout=10, message="subscribers back to 0")

    def test_metrics_count_open_sockets_and_deliveries(self, server, connect):
        def metric(name: str) -> float:
            text = requests.get(f"{server.url}/metrics", timeout=scaled(5)).text
            lines = [line for line in text.splitlines() if line.startswith(f'{name}{{transport="websocket"}} ')]
            return float(lines[0].split()[-1]) if lines else 0.0

        before = metric("switchboard_events_delivered_total")
        client = connect()
        subscribed(client, "ws-metrics")
        for n in range(3):
            client.request("publish", topic="ws-metrics", data=n)
        client.events(3)
        assert metric("switchboard_open_connections") >= 1
        assert metric("switchboard_events_delivered_total") >= before + 3
        client.close()
        wait_until(lambda: metric("switchboard_open_connections") == 0, timeout=5, message="socket uncounted")

    def test_sigterm_closes_websockets_with_1001(self, start_server):
        own = start_server()
        clients = [JsonClient(ws_url(own.url)) for _ in range(3)]
        for client in clients:
            subscribed(client, "ws-shutdown")
        started = time.monotonic()
        stopper = threading.Thread(target=own.stop)
        stopper.start()
        try:
            for client in clients:
                code, reason = client.close_code(timeout=10)
                assert code == 1001, (code, reason)
        finally:
            stopper.join(scaled(20))
        assert own.proc.returncode == 0
        assert time.monotonic() - started < scaled(10)
        assert "Traceback" not in own.log(), own.log()

    def test_slow_consumer_gets_a_gap_then_its_subscription_is_dropped(self, start_server):
        own = start_server({"SWITCHBOARD_QUEUE_SIZE": "4", "SWITCHBOARD_HISTORY_SIZE": "64"})
        fast = JsonClient(ws_url(own.url))
        # A tiny receive buffer, and no reading: the server's writes to it soon block.
        slow = JsonClient(ws_url(own.url), sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        for client in (fast, slow):
            subscribed(client, "ws-slow")
            subscribed(client, "ws-slow-other")
        count, pad = 300, "x" * 32_000
        fast_got: list = []
        reader = threading.Thread(target=lambda: fast_got.extend(fast.events(count, timeout=20)))
        reader.start()
        with requests.Session() as http:
            for n in range(count):  # the hub never waits for the slow socket
                publish_http(http, own.url, "ws-slow", {"n": n, "pad": pad})
            reader.join(scaled(30))
            # The fast client got everything, in order, while the slow one read nothing.
            assert [e["op"] for e in fast_got] == ["event"] * count, "the fast client had no gap"
            assert [e["data"]["n"] for e in fast_got] == list(range(count))

            seen, message = [], None
            while True:
                message = slow.next_message(timeout=20)
                if message["op"] != "event":
                    break
                seen.append(message["data"]["n"])
            assert message == {"op": "gap", "topic": "ws-slow"}
            assert seen == list(range(len(seen))) and len(seen) < count - 64
            dropped = slow.next_message(timeout=10)
            assert dropped["op"] == "error" and dropped["error"] == "slow_consumer", dropped
            assert dropped["topic"] == "ws-slow" and dropped["ref"] is None
            # The connection and its other subscription live on; it may subscribe again.
            assert slow.request("ping")["op"] == "ok"
            publish_http(http, own.url, "ws-slow-other", "other")
            assert slow.next_event()["data"] == "other"
            assert slow.request("subscribe", topic="ws-slow")["op"] == "ok"
            wait_until(lambda: subscribers(own.url) == 4, timeout=5, message="4 subscriptions")
        fast.close()
        slow.close()


# ---------------------------------------------------------------------------- redis


@pytest.mark.redis
def test_two_workers_share_one_audience_through_redis(start_server, tmp_path):
    """With Redis, sockets on either worker get every publish, and resume works the same."""
    from tests.support.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as redis_server:
        own = start_server({"SWITCHBOARD_REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"})
        wait_until(lambda: len(own.worker_pids()) == 2, timeout=15, message="two workers")
        clients = [JsonClient(ws_url(own.url), session=requests.Session()) for _ in range(8)]
        try:
            for client in clients:
                subscribed(client, "ws-redis")
            ids = [client.request("publish", topic="ws-redis", data=n)["id"] for n, client in enumerate(clients)]
            for client in clients:
                got = [e["id"] for e in client.events(8, timeout=10)]
                assert sorted(got) == sorted(ids) and len(set(got)) == 8

            last = ids[-1]
            clients[0].drop()
            with requests.Session() as http:
                missed = [publish_http(http, own.url, "ws-redis", f"missed {n}")["id"] for n in range(3)]
            with JsonClient(ws_url(own.url)) as again:
                subscribed(again, "ws-redis", since=last)
                assert [e["id"] for e in again.events(3, timeout=10)] == missed
                assert again.request("publish", topic="ws-redis", data="live")["op"] == "ok"
                assert again.next_event(timeout=10)["data"] == "live"
        finally:
            for client in clients[1:]:
                client.close()
