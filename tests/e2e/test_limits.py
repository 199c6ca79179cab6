"""Overload limits (app/limits.py): each one hit, answered with its documented status or
message, counted in switchboard_limit_rejections_total{limit=...}, while other clients
keep working.

One gunicorn per group of tests, with small limits. It trusts X-Forwarded-For
(SWITCHBOARD_BEHIND_PROXY, as behind nginx), so each test plays its own client
addresses and per-address limits never leak from one test to the next.
"""

from __future__ import annotations

import itertools
import json
import socket
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.timing import scaled, wait_until
from tests.support.wsclients import (
    ConnectionEnded,
    JsonClient,
    RawWebSocket,
    parse_stomp,
    stomp_frame,
    ws_url,
)

JSON = {"Content-Type": "application/json"}
PER_CLIENT = 3
MAX_SUBSCRIPTIONS = 3
RATE, BURST = 2, 3
MAX_BYTES = 1024
_addresses = (f"10.1.{i // 250}.{i % 250 + 1}" for i in itertools.count())


def address() -> str:
    """A client address no other test uses."""
    return next(_addresses)


def xff(addr: str) -> dict:
    return {"X-Forwarded-For": addr}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support.servers import Gunicorn

    env = {
        "SWITCHBOARD_BEHIND_PROXY": "1",
        "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "SWITCHBOARD_MAX_SUBSCRIPTIONS": str(MAX_SUBSCRIPTIONS),
        "SWITCHBOARD_PUBLISH_RATE": str(RATE),
        "SWITCHBOARD_PUBLISH_BURST": str(BURST),
        "SWITCHBOARD_MAX_MESSAGE_BYTES": str(MAX_BYTES),
        "SWITCHBOARD_STOMP_HEARTBEAT_MS": "500,2000",
        "SWITCHBOARD_TICKS": "0",
    }
    with Gunicorn(tmp_path_factory.mktemp("limits"), env=env) as running:
        yield running


def rejections(base: str) -> dict[str, float]:
    res = requests.get(base + "/metrics", headers={"Connection": "close"}, timeout=scaled(5))
    found = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            if sample.name == "switchboard_limit_rejections_total":
                found[sample.labels["limit"]] = sample.value
    return found


def topic_count(base: str) -> float:
    res = requests.get(base + "/metrics", headers={"Connection": "close"}, timeout=scaled(5))
    return sum(
        sample.value
        for family in text_string_to_metric_families(res.text)
        for sample in family.samples
        if sample.name == "switchboard_topics"
    )


def publish(base: str, topic: str, data, addr: str | None = None) -> requests.Response:
    return requests.post(
        f"{base}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers={**JSON, "Connection": "close", **xff(addr or address())},
        timeout=scaled(5),
    )


