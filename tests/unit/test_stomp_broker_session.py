"""The session's side of the broker contract (issue #16), sans-I/O.

A frame that makes requests waits for the broker: its RECEIPT and every later frame wait
for ``confirm()``; a refusal (``send_error``) is the last thing the client gets. A COMMIT
is one request; its acknowledgments take effect here only once it is confirmed. NACK
redelivers a topic message at most ``max_deliveries`` times; a shared queue's NACKed
message goes back to the broker.
"""

from __future__ import annotations

from app.stomp import Ack, Closed, Commit, Nack, Send, StompConfig, Subscribe
from tests.unit.test_stomp_session import Client, connected


def held_client(version: str = "1.2", config: StompConfig | None = None) -> Client:
    client = Client(config, auto_confirm=False)
    client.send("CONNECT", {"accept-version": version, "host": "h"})
    client.session.requests()
    client.session.confirm(0.0)
    (connected,) = client.frames()
    client.version = connected.get("version")
    return client


def test_a_frame_with_requests_waits_for_confirm():
    client = held_client()
    client.raw(
        b"SEND\ndestination:/topic/a\nreceipt:r1\n\nx\x00SUBSCRIBE\nid:0\ndestination:/topic/a\nreceipt:r2\n\n\x00"
    )
    (send,) = client.requests()
    assert isinstance(send, Send) and client.session.waiting
    assert client.frames() == []  # no RECEIPT before the broker has published
    client.session.confirm(0.0)
    assert [f.get("receipt-id") for f in client.frames()] == ["r1"]
    (subscribe,) = client.requests()
    assert isinstance(subscribe, Subscribe)
    client.session.confirm(0.0)
    assert [f.get("receipt-id") for f in client.frames()] == ["r2"]


def test_a_refusal_is_the_last_thing_that_happens():
    client = held_client()
    client.raw(b"SEND\ndestination:/topic/a\nreceipt:r1\n\nx\x00SEND\ndestination:/topic/a\nreceipt:r2\n\ny\x00")
    assert len(client.requests()) == 1
    client.session.send_error("invalid JSON body", "no", receipt_id="r1")
    client.session.confirm(0.0)  # too late: nothing to confirm
    (error,) = client.frames()
    assert error.command == "ERROR" and error.get("receipt-id") == "r1"
    assert client.requests() == [Closed("invalid JSON body", "broker")]


def test_frames_without_requests_answer_at_once():
    client = held_client()
    client.send("BEGIN", {"transaction": "t", "receipt": "b"})
    client.send("SEND", {"destination": "/topic/a", "transaction": "t", "receipt": "s"}, b"1")
    assert [f.get("receipt-id") for f in client.frames()] == ["b", "s"]
    assert client.requests() == [] and not client.session.waiting


def test_commit_is_one_request_and_its_receipt_waits():
    client = held_client()
    client.send("SUBSCRIBE", {"id": "0", "destination": "/topic/q", "ack": "client-individual"})
    client.requests()
    client.session.confirm(0.0)
    m0 = client.session.deliver("0", b"x")
    client.frames()
    client.send("BEGIN", {"transaction": "t"})
    client.send("SEND", {"destination": "/topic/a", "transaction": "t"}, b"1")
    client.send("ACK", {"id": m0, "transaction": "t"})
    client.send("COMMIT", {"transaction": "t", "receipt": "c"})
    (commit,) = client.requests()
    assert isinstance(commit, Commit) and commit.receipt == "c"
    assert [type(item) for item in commit.items] == [Send, Ack] and commit.items[1] == Ack("0", (m0,))
    assert client.frames() == []
    client.session.confirm(0.0)
    assert [f.get("receipt-id") for f in client.frames()] == ["c"]


def test_a_nack_in_a_refused_commit_is_never_redelivered():
    client = held_client()
    client.send("SUBSCRIBE", {"id": "0", "destination": "/topic/q", "ack": "client-individual"})
    client.requests()
    client.session.confirm(0.0)
    m0 = client.session.deliver("0", b"x")
    client.frames()
    client.send("BEGIN", {"transaction": "t"})
    client.send("NACK", {"id": m0, "transaction": "t"})
    client.send("COMMIT", {"transaction": "t"})
    client.requests()
    client.session.send_error("refused", "no")
    assert [f.command for f in client.frames()] == ["ERROR"]  # no redelivered MESSAGE


def test_topic_nack_redelivers_until_max_deliveries_then_drops():
    client = connected(config=StompConfig(max_deliveries=3))
    client.subscribe("0", ack="client-individual")
    m0 = client.session.deliver("0", b"x")
    client.frames()
    for _delivery in (2, 3):
        client.send("NACK", {"id": m0})
        (again,) = client.frames()
        assert again.get("redelivered") == "true" and again.get("message-id") == m0
        assert client.requests() == [Nack("0", (m0,))]
    client.send("NACK", {"id": m0})
    assert client.frames() == []
    assert client.requests() == [Nack("0", (m0,), dropped=(m0,))]
    assert client.session.can_deliver("0")
    client.send("ACK", {"id": m0})
    assert client.error() == ("bad ack id", "protocol-violation")


def test_a_shared_queue_nack_goes_back_to_the_broker():
    client = connected(config=StompConfig(shared_queue=lambda destination: destination.startswith("/queue/")))
    client.subscribe("0", destination="/queue/jobs", ack="client")
    m0 = client.session.deliver("0", b"x", redelivered=True)
    (message,) = client.frames()
    assert message.get("redelivered") == "true"
    client.send("NACK", {"id": m0})
    assert client.frames() == []  # not sent back to the same subscription
    assert client.requests() == [Nack("0", (m0,))]


def test_no_default_content_type_when_asked():
    client = connected()
    client.subscribe("0")
    client.session.deliver("0", b"blob", default_type=None)
    (message,) = client.frames()
    assert "content-type" not in message and message.body == b"blob"
