"""Work queues over /ws (ops consume, ack, nack, cancel, send) and HTTP, beside STOMP, on real gunicorn."""

from __future__ import annotations

import json

import pytest
import requests
import websocket

from tests.e2e.test_stomp_ws import Wire
from tests.support.servers import Gunicorn
from tests.support.timing import scaled


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"SWITCHBOARD_QUEUE_MAX_MESSAGES": "3"}
    with Gunicorn(tmp_path_factory.mktemp("ws-queues"), env=env) as running:
        yield running


class Ws:
    def __init__(self, server):
        self.ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=scaled(5))
        self.refs = 0

    def op(self, **fields) -> dict:
        """Send an op; its reply (messages that come first are kept for next())."""
        self.refs += 1
        self.ws.send(json.dumps({**fields, "ref": self.refs}))
        self.kept = getattr(self, "kept", [])
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("ref") == self.refs:
                return reply
            self.kept.append(reply)

    def next(self) -> dict:
        kept = getattr(self, "kept", [])
        if kept:
            return kept.pop(0)
        return json.loads(self.ws.recv())

    def nothing(self, seconds: float = 0.4) -> None:
        assert not getattr(self, "kept", [])
        self.ws.settimeout(seconds)
        try:
            raise AssertionError(f"unexpected {self.ws.recv()!r}")
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.ws.settimeout(scaled(5))

    def close(self):
        self.ws.close()


@pytest.fixture
def conns(server):
    made = []

    def make():
        conn = Ws(server)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def http_send(server, queue, data):
    return requests.post(f"{server.url}/api/queues/{queue}/messages", json={"data": data}, timeout=scaled(5))


def test_consume_ack_nack_and_close(server, conns):
    a, b = conns(), conns()
    assert a.op(op="consume", queue="wq", prefetch=1) == {"op": "ok", "ref": 1, "queue": "wq"}
    sent = http_send(server, "wq", {"job": 1}).json()
    message = a.next()
    assert message["op"] == "message" and message["queue"] == "wq" and message["id"] == sent["id"]
    assert message["data"] == {"job": 1} and message["delivery_count"] == 1 and message["redelivered"] is False
    b.op(op="consume", queue="wq", prefetch=1)
    assert a.op(op="nack", id=message["id"])["op"] == "ok"
    again = b.next()
    assert again["id"] == message["id"] and again["redelivered"] is True and again["delivery_count"] == 2
    assert a.op(op="ack", id=message["id"])["error"] == "not_held"  # b holds it now
    b.close()  # gone with it un-acknowledged: back to a
    third = a.next()
    assert third["id"] == message["id"] and third["delivery_count"] == 3
    assert a.op(op="ack", id=message["id"]) == {"op": "ok", "ref": 4, "id": message["id"]}
    a.nothing()


def test_send_op_and_a_stomp_consumer_share_one_queue(server, conns):
    ws = conns()
    stomp = Wire(server)
    try:
        stomp.connect()
        stomp.subscribe("/queue/mixed")
        ws.op(op="consume", queue="mixed", prefetch=5)
        ids = [ws.op(op="send", queue="mixed", data=n, headers={"x-n": str(n)})["id"] for n in range(2)]
        got_stomp = stomp.messages(1)[0]
        got_ws = ws.next()
        assert {got_stomp.get("event-id"), got_ws["id"]} == set(ids)  # one each, round robin
        assert got_ws["headers"] == {"x-n": str(ids.index(got_ws["id"]))}
        assert ws.op(op="ack", id=got_ws["id"])["op"] == "ok"
    finally:
        stomp.close()


def test_bad_ops(server, conns):
    conn = conns()
    assert conn.op(op="consume", queue="bad/name")["error"] == "bad_queue"
    assert conn.op(op="consume", queue="q", prefetch=0)["error"] == "bad_message"
    assert conn.op(op="ack", id="never")["error"] == "not_held"
    assert conn.op(op="cancel", queue="q")["error"] == "not_consuming"
    conn.op(op="consume", queue="q")
    assert conn.op(op="consume", queue="q")["error"] == "already_consuming"
    assert conn.op(op="cancel", queue="q")["op"] == "ok"
    for n in range(3):
        assert conn.op(op="send", queue="ws-full", data=n)["op"] == "ok"
    refused = conn.op(op="send", queue="ws-full", data=3)
    assert refused["error"] == "queue_full" and "nothing was stored" in refused["message"]
    assert conn.op(op="send", queue="ws-full", data=1, headers={"sender": "x"})["error"] == "bad_headers"
