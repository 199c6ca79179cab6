"""STOMP clients written by others against the broker on real gunicorn.

* @stomp/stompjs 7 under Node with the ``ws`` package (``tests/js/stomp_client_v7.js``):
  what the STOMP demo page runs in the browser; STOMP 1.2, sub-protocols offered.
* stompjs 2.3.3 under Node (``tests/js/stomp_client_v2.js``): the seed's client style,
  ``Stomp.over(socket)``; STOMP 1.1 only, frames over 16 KiB split across messages.
* stomp.py 9 over WebSocket (``stomp.WSStompConnection``, on websocket-client): STOMP
  1.2 from Python, no sub-protocol offered.

Each client reports what happens as records with the same shapes (``connected``,
``message``, ``receipt``, ``error``, ``heartbeat-in``, ``heartbeat-out``, ``close``), so
one scenario runs against all three: connect, subscribe, receive an HTTP publish, send
with a receipt, the /app/chat handler, and heart-beats both ways.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import stomp

from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
NODE = shutil.which("node")
JSON = {"Content-Type": "application/json"}
CLIENTS = ("stompjs7", "stompjs2", "stomp.py")
HEART_BEAT = (200, 200)  # asked by every client; the server's 1000,1000 floor decides


def publish(base, topic, data, **extra):
    res = requests.post(
        f"{base}/api/topics/{topic}/events", data=json.dumps({"data": data, **extra}), headers=JSON, timeout=scaled(10)
    )
    assert res.status_code == 201, res.text
    return res.json()


def history(base, topic):
    res = requests.get(f"{base}/api/topics/{topic}/events", timeout=scaled(10))
    assert res.status_code == 200
    return res.json()["events"]


class Records:
    """What a client reported, in order. ``expect`` takes the first not yet taken record
    that matches, waiting for it if need be; records it passes over stay available."""

    def __init__(self) -> None:
        self.records: list[dict] = []  # everything received so far
        self._untaken: list[dict] = []
        self._queue: queue.Queue = queue.Queue()

    def put(self, record: dict | None) -> None:
        self._queue.put(record)

    def expect(self, kind: str, predicate=lambda record: True, timeout: float = 10, what: str = "") -> dict:
        for record in self._untaken:
            if record["kind"] == kind and predicate(record):
                self._untaken.remove(record)
                return record
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                record = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {what or kind}; got {self.records!r}"[:4000]) from None
            if record is None:
                raise AssertionError(f"client ended: {self.stderr()}; got {self.records!r}"[:4000])
            self.records.append(record)
            assert record["kind"] not in ("exception", "unhandled"), record
            if record["kind"] == "error" and kind != "error":
                raise AssertionError(f"ERROR frame while waiting for {what or kind}: {record}")
            if record["kind"] == kind and predicate(record):
                return record
            self._untaken.append(record)

    def count(self, kind: str) -> int:
        return sum(1 for record in self.records if record["kind"] == kind)

    def stderr(self) -> str:
        return ""


class NodeStomp(Records):
    """A Node STOMP client script, commanded with JSON lines on stdin."""

    def __init__(self, script: str, url: str, *args: str) -> None:
        super().__init__()
        self.proc = subprocess.Popen(
            [NODE, script, url, *args],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.put(json.loads(line))
        self.put(None)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()[:2000]

    def command(self, op: str, **fields) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the script exits when stdin ends
                self.proc.wait(scaled(5))
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class PyStomp(Records, stomp.ConnectionListener):
    """stomp.py's WebSocket connection, reporting through the same records."""

    def __init__(self, url: str, heartbeats=HEART_BEAT, **connect_headers) -> None:
        Records.__init__(self)
        parts = urlsplit(url)
        self.conn = stomp.WSStompConnection(
            [(parts.hostname, parts.port)],
            ws_path=parts.path,
            heartbeats=heartbeats,
            reconnect_attempts_max=1,
            timeout=scaled(5),
        )
        self.conn.set_listener("records", self)
        self.conn.connect(wait=True, headers=connect_headers)

    # stomp.ConnectionListener callbacks (called on stomp.py's receiver thread)
    def on_connected(self, frame):
        self.put({"kind": "connected", "headers": dict(frame.headers)})

    def on_message(self, frame):
        self.put({"kind": "message", "headers": dict(frame.headers), "body": frame.body, "binary": False})

    def on_receipt(self, frame):
        self.put({"kind": "receipt", "id": frame.headers.get("receipt-id")})

    def on_error(self, frame):
        self.put({"kind": "error", "headers": dict(frame.headers), "body": frame.body})

    def on_heartbeat(self):
        self.put({"kind": "heartbeat-in"})

    def on_send(self, frame):
        if frame.cmd is None:  # stomp.py sends a heart-beat as a frame without a command
            self.put({"kind": "heartbeat-out"})

    def on_disconnected(self):
        self.put({"kind": "close", "code": None})

    def command(self, op: str, **fields) -> None:
        headers = dict(fields.get("headers") or {})
        if fields.get("receipt"):
            headers["receipt"] = fields["receipt"]
        if op == "subscribe":
            ack = headers.pop("ack", "auto")
            self.conn.subscribe(fields["destination"], fields["id"], ack=ack, headers=headers)
        elif op == "send":
            self.conn.send(fields["destination"], fields["body"], headers=headers)
        elif op == "ack":
            self.conn.ack(fields["message"], **(fields.get("headers") or {}))  # STOMP 1.2: the ack header
        elif op == "nack":
            self.conn.nack(fields["message"], **(fields.get("headers") or {}))
        elif op == "begin":
            self.conn.begin(fields["transaction"])
        elif op in ("commit", "abort"):
            getattr(self.conn, op)(
                fields["transaction"], **({"receipt": fields["receipt"]} if fields.get("receipt") else {})
            )
        elif op == "disconnect":
            self.conn.disconnect()
        else:
            raise ValueError(op)

    def close(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()


@pytest.fixture
def stomp_client(server):
    """Factory: ``stomp_client(kind, **options)`` starts one of CLIENTS on the module server."""
    started: list = []
    url = server.url.replace("http://", "ws://") + "/stomp"

    def start(kind: str, heart_beat=HEART_BEAT, target_url: str | None = None):
        target = target_url or url
        if kind == "stomp.py":
            client = PyStomp(target, heartbeats=heart_beat)
        else:
            if NODE is None or not (JS_DIR / "node_modules" / "@stomp" / "stompjs").is_dir():
                pytest.fail("Node and tests/js/node_modules are required: run `make node-deps`")
            script = "stomp_client_v7.js" if kind == "stompjs7" else "stomp_client_v2.js"
            client = NodeStomp(script, target, "--heartbeat", ",".join(map(str, heart_beat)))
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


EXPECTED = {  # kind -> (sub-protocol negotiated, STOMP version)
    "stompjs7": ("v12.stomp", "1.2"),
    "stompjs2": ("v11.stomp", "1.1"),
    "stomp.py": (None, "1.2"),
}


@pytest.mark.parametrize("kind", CLIENTS)
def test_connect_subscribe_send_receipt_and_heart_beats(server, stomp_client, kind):
    topic = f"interop-{kind.replace('.', '')}"
    started = time.monotonic()
    client = stomp_client(kind)
    protocol, version = EXPECTED[kind]
    if kind != "stomp.py":
        assert client.expect("open")["protocol"] == protocol
    connected = client.expect("connected")
    assert connected["headers"]["version"] == version
    assert connected["headers"]["heart-beat"] == "1000,1000"

    client.command("subscribe", destination=f"/topic/{topic}", id="s1", receipt="sub-1")
    client.expect("receipt", lambda r: r["id"] == "sub-1")
    client.command("subscribe", destination="/topic/chat", id="s2", receipt="sub-2")
    client.expect("receipt", lambda r: r["id"] == "sub-2")

    # An HTTP publish reaches the STOMP client with the event's headers.
    event = publish(server.url, topic, {"text": "from HTTP"})
    message = client.expect("message", lambda r: r["headers"]["subscription"] == "s1", what="the HTTP publish")
    assert json.loads(message["body"]) == {"text": "from HTTP"}
    headers = message["headers"]
    assert headers["event-id"] == event["id"] and headers["sender"] == event["sender"]
    assert headers["destination"] == f"/topic/{topic}" and headers["subscription"] == "s1"
    assert headers["content-type"] == "application/json"

    # The client's SEND is published (its RECEIPT after that) and comes back to it.
    client.command(
        "send",
        destination=f"/topic/{topic}",
        body="from " + kind,
        receipt="send-1",
        headers={"content-type": "text/plain"},
    )
    client.expect("receipt", lambda r: r["id"] == "send-1")
    echo = client.expect("message", lambda r: r["headers"]["subscription"] == "s1")
    assert echo["body"] == "from " + kind and echo["headers"]["content-type"] == "text/plain"
    stored = history(server.url, topic)[-1]
    assert stored["data"] == "from " + kind and stored["id"] == echo["headers"]["event-id"]
    assert stored["sender"] == echo["headers"]["sender"] and stored["sender"].startswith("guest-")

    # The chat handler, as the demo page uses it.
    client.command(
        "send",
        destination="/app/chat",
        body=json.dumps({"text": f"hi from {kind}"}),
        headers={"content-type": "application/json"},
    )
    # (Topic chat has presence: the client's own join comes on s2 too.)
    chat = client.expect(
        "message", lambda r: r["headers"]["subscription"] == "s2" and r["headers"].get("event-type") != "presence"
    )
    assert json.loads(chat["body"]) == {"text": f"hi from {kind}"}
    assert chat["headers"]["sender"] == stored["sender"]

    # Heart-beats both ways at the negotiated 1000 ms; the client's keep the session alive
    # past the server's 2 s silence limit.
    for _ in range(2):
        client.expect("heartbeat-in", timeout=5)
    while client.count("heartbeat-out") < 2:
        client.expect("heartbeat-out", timeout=5)
    while time.monotonic() - started < 3.0:
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
    client.expect("close")


@pytest.mark.parametrize("kind", CLIENTS)
def test_client_acknowledgement(server, stomp_client, kind):
    topic = f"interop-ack-{kind.replace('.', '')}"
    client = stomp_client(kind, heart_beat=(0, 0))
    client.expect("connected")
    client.command(
        "subscribe",
        destination=f"/topic/{topic}",
        id="a",
        receipt="s",
        headers={"ack": "client-individual" if kind != "stompjs2" else "client", "prefetch-count": "1"},
    )
    client.expect("receipt", lambda r: r["id"] == "s")
    ids = [publish(server.url, topic, n)["id"] for n in range(3)]
    for expected in ids:
        message = client.expect("message")
        assert message["headers"]["event-id"] == expected
        ack_id = message["headers"].get("ack", message["headers"]["message-id"])
        client.command("ack", message=ack_id, subscription="a")


def test_stompjs7_binary_and_a_megabyte(server, stomp_client):
    client = stomp_client("stompjs7", heart_beat=(0, 0))
    client.expect("connected")
    client.command("subscribe", destination="/topic/interop-bin", id="b", receipt="s")
    client.expect("receipt", lambda r: r["id"] == "s")
    octets = bytes([0xFF, 0x00, 0xC3, 0x28, 0x0A])
    client.command(
        "send",
        destination="/topic/interop-bin",
        base64=base64.b64encode(octets).decode(),
        headers={"content-type": "application/octet-stream"},
        receipt="bin",
    )
    client.expect("receipt", lambda r: r["id"] == "bin")
    message = client.expect("message")
    assert message["binary"] is True and base64.b64decode(message["base64"]) == octets
    big = "x" * 1_000_000
    client.command("send", destination="/topic/interop-bin", body=big, headers={"content-type": "text/plain"})
    message = client.expect("message", timeout=20)
    assert message["binary"] is False and message["body"] == big


def test_three_clients_on_one_topic(server, stomp_client):
    clients = {kind: stomp_client(kind, heart_beat=(0, 0)) for kind in CLIENTS}
    for _kind, client in clients.items():
        client.expect("connected")
        client.command("subscribe", destination="/topic/interop-all", id="all", receipt="s")
        client.expect("receipt", lambda r: r["id"] == "s")
    for kind, client in clients.items():
        client.command(
            "send",
            destination="/topic/interop-all",
            body=f"hello from {kind}",
            receipt="r",
            headers={"content-type": "text/plain"},
        )
        client.expect("receipt", lambda r: r["id"] == "r")
    expected = [f"hello from {kind}" for kind in CLIENTS]
    ids = [event["id"] for event in history(server.url, "interop-all")]
    for kind, client in clients.items():
        got = [client.expect("message", what=f"message {n} at {kind}") for n in range(3)]
        assert [m["body"] for m in got] == expected, kind
        assert [m["headers"]["event-id"] for m in got] == ids, kind


def test_stompjs2_splits_a_large_frame_across_websocket_messages(server, stomp_client):
    # stompjs 2.3.3 cuts any frame over 16 KiB into 16 KiB WebSocket messages; the
    # broker's parser joins them into one frame again.
    client = stomp_client("stompjs2", heart_beat=(0, 0))
    client.expect("connected")
    client.command("subscribe", destination="/topic/interop-split", id="p", receipt="s")
    client.expect("receipt", lambda r: r["id"] == "s")
    body = "".join(f"{n:07d}," for n in range(12_500))  # 100,000 characters
    client.command(
        "send", destination="/topic/interop-split", body=body, headers={"content-type": "text/plain"}, receipt="big"
    )
    client.expect("receipt", lambda r: r["id"] == "big")
    assert client.expect("message")["body"] == body
    assert history(server.url, "interop-split")[-1]["data"] == body
