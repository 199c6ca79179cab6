"""STOMP over SockJS on the real server: sockjs-client 1.6.1 under Node, forced onto each
transport it has there (websocket, xhr-streaming, xhr-polling, eventsource), carrying
stompjs 2.3.3 (the seed's ``Stomp.over(new SockJS(url))``) and @stomp/stompjs 7
(``webSocketFactory: () => new SockJS(url)``). The same checks as over a plain WebSocket
(tests/e2e/test_stomp_interop.py, tests/e2e/test_stomp_ws.py): receipts, the chat handler,
heart-beats, acks, transactions, resume and a megabyte of text; and the seed's own
endpoint, ``/websocket/stomp``, with its ``/sub`` and ``/pub`` destinations and chat body.
(The iframe-based and JSONP transports exist only in a browser: tests/browser/test_sockjs_page.py.)
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.node_clients import NodeClient
from tests.support.timing import scaled, wait_until

TRANSPORTS = ("websocket", "xhr-streaming", "xhr-polling", "eventsource")
# sockjs-client's transport name -> the server's (the metrics label is sockjs-<that>).
SERVER_NAME = {
    "websocket": "websocket",
    "xhr-streaming": "xhr_streaming",
    "xhr-polling": "xhr",
    "eventsource": "eventsource",
}
JSON = {"Content-Type": "application/json"}


def publish(base, topic, data):
    res = requests.post(
        f"{base}/api/topics/{topic}/events", data=json.dumps({"data": data}), headers=JSON, timeout=scaled(10)
    )
    assert res.status_code == 201, res.text
    return res.json()


def history(base, topic):
    res = requests.get(f"{base}/api/topics/{topic}/events", timeout=scaled(10))
    assert res.status_code == 200
    return res.json()["events"]


def open_connections(base) -> dict[str, float]:
    res = requests.get(base + "/metrics", timeout=scaled(5))
    assert res.status_code == 200
    return {
        sample.labels["transport"]: sample.value
        for family in text_string_to_metric_families(res.text)
        if family.name == "switchboard_open_connections"
        for sample in family.samples
    }


@pytest.fixture
def sockjs_client(server):
    started: list[NodeClient] = []

    def start(lib: str, transport: str, path: str = "/stomp-sockjs", heart_beat=(0, 0)) -> NodeClient:
        client = NodeClient(
            "sockjs_stomp_client.js",
            server.url + path,
            "--lib",
            lib,
            "--transport",
            transport,
            "--heartbeat",
            ",".join(map(str, heart_beat)),
        )
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


@pytest.mark.parametrize("lib", ("v2", "v7"))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receipts_chat_and_heart_beats_over_each_transport(server, sockjs_client, lib, transport):
    topic = f"sjs-{lib}-{transport}"
    started = time.monotonic()
    client = sockjs_client(lib, transport, heart_beat=(1000, 1000))
    assert client.expect("open")["transport"] == transport
    connected = client.expect("connected", timeout=15)
    assert connected["headers"]["version"] == ("1.1" if lib == "v2" else "1.2")
    assert connected["headers"]["heart-beat"] == "1000,1000"
    label = f"sockjs-{SERVER_NAME[transport]}"
    assert open_connections(server.url).get(label, 0) >= 1, label

    client.command("subscribe", destination=f"/topic/{topic}", id="s1", receipt="sub-1")
    client.expect("receipt", lambda r: r["id"] == "sub-1")
    client.command("subscribe", destination="/topic/chat", id="s2", receipt="sub-2")
    client.expect("receipt", lambda r: r["id"] == "sub-2")

    event = publish(server.url, topic, {"text": "from HTTP 한국어"})
    message = client.expect("message", lambda r: r["headers"]["subscription"] == "s1", what="the HTTP publish")
    assert json.loads(message["body"]) == {"text": "from HTTP 한국어"}
    assert message["headers"]["event-id"] == event["id"] and message["headers"]["subscription"] == "s1"

    client.command(
        "send",
        destination=f"/topic/{topic}",
        body=f"from {lib} over {transport}",
        receipt="send-1",
        headers={"content-type": "text/plain"},
    )
    client.expect("receipt", lambda r: r["id"] == "send-1")
    echo = client.expect("message", lambda r: r["headers"]["subscription"] == "s1")
    assert echo["body"] == f"from {lib} over {transport}"
    stored = history(server.url, topic)[-1]
    assert stored["data"] == echo["body"] and stored["sender"].startswith("guest-")

    client.command(
        "send",
        destination="/app/chat",
        body=json.dumps({"text": f"hi from {lib}/{transport}"}),
        headers={"content-type": "application/json"},
    )
    # Topic chat has presence: the subscriber hears itself join first (skipped here).
    chat = client.expect(
        "message", lambda r: r["headers"]["subscription"] == "s2" and r["headers"].get("event-type") != "presence"
    )
    assert json.loads(chat["body"]) == {"text": f"hi from {lib}/{transport}"}

    # STOMP heart-beats both ways at 1000 ms keep the session past the server's 2 s limit.
    while client.count("heartbeat-in") < 2:
        client.expect("heartbeat-in", timeout=5)
    while client.count("heartbeat-out") < 2:
        client.expect("heartbeat-out", timeout=5)
    while time.monotonic() - started < scaled(3.5):
        client.expect("heartbeat-in", timeout=5)
    client.command(
        "send",
        destination=f"/topic/{topic}",
        body="still here",
        receipt="send-2",
        headers={"content-type": "text/plain"},
    )
    client.expect("receipt", lambda r: r["id"] == "send-2")
    assert not any(r["kind"] in ("error", "close") for r in client.records)
    client.command("disconnect")
    client.expect("close", timeout=10)
    wait_until(
        lambda: open_connections(server.url).get(label, 0) == 0, timeout=10, message=f"{label} no longer counted"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stompjs7_acks_transactions_resume_and_a_megabyte(server, sockjs_client, transport):
    topic = f"sjs-more-{transport}"
    client = sockjs_client("v7", transport)
    client.expect("connected", timeout=15)
    # Acks: one unacknowledged message at a time.
    client.command(
        "subscribe",
        destination=f"/topic/{topic}",
        id="a",
        receipt="s",
        headers={"ack": "client-individual", "prefetch-count": "1"},
    )
    client.expect("receipt", lambda r: r["id"] == "s")
    ids = [publish(server.url, topic, n)["id"] for n in range(3)]
    for expected in ids:
        message = client.expect("message", lambda r: r["headers"]["subscription"] == "a")
        assert message["headers"]["event-id"] == expected
        client.command("ack", message=message["headers"]["ack"], subscription="a")
    # Transactions: nothing is published before COMMIT, nothing after ABORT.
    client.command("begin", id="tx1")
    client.command(
        "send",
        destination=f"/topic/{topic}",
        body="in tx1",
        headers={"content-type": "text/plain", "transaction": "tx1"},
    )
    client.command("begin", id="tx2")
    client.command(
        "send",
        destination=f"/topic/{topic}",
        body="in tx2",
        headers={"content-type": "text/plain", "transaction": "tx2"},
    )
    client.command(
        "send", destination=f"/topic/{topic}", body="outside", receipt="out", headers={"content-type": "text/plain"}
    )
    client.expect("receipt", lambda r: r["id"] == "out")
    assert [e["data"] for e in history(server.url, topic)][-1] == "outside"
    client.command("abort", id="tx2")
    client.command("commit", id="tx1")
    bodies = []
    while "in tx1" not in bodies:
        message = client.expect("message", lambda r: r["headers"]["subscription"] == "a")
        bodies.append(message["body"])
        client.command("ack", message=message["headers"]["ack"], subscription="a")
    assert "in tx2" not in [e["data"] for e in history(server.url, topic)]
    client.command("unsubscribe", id="a")
    # Resume: a SUBSCRIBE with last-event-id replays what came after it.
    first = publish(server.url, f"{topic}-r", "one")
    publish(server.url, f"{topic}-r", "two")
    client.command("subscribe", destination=f"/topic/{topic}-r", id="r", headers={"last-event-id": first["id"]})
    assert client.expect("message", lambda r: r["headers"]["subscription"] == "r")["body"] == "two"
    # A megabyte of text, both ways (SockJS carries text only).
    client.command("subscribe", destination=f"/topic/{topic}-big", id="b", receipt="sb")
    client.expect("receipt", lambda r: r["id"] == "sb")
    big = "x" * 1_000_000
    client.command(
        "send", destination=f"/topic/{topic}-big", body=big, receipt="big", headers={"content-type": "text/plain"}
    )
    client.expect("receipt", lambda r: r["id"] == "big", timeout=30)
    message = client.expect("message", lambda r: r["headers"]["subscription"] == "b", timeout=30)
    assert message["body"] == big


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_seeds_client_on_the_seeds_endpoint(server, sockjs_client, http, transport):
    # stompjs 2.3.3 over SockJS on /websocket/stomp: SUBSCRIBE /sub/chat, SEND /pub/chat with
    # plain text, the body {"sender", "message"}: the seed's page, as it is written.
    client = sockjs_client("v2", transport, path="/websocket/stomp")
    client.expect("connected", timeout=15)
    client.command("subscribe", destination="/sub/chat", id="sub-0", receipt="r")
    client.expect("receipt", lambda r: r["id"] == "r")
    # A chat message from another page (HTTP here; the browser test uses the pages).
    event = publish(server.url, "chat", {"text": f"from the HTTP page ({transport})"})
    # The first MESSAGE is that chat line: the seed's server has no presence, so its own join
    # (an event of topic chat) is withheld on this mount.
    message = client.expect("message", what="the HTTP chat message")
    assert json.loads(message["body"]) == {"sender": event["sender"], "message": f"from the HTTP page ({transport})"}
    assert message["headers"]["destination"] == "/sub/chat"
    # The seed's send: no headers, the text as the body.
    client.command("send", destination="/pub/chat", body=f"hello from the seed ({transport})")
    mine = client.expect("message", lambda r: "hello from the seed" in r["body"])
    body = json.loads(mine["body"])
    assert body["message"] == f"hello from the seed ({transport})" and body["sender"].startswith("guest-")
    # ... though the other pages still see the seed's subscriber in the room.
    members = http.get(f"{server.url}/api/topics/chat/presence", timeout=scaled(10)).json()["members"]
    assert body["sender"] in [member["sender"] for member in members]
    stored = history(server.url, "chat")[-1]
    assert stored["data"] == {"text": f"hello from the seed ({transport})"} and stored["sender"] == body["sender"]
    # An empty input (the seed's page sends whatever it holds) is dropped, not an ERROR.
    client.command("send", destination="/pub/chat", body="")
    client.command("send", destination="/pub/chat", body="after the empty one")
    assert (
        json.loads(client.expect("message", lambda r: "after the empty" in r["body"])["body"])["message"]
        == "after the empty one"
    )
    # Other events on /sub/<topic> keep the broker's usual body.
    client.command("subscribe", destination="/sub/seed-other", id="sub-1", receipt="r2")
    client.expect("receipt", lambda r: r["id"] == "r2")
    publish(server.url, "seed-other", {"n": 1})
    assert json.loads(client.expect("message", lambda r: r["headers"]["subscription"] == "sub-1")["body"]) == {"n": 1}
    # /topic and /app belong to /stomp and /stomp-sockjs, not to the seed's endpoint.
    client.command("subscribe", destination="/topic/chat", id="sub-2")
    error = client.expect("error", allow_error=True)
    assert "destination" in error["headers"]["message"]
