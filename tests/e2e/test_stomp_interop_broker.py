"""Third-party STOMP clients against the broker side of Switchboard (issue #16), on real gunicorn.

@stomp/stompjs 7 under Node and stomp.py over WebSocket (the drivers of
test_stomp_interop.py): work queues with client and client-individual acks, NACK and
redelivery, transactions with receipts, /user destinations, user headers and bodies passed
through; and two programs written for RabbitMQ's Web-STOMP plugin (tests/js/rabbitmq_program.js,
tests/support/rabbitmq_program.py), run unchanged: /topic with a wildcard, /queue with
prefetch-count 1 and client acks, a transaction.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.test_stomp_interop import JS_DIR, NODE, history, publish, stomp_client  # noqa: F401 (fixture)
from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("stompjs7", "stomp.py")


def ack_id(message: dict) -> str:
    return message["headers"].get("ack", message["headers"]["message-id"])


def started(stomp_client, kind):
    client = stomp_client(kind, heart_beat=(0, 0))
    client.expect("connected")
    return client


@pytest.mark.parametrize("kind", KINDS)
def test_queue_with_client_individual_acks_and_nack(server, stomp_client, kind):
    queue = f"iq-{kind.replace('.', '')}"
    a, b = started(stomp_client, kind), started(stomp_client, kind)
    for name, client in (("a", a), ("b", b)):
        client.command(
            "subscribe",
            destination=f"/queue/{queue}",
            id=name,
            receipt=f"s-{name}",
            headers={"ack": "client-individual", "prefetch-count": "1"},
        )
        client.expect("receipt", lambda r, name=name: r["id"] == f"s-{name}")
    first = requests.post(f"{server.url}/api/queues/{queue}/messages", json={"data": "one"}, timeout=scaled(5))
    got_a = a.expect("message")
    assert got_a["headers"]["event-id"] == first.json()["id"] and got_a["headers"]["delivery-count"] == "1"
    a.command("nack", message=ack_id(got_a), subscription="a")
    again = b.expect("message")
    assert again["headers"]["redelivered"] == "true" and again["headers"]["event-id"] == first.json()["id"]
    assert again["headers"]["delivery-count"] == "2"
    b.command("ack", message=ack_id(again), subscription="b")
    requests.post(f"{server.url}/api/queues/{queue}/messages", json={"data": "two"}, timeout=scaled(5))
    second = a.expect("message")  # round robin: a's turn, and a has room again
    assert second["body"] == "two"
    a.command("ack", message=ack_id(second), subscription="a")


@pytest.mark.parametrize("kind", KINDS)
def test_queue_with_client_mode_cumulative_ack(server, stomp_client, kind):
    queue = f"iqc-{kind.replace('.', '')}"
    client = started(stomp_client, kind)
    client.command(
        "subscribe",
        destination=f"/queue/{queue}",
        id="c",
        receipt="s",
        headers={"ack": "client", "prefetch-count": "3"},
    )
    client.expect("receipt", lambda r: r["id"] == "s")
    for n in range(4):
        requests.post(f"{server.url}/api/queues/{queue}/messages", json={"data": n}, timeout=scaled(5))
    got = [client.expect("message") for _ in range(3)]
    client.command("ack", message=ack_id(got[-1]), subscription="c")  # all three
    fourth = client.expect("message")
    assert json.loads(fourth["body"]) == 3 and "redelivered" not in fourth["headers"]


@pytest.mark.parametrize("kind", KINDS)
def test_transactions_with_receipts(server, stomp_client, kind):
    topic = f"itx-{kind.replace('.', '')}"
    client = started(stomp_client, kind)
    client.command("begin", transaction="t1")
    for n in range(2):
        client.command(
            "send",
            destination=f"/topic/{topic}",
            body=f"m{n}",
            headers={"transaction": "t1", "content-type": "text/plain"},
        )
    assert history(server.url, topic) == []
    client.command("commit", transaction="t1", receipt="c1")
    client.expect("receipt", lambda r: r["id"] == "c1")
    assert [e["data"] for e in history(server.url, topic)] == ["m0", "m1"]
    client.command("begin", transaction="t2")
    client.command("send", destination=f"/topic/{topic}", body="dropped", headers={"transaction": "t2"})
    client.command("abort", transaction="t2", receipt="a2")
    client.expect("receipt", lambda r: r["id"] == "a2")
    assert [e["data"] for e in history(server.url, topic)] == ["m0", "m1"]


@pytest.mark.parametrize("kind", KINDS)
def test_user_destination_and_headers_and_bodies(server, stomp_client, kind):
    client = started(stomp_client, kind)
    client.command("subscribe", destination="/user/queue/inbox", id="inbox", receipt="s")
    client.expect("receipt", lambda r: r["id"] == "s")
    topic = f"iwho-{kind.replace('.', '')}"
    client.command("subscribe", destination=f"/topic/{topic}", id="who", receipt="w")
    client.expect("receipt", lambda r: r["id"] == "w")
    body = '{ "spaced" :  [1, 2] }'
    client.command(
        "send",
        destination=f"/topic/{topic}",
        body=body,
        headers={
            "content-type": "application/json",
            "x-custom-header-1": "value1",
            "special-1": "test with colon : test",
        },
    )
    echo = client.expect("message", lambda r: r["headers"]["subscription"] == "who")
    assert echo["body"] == body and echo["headers"]["content-type"] == "application/json"
    assert echo["headers"]["x-custom-header-1"] == "value1"
    assert echo["headers"]["special-1"] == "test with colon : test"
    me = echo["headers"]["sender"]  # without access control, this connection's guest name
    res = requests.post(
        f"{server.url}/api/users/{me}/queue/inbox/events", json={"data": "just for you"}, timeout=scaled(5)
    )
    assert res.status_code == 201, res.text
    mail = client.expect("message", lambda r: r["headers"]["subscription"] == "inbox")
    assert mail["body"] == "just for you" and mail["headers"]["destination"] == "/user/queue/inbox"


def _check_program_output(result: dict, count: int) -> None:
    assert "error" not in result, result
    done = result["done"]
    assert sorted(done["w1"] + done["w2"]) == list(range(count))  # every task once
    assert done["w1"] and done["w2"]  # both workers had their share
    assert result["redelivered"] == [0]  # the NACKed task came back once
    assert len(result["logs"]) == count and all(" did " in line for line in result["logs"])


def test_a_stompjs_program_written_for_rabbitmq_runs_unchanged(server):
    if NODE is None or not (JS_DIR / "node_modules" / "@stomp" / "stompjs").is_dir():
        pytest.fail("Node and tests/js/node_modules are required: run `make node-deps`")
    url = server.url.replace("http://", "ws://") + "/stomp"
    out = subprocess.run(
        [NODE, "rabbitmq_program.js", url, "12"], cwd=JS_DIR, capture_output=True, text=True, timeout=scaled(60)
    )
    assert out.returncode == 0, out.stdout + out.stderr
    _check_program_output(json.loads(out.stdout.splitlines()[-1]), 12)


def test_a_stomp_py_program_written_for_rabbitmq_runs_unchanged(server):
    host, port = server.url.removeprefix("http://").split(":")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "rabbitmq_program.py"), host, port, "/stomp", "12"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    _check_program_output(json.loads(out.stdout.splitlines()[-1]), 12)
