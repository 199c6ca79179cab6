"""A flood of publishes from one connection must not starve delivery (issue 15).

One ``/ws`` or STOMP publisher sends a burst of 10,000 events as fast as its socket
takes them; one subscriber on another connection reads as fast as it can. With the
default settings (queue 256, history 1,000, a publish bucket of 2,000 then 200/s) the
subscriber must receive every event that was published, once and in order, and must not
be dropped as a slow consumer: the server reads a bounded batch from the publisher, then
lets delivery run, so the publisher is slowed down instead of the reader being dropped.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support.servers import Gunicorn
from tests.support.timing import scaled
from tests.support.wsclients import RawWebSocket, parse_stomp, stomp_frame, ws_url

BURST = 10_000
STOMP_PROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("flood")) as running:
        yield running


class Reader(threading.Thread):
    """Reads every message of one connection as fast as it can, classifying each."""

    def __init__(self, ws: RawWebSocket, classify):
        super().__init__(daemon=True)
        self.ws, self.classify = ws, classify
        self.events: list[int] = []
        self.replies = 0
        self.refused = 0
        self.trouble: list[str] = []
        self.changed = threading.Condition()

    def run(self) -> None:
        while True:
            messages = self.ws.read_messages()
            if messages is None:
                with self.changed:
                    self.trouble.append(f"closed {self.ws.close_code}")
                    self.changed.notify_all()
                return
            with self.changed:
                for _, payload in messages:
                    kind, value = self.classify(payload)
                    if kind == "event":
                        self.events.append(value)
                    elif kind == "reply":
                        self.replies += 1
                    elif kind == "refused":
                        self.refused += 1
                    elif kind == "trouble":
                        self.trouble.append(value)
                self.changed.notify_all()

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + scaled(timeout)
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}: {len(self.events)} events, "
                        f"{self.replies} replies, trouble {self.trouble[:3]}"
                    )
                self.changed.wait(left)


def classify_ws(payload: bytes):
    message = json.loads(payload)
    op = message.get("op")
    if op == "event":
        return "event", message["data"]["n"]
    if op == "ok" and str(message.get("ref", "")).startswith("p"):
        return "reply", None
    if op == "error" and message.get("error") == "rate_limited":
        return "refused", None
    if op in ("gap", "error"):
        return "trouble", payload.decode()[:200]
    return "other", None


def classify_stomp(payload: bytes):
    frame = parse_stomp(payload)
    if frame is None:
        return "other", None
    if frame.command == "MESSAGE":
        if frame.get("gap") == "true":
            return "trouble", "gap"
        return "event", json.loads(frame.body)["n"]
    if frame.command == "RECEIPT" and (frame.get("receipt-id") or "").startswith("p"):
        return "reply", None
    if frame.command == "ERROR":
        return "trouble", f"ERROR {frame.get('message')}"
    return "other", None


def test_ws_publisher_burst_does_not_drop_a_reader_that_keeps_up(server):
    topic = "flood-ws"
    sub = RawWebSocket.connect(ws_url(server.url))
    sub.send_text(json.dumps({"op": "subscribe", "topic": topic, "ref": "s"}))
    reader = Reader(sub, classify_ws)
    reader.start()
    pub = RawWebSocket.connect(ws_url(server.url))
    acks = Reader(pub, classify_ws)
    acks.start()
    try:
        frames = [json.dumps({"op": "publish", "topic": topic, "data": {"n": n}, "ref": f"p{n}"}) for n in range(BURST)]
        for start in range(0, BURST, 500):  # as fast as the socket takes them
            for text in frames[start : start + 500]:
                pub.send_text(text)
        # Every publish op is answered: ok, or rate_limited once the bucket is empty.
        acks.wait(lambda: acks.replies + acks.refused >= BURST, 60, "an answer to every publish")
        published = acks.replies
        assert published >= 2000, "the bucket lets the first 2,000 through"
        reader.wait(lambda: len(reader.events) >= published or reader.trouble, 60, "every published event")
        assert reader.trouble == [], reader.trouble
        # Refused publishes leave holes in the numbers; what was published comes once, in order.
        assert all(a < b for a, b in zip(reader.events, reader.events[1:], strict=False)), "once and in order"
        assert len(reader.events) == published
    finally:
        pub.close()
        sub.close()


def test_stomp_publisher_burst_does_not_drop_a_reader_that_keeps_up(server):
    topic = "flood-stomp"
    connect = stomp_frame("CONNECT", [("accept-version", "1.2"), ("host", "localhost"), ("heart-beat", "0,0")])
    sub = RawWebSocket.connect(ws_url(server.url, "/stomp"), protocols=STOMP_PROTOCOLS)
    sub.send_text(connect.decode())
    sub.send_text(stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", f"/topic/{topic}")]).decode())
    reader = Reader(sub, classify_stomp)
    reader.start()
    pub = RawWebSocket.connect(ws_url(server.url, "/stomp"), protocols=STOMP_PROTOCOLS)
    pub.send_text(connect.decode())
    acks = Reader(pub, classify_stomp)
    acks.start()
    try:
        for n in range(BURST):
            frame = stomp_frame(
                "SEND",
                [("destination", f"/topic/{topic}"), ("content-type", "application/json"), ("receipt", f"p{n}")],
                json.dumps({"n": n}),
            )
            try:
                pub.send_text(frame.decode())
            except OSError:
                break  # beyond the publish bucket the server ends the publisher's session
        # Each SEND that was published has its RECEIPT; then the bucket runs dry: ERROR.
        acks.wait(lambda: acks.trouble or acks.replies >= BURST, 60, "the publisher's receipts or its ERROR")
        published = acks.replies
        assert published >= 2000, "the bucket lets the first 2,000 through"
        reader.wait(lambda: len(reader.events) >= published or reader.trouble, 60, "every published event")
        assert reader.trouble == [], reader.trouble
        assert reader.events == list(range(len(reader.events))), "once and in order"
        assert len(reader.events) == published
    finally:
        pub.close()
        sub.close()