class Stream:
    """An SSE stream on a raw socket; ``read_event`` returns the next event's data."""

    def __init__(self, server, topic: str, addr: str):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(5))
        self.sock.sendall(
            f"GET /api/topics/{topic}/stream HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {addr}\r\n\r\n".encode()
        )
        self.buf = b""
        self.head = self._until(b"\r\n\r\n")

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before {marker!r}: {self.buf[:300]!r}"
            self.buf += chunk
        part, _, self.buf = self.buf.partition(marker)
        return part

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def body(self) -> dict:
        """The JSON body of a refusal."""
        length = int(
            next(
                line.split(b":")[1] for line in self.head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
        )
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        return json.loads(self.buf[:length])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.decode().partition(":")
            if key.lower() == name.lower():
                return value.strip()
        return None

    def read_event(self) -> dict:
        while True:
            block = self._until(b"\n\n")
            data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
            if data:
                return json.loads(data[0])

    def close(self) -> None:
        self.sock.close()


def upgrade(server, path: str, headers: dict, protocols: tuple[str, ...] = ()) -> tuple[int, dict, dict]:
    """A WebSocket handshake expected to be refused before 101: status, headers, JSON body."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=scaled(5)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):  # a refusal closes the connection
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    assert status != 101, "the upgrade was accepted"
    return status, {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}, json.loads(body)


def stomp(server, addr: str, heart_beat: str = "0,0") -> tuple[RawWebSocket, object]:
    ws = RawWebSocket.connect(
        ws_url(server.url, "/stomp"), headers=xff(addr), protocols=("v12.stomp",), timeout=scaled(5)
    )
    ws.sock.settimeout(scaled(10))
    ws.send_text(
        stomp_frame(
            "CONNECT", [("accept-version", "1.2"), ("host", "x"), ("heart-beat", heart_beat)], escape=False
        ).decode()
    )
    return ws, stomp_frame_of(ws, "CONNECTED")


def stomp_frame_of(ws: RawWebSocket, command: str, pending: list | None = None):
    """The next frame (heart-beats skipped); it must be ``command``."""
    pending = pending if pending is not None else getattr(ws, "pending", None)
    if pending is None:
        pending = ws.pending = []
    while not pending:
        messages = ws.read_messages()
        assert messages is not None, f"closed ({ws.close_code}) while waiting for {command}"
        pending += [f for f in (parse_stomp(payload) for _op, payload in messages) if f is not None]
    frame = pending.pop(0)
    assert frame.command == command, (frame.command, frame.headers, frame.body[:300])
    return frame


def stomp_closed(ws: RawWebSocket) -> int:
    while ws.read_messages() is not None:
        pass
    return ws.close_code


# --------------------------------------------------------------------------- streams


def test_connections_per_client_address_are_429_and_other_addresses_carry_on(server):
    before = rejections(server.url).get("client_connections", 0)
    greedy, other = address(), address()
    held = [Stream(server, "lim-client", greedy) for _ in range(PER_CLIENT)]
    bystander = Stream(server, "lim-client", other)
    refused_sse = Stream(server, "lim-client", greedy)
    # A forged first hop changes nothing: the last one is what our proxy saw.
    forged = Stream(server, "lim-client", f"192.0.2.7, {greedy}")
    try:
        assert [s.status for s in held] == [200] * PER_CLIENT and bystander.status == 200
        for refused in (refused_sse, forged):
            assert refused.status == 429, refused.head
            assert refused.body()["error"] == "too_many_client_connections"
            assert int(refused.header("Retry-After")) >= 1
        res = requests.get(
            f"{server.url}/api/topics/lim-client/long-poll?timeout=5", headers=xff(greedy), timeout=scaled(10)
        )
        assert res.status_code == 429 and res.json()["error"] == "too_many_client_connections"
        status, headers, body = upgrade(server, "/ws", xff(greedy))
        assert status == 429 and body["error"] == "too_many_client_connections" and "retry-after" in headers
        # The others keep working: a publish reaches the greedy client's streams and the bystander.
        assert publish(server.url, "lim-client", "still here").status_code == 201
        for stream in (*held, bystander):
            assert stream.read_event()["data"] == "still here"
        assert rejections(server.url)["client_connections"] == before + 4
    finally:
        for stream in (*held, bystander, refused_sse, forged):
            stream.close()


def test_connections_per_worker_are_503_with_retry_after(start_server):
    server = start_server({"SWITCHBOARD_MAX_CONNECTIONS": "3", "SWITCHBOARD_TICKS": "0"})
    streams = [Stream(server, "lim-worker", "unused") for _ in range(2)]
    poll = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(10))
    poll.sendall(b"GET /api/topics/lim-worker/long-poll?timeout=20 HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        wait_until(
            lambda: requests.get(f"{server.url}/healthz", timeout=5).json()["subscribers"] == 3,
            timeout=10,
            message="three streams held",
        )
        refused = Stream(server, "lim-worker", "unused")
        assert refused.status == 503 and refused.body()["error"] == "too_many_connections"
        assert 1 <= int(refused.header("Retry-After")) <= 5
        refused.close()
        res = requests.get(f"{server.url}/api/topics/lim-worker/long-poll?timeout=5", timeout=scaled(10))
        assert res.status_code == 503 and res.json()["error"] == "too_many_connections"
        status, headers, body = upgrade(server, "/ws", {})
        assert status == 503 and body["error"] == "too_many_connections" and "retry-after" in headers
        status, _, body = upgrade(server, "/stomp", {}, ("v12.stomp",))
        assert status == 503 and body["error"] == "too_many_connections"
        # Plain requests are not streams: publishing and polling still work, and the
        # held streams get the event (the long poll is answered with it).
        assert publish(server.url, "lim-worker", "through").status_code == 201
        for stream in streams:
            assert stream.read_event()["data"] == "through"
        answer = b""
        while b"through" not in answer:
            answer += poll.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert requests.get(f"{server.url}/api/topics/lim-worker/events", timeout=5).status_code == 200
        metrics = rejections(server.url)
        assert metrics["connections"] == 4
        # The long poll was answered: its place is free again.
        again = Stream(server, "lim-worker", "unused")
        assert again.status == 200
        again.close()
    finally:
        for stream in streams:
            stream.close()
        poll.close()


# ---------------------------------------------------------------------- subscriptions


def test_ws_subscriptions_per_connection_get_an_error_op_and_the_connection_stays(server):
    before = rejections(server.url).get("subscriptions", 0)
    with JsonClient(ws_url(server.url), header=[f"X-Forwarded-For: {address()}"]) as client:
        for n in range(MAX_SUBSCRIPTIONS):
            assert client.request("subscribe", topic=f"lim-subs-{n}")["op"] == "ok"
        refused = client.request("subscribe", topic="lim-subs-extra")
        assert refused["op"] == "error" and refused["error"] == "too_many_subscriptions", refused
        assert str(MAX_SUBSCRIPTIONS) in refused["message"]
        assert publish(server.url, "lim-subs-0", "still subscribed").status_code == 201
        assert client.next_event()["data"] == "still subscribed"
        assert client.request("unsubscribe", topic="lim-subs-1")["op"] == "ok"
        assert client.request("subscribe", topic="lim-subs-extra")["op"] == "ok"
    assert rejections(server.url)["subscriptions"] == before + 1


def test_stomp_subscriptions_per_session_end_it_with_an_error(server):
    before = rejections(server.url).get("subscriptions", 0)
    ws, _ = stomp(server, address())
    other, _ = stomp(server, address())
    try:
        other.send_text(
            stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", "/topic/lim-stomp-subs"), ("receipt", "r")]).decode()
        )
        stomp_frame_of(other, "RECEIPT")
        for n in range(MAX_SUBSCRIPTIONS + 1):
            ws.send_text(
                stomp_frame(
                    "SUBSCRIBE", [("id", str(n)), ("destination", f"/topic/lim-stomp-{n}"), ("receipt", f"r{n}")]
                ).decode()
            )
        for _n in range(MAX_SUBSCRIPTIONS):
            stomp_frame_of(ws, "RECEIPT")
        error = stomp_frame_of(ws, "ERROR")
        assert error.get("message") == "too many subscriptions"
        assert stomp_closed(ws) == 1008
        assert publish(server.url, "lim-stomp-subs", {"k": 1}).status_code == 201
        assert json.loads(stomp_frame_of(other, "MESSAGE").body) == {"k": 1}
        wait_until(
            lambda: rejections(server.url).get("subscriptions", 0) == before + 1,
            timeout=5,
            message="the refusal counted",
        )
    finally:
        ws.close()
        other.close()


# ------------------------------------------------------------------------ publish rate


def test_http_publish_rate_per_address_is_429_with_retry_after(server):
    before = rejections(server.url).get("publish_rate", 0)
    flooder, other = address(), address()
    answers = [publish(server.url, "lim-rate", n, flooder) for n in range(BURST + 1)]
    assert [a.status_code for a in answers] == [201] * BURST + [429]
    assert answers[-1].json()["error"] == "rate_limited"
    wait = int(answers[-1].headers["Retry-After"])
    assert 1 <= wait <= 1 + 1 / RATE
    assert publish(server.url, "lim-rate", "other address", other).status_code == 201
    time.sleep(wait)  # the wait the server asked for is the behaviour under test
    assert publish(server.url, "lim-rate", "after the wait", flooder).status_code == 201
    assert rejections(server.url)["publish_rate"] == before + 1


def test_ws_publish_rate_per_connection_is_an_error_op(server):
    with (
        JsonClient(ws_url(server.url), header=[f"X-Forwarded-For: {address()}"]) as fast,
        JsonClient(ws_url(server.url), header=[f"X-Forwarded-For: {address()}"]) as calm,
    ):
        replies = [fast.request("publish", topic="lim-ws-rate", data=n) for n in range(BURST + 1)]
        assert [r["op"] for r in replies] == ["ok"] * BURST + ["error"]
        assert replies[-1]["error"] == "rate_limited" and 0 < replies[-1]["retry_after"] <= 1 / RATE
        assert calm.request("publish", topic="lim-ws-rate", data="calm")["op"] == "ok"
        assert fast.request("ping")["op"] == "ok"  # the connection stays open
        time.sleep(replies[-1]["retry_after"] + 0.05)  # the wait the server named is what is tested
        assert fast.request("publish", topic="lim-ws-rate", data="later")["op"] == "ok"


def test_stomp_send_rate_per_connection_ends_the_session(server):
    ws, _ = stomp(server, address())
    try:
        for n in range(BURST):
            ws.send_text(
                stomp_frame("SEND", [("destination", "/topic/lim-stomp-rate"), ("receipt", f"s{n}")], str(n)).decode()
            )
            assert stomp_frame_of(ws, "RECEIPT").get("receipt-id") == f"s{n}"
        ws.send_text(
            stomp_frame("SEND", [("destination", "/topic/lim-stomp-rate"), ("receipt", "over")], "over").decode()
        )
        error = stomp_frame_of(ws, "ERROR")
        assert error.get("message") == "publish rate exceeded" and error.get("receipt-id") == "over"
        assert stomp_closed(ws) == 1008
        history = requests.get(f"{server.url}/api/topics/lim-stomp-rate/events", timeout=5).json()["events"]
        assert [e["data"] for e in history] == [str(n) for n in range(BURST)], "the refused SEND was not published"
    finally:
        ws.close()


# --------------------------------------------------------------------------- topics


def test_a_new_topic_beyond_max_topics_is_refused_on_every_way_in(start_server):
    """Counted per worker (the in-memory hub); topics it holds still take events, and a
    topic forgotten after the TTL makes room again."""
    ttl = scaled(2)
    own = start_server({"SWITCHBOARD_MAX_TOPICS": "3", "SWITCHBOARD_HISTORY_TTL": str(ttl), "SWITCHBOARD_TICKS": "0"})
    for topic in ("mt-a", "mt-b", "mt-c"):
        assert publish(own.url, topic, topic).status_code == 201

    refused = publish(own.url, "mt-http", "over")
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_topics", refused.text
    assert "3 topics" in refused.json()["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= ttl * 1.25 + 1
    assert publish(own.url, "mt-a", "again").status_code == 201

    with JsonClient(ws_url(own.url)) as client:
        reply = client.request("publish", topic="mt-ws", data="over")
        assert reply["op"] == "error" and reply["error"] == "too_many_topics" and reply["retry_after"] >= 1, reply
        assert client.request("publish", topic="mt-b", data="again")["op"] == "ok", "the connection stays"

    ws, _ = stomp(own, address())
    try:
        ws.send_text(stomp_frame("SEND", [("destination", "/topic/mt-stomp"), ("receipt", "over")], "over").decode())
        error = stomp_frame_of(ws, "ERROR")
        assert error.get("message") == "too many topics" and error.get("receipt-id") == "over"
        assert stomp_closed(ws) == 1008
    finally:
        ws.close()

    assert rejections(own.url)["topics"] == 3
    for topic in ("mt-http", "mt-ws", "mt-stomp"):
        events = requests.get(f"{own.url}/api/topics/{topic}/events", timeout=scaled(5)).json()["events"]
        assert events == [], f"{topic}: nothing refused was published"
    wait_until(
        lambda: topic_count(own.url) == 0, timeout=ttl * 1.25 + 5, interval=0.1, message="the idle topics forgotten"
    )
    assert publish(own.url, "mt-http", "later").status_code == 201


# --------------------------------------------------------------------------- sizes


def test_message_size_limit_on_every_way_in(server):
    before = rejections(server.url).get("message_size", 0)
    big = "x" * (MAX_BYTES + 1)
    res = requests.post(
        f"{server.url}/api/topics/lim-size/events",
        data=json.dumps({"data": big}),
        headers={**JSON, **xff(address())},
        timeout=scaled(5),
    )
    assert res.status_code == 413 and res.json()["error"] == "too_large"
    with JsonClient(ws_url(server.url), header=[f"X-Forwarded-For: {address()}"]) as client:
        client.send(op="publish", topic="lim-size", data=big)
        with pytest.raises(ConnectionEnded) as ended:
            client.recv()
        assert ended.value.code == 1009
        client.drop()  # the server, which failed the connection, waits for our FIN (RFC 6455 7.1.1)
    ws, _ = stomp(server, address())
    try:
        ws.send_text(stomp_frame("SEND", [("destination", "/topic/lim-size")], big).decode())
        assert stomp_closed(ws) == 1009
    finally:
        ws.close()
    assert publish(server.url, "lim-size", "small").status_code == 201
    wait_until(
        lambda: rejections(server.url).get("message_size", 0) == before + 3, timeout=5, message="three refusals counted"
    )


def test_stomp_heart_beat_comes_from_the_setting(server):
    ws, connected = stomp(server, address(), heart_beat="100,100")
    try:
        assert connected.get("heart-beat") == "500,2000"
    finally:
        ws.close()
