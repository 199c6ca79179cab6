"""The STOMP broker (``/stomp``) against a real gunicorn with the real worker class.

Clients here are raw: websocket-client carrying STOMP frames written out by hand,
and a small parser that is independent of ``app.stomp``, so what is checked is the
bytes on the wire. Every wait is bounded and scaled; the few "nothing more arrives"
checks wait a short fixed window because absence has no event to wait for.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests
import websocket

from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

STOMP_PROTOCOLS = ("v10.stomp", "v11.stomp", "v12.stomp")
JSON = {"Content-Type": "application/json"}
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
QUIET = 0.5  # seconds to wait when checking that nothing (more) arrives


# ------------------------------------------------------------------ a raw client


@dataclass
class Frame:
    command: str
    headers: list = field(default_factory=list)
    body: bytes = b""
    raw: bytes = b""
    opcode: int = OP_TEXT

    def get(self, name, default=None):
        for key, value in self.headers:  # STOMP 1.2: the first entry wins
            if key == name:
                return value
        return default

    def __contains__(self, name):
        return any(key == name for key, _ in self.headers)

    def json(self):
        return json.loads(self.body)


_UNESCAPE = re.compile(r"\\(.)")


def parse(raw: bytes, escaped: bool = True) -> Frame:
    """Exactly one frame per WebSocket message, as the broker promises."""
    head, sep, rest = raw.partition(b"\n\n")
    assert sep, f"no blank line after the headers: {raw[:200]!r}"
    command, *lines = head.decode("utf-8").split("\n")
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon, f"header line without ':' {line!r}"
        if escaped:
            unescape = {"c": ":", "n": "\n", "r": "\r", "\\": "\\"}
            name = _UNESCAPE.sub(lambda m: unescape[m.group(1)], name)
            value = _UNESCAPE.sub(lambda m: unescape[m.group(1)], value)
        headers.append((name, value))
    frame = Frame(command, headers, raw=raw)
    length = frame.get("content-length")
    if length is not None:
        body, terminator = rest[: int(length)], rest[int(length) :]
        assert terminator == b"\x00", f"content-length {length} does not end at the NUL"
    else:
        body, nul, trailing = rest.partition(b"\x00")
        assert nul and trailing == b"", "one frame per message, ended by NUL"
    frame.body = body
    return frame


def build(command: str, headers=(), body: bytes | str = b"") -> bytes:
    if isinstance(body, str):
        body = body.encode("utf-8")
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [command] + [f"{name}:{value}" for name, value in items]
    return "\n".join(lines).encode("utf-8") + b"\n\n" + body + b"\x00"


class Closed(Exception):
    def __init__(self, code, reason):
        super().__init__(f"closed {code} {reason!r}")
        self.code, self.reason = code, reason


class Wire:
    """A STOMP client that writes and reads raw frames over websocket-client."""

    def __init__(self, server, protocols=STOMP_PROTOCOLS, cookie: str | None = None, path="/stomp"):
        url = server.url.replace("http://", "ws://") + path
        header = [f"Cookie: {cookie}"] if cookie else None
        self.ws = websocket.create_connection(
            url, subprotocols=list(protocols) or None, header=header, timeout=scaled(5)
        )
        self.version = "1.2"

    def send(self, data: bytes | str, binary: bool = False) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.ws.send(data, opcode=OP_BINARY if binary else OP_TEXT)

    def send_frame(self, command, headers=(), body=b"", binary=False) -> None:
        self.send(build(command, headers, body), binary=binary)

    def recv(self, timeout: float = 5) -> tuple[int, bytes]:
        """The next data message as ``(opcode, payload)``; raises Closed at the Close frame."""
        return self._recv(scaled(timeout))

    def _recv(self, seconds: float) -> tuple[int, bytes]:
        self.ws.settimeout(max(0.01, seconds))
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == OP_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                raise Closed(code, data[2:].decode("utf-8", "replace"))
            if opcode in (OP_TEXT, OP_BINARY):
                return opcode, data

    def frame(self, timeout: float = 5) -> Frame:
        """The next frame, skipping heart-beats."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            opcode, data = self._recv(deadline - time.monotonic())
            if data in (b"\n", b"\r\n"):
                continue
            frame = parse(data, escaped=self.version != "1.0")
            frame.opcode = opcode
            return frame

    def nothing_for(self, seconds: float = QUIET) -> None:
        """Assert no frame arrives within ``seconds`` (heart-beats aside)."""
        deadline = time.monotonic() + seconds
        self.ws.settimeout(seconds)
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                return
            assert data in (b"\n", b"\r\n"), f"unexpected message {data[:300]!r}"

    def connect(self, version="1.2", **headers) -> Frame:
        headers = {
            "accept-version": version,
            "host": "localhost",
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        self.send_frame("CONNECT", headers)
        connected = self.frame()
        assert connected.command == "CONNECTED", connected
        self.version = connected.get("version")
        return connected

    def subscribe(self, destination, sub_id="0", **headers) -> None:
        receipt = f"sub-{sub_id}"
        self.send_frame(
            "SUBSCRIBE",
            {
                "id": sub_id,
                "destination": destination,
                "receipt": receipt,
                **{k.replace("_", "-"): v for k, v in headers.items()},
            },
        )
        self.expect_receipt(receipt)

    def expect_receipt(self, receipt_id) -> Frame:
        frame = self.frame()
        assert frame.command == "RECEIPT" and frame.get("receipt-id") == receipt_id, frame
        return frame

    def messages(self, count: int, timeout: float = 5) -> list[Frame]:
        """The next ``count`` MESSAGE frames; presence events (topic ``chat`` has presence:
        a subscriber hears itself join) are skipped."""
        frames = []
        while len(frames) < count:
            frame = self.frame(timeout)
            assert frame.command == "MESSAGE", frame
            if frame.get("event-type") != "presence":
                frames.append(frame)
        return frames

    def expect_error(self, message: str | None = None) -> Frame:
        frame = self.frame()
        assert frame.command == "ERROR", frame
        if message is not None:
            assert frame.get("message") == message, frame
        return frame

    def expect_close(self, timeout: float = 5) -> int:
        """The close code of the server's Close frame (heart-beats before it are fine)."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                opcode, data = self._recv(deadline - time.monotonic())
            except Closed as closed:
                return closed.code
            assert data in (b"\n", b"\r\n"), f"data before the Close frame: {data[:300]!r}"

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass
        self.ws.shutdown()  # after a Close frame from the server, close() leaves the TCP socket open


@pytest.fixture
def clients(server):
    """Factory for Wire clients on the module server; all are closed after the test."""
    made: list[Wire] = []

    def make(target=None, **kwargs) -> Wire:
        client = Wire(target or server, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def publish(base, topic, data, session=None, **extra):
    http = session or requests
    res = http.post(
        f"{base}/api/topics/{topic}/events", data=json.dumps({"data": data, **extra}), headers=JSON, timeout=scaled(10)
    )
    assert res.status_code == 201, res.text
    return res.json()


def history(base, topic, since=None):
    params = {"since": since} if since else {}
    res = requests.get(f"{base}/api/topics/{topic}/events", params=params, timeout=scaled(10))
    assert res.status_code == 200, res.text
    return res.json()


def browser_identity(base) -> tuple[str, str]:
    """A cookie a browser would carry, and the sender name it stands for."""
    with requests.Session() as http:
        sender = http.get(f"{base}/api/whoami", timeout=scaled(5)).json()["sender"]
        cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies)
    return cookie, sender


def subscribers(base) -> int:
    return requests.get(f"{base}/healthz", timeout=scaled(5)).json()["subscribers"]


# --------------------------------------------------------------------------- tests


class TestHandshake:
    def test_v12_negotiated_and_connected_bytes(self, clients):
        client = clients()
        assert client.ws.getsubprotocol() == "v12.stomp"
        client.send(b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:stomp.example\nheart-beat:0,0\n\n\x00")
        opcode, raw = client.recv()
        assert opcode == OP_TEXT
        assert re.fullmatch(
            rb"CONNECTED\nversion:1\.2\nheart-beat:1000,1000\nsession:[0-9a-f]+\n"
            rb"server:Switchboard\n\n\x00",
            raw,
        ), raw

    def test_no_subprotocol_is_accepted_and_connect_decides(self, clients):
        client = clients(protocols=())
        assert client.ws.getsubprotocol() is None
        assert client.connect("1.1").get("version") == "1.1"

    def test_v11_only_client(self, clients):
        client = clients(protocols=("v11.stomp",))
        assert client.ws.getsubprotocol() == "v11.stomp"
        assert client.connect("1.0,1.1").get("version") == "1.1"

    def test_stomp_command_and_any_host(self, clients):
        client = clients()
        client.send(b"STOMP\naccept-version:1.2\nhost:anything.invalid\n\n\x00")
        assert client.frame().command == "CONNECTED"

    def test_stomp_1_0_client(self, server, clients):
        client = clients(protocols=("v10.stomp",))
        client.send(b"CONNECT\n\n\x00")  # no accept-version: STOMP 1.0
        connected = client.frame()
        assert connected.get("version") == "1.0" and "heart-beat" not in connected
        client.version = "1.0"
        client.send(b"SUBSCRIBE\ndestination:/topic/v10\nreceipt:r\n\n\x00")  # 1.0: id optional
        client.expect_receipt("r")
        event = publish(server.url, "v10", "old school")
        (message,) = client.messages(1)
        assert message.get("subscription") == "/topic/v10" and message.get("event-id") == event["id"]
        assert message.body == b"old school"

    def test_plain_get_still_serves_the_page(self, server):
        res = requests.get(server.url + "/stomp", timeout=scaled(5))
        assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/html")


class TestMessaging:
    def test_send_to_topic_reaches_subscribers_with_the_event_headers(self, server, clients):
        cookie, sender = browser_identity(server.url)
        listener, talker = clients(), clients(cookie=cookie)
        listener.connect()
        talker.connect()
        listener.subscribe("/topic/msg-a")
        talker.send_frame(
            "SEND",
            {"destination": "/topic/msg-a", "content-type": "application/json", "receipt": "s1"},
            '{"n": 1, "t": "é"}',
        )
        talker.expect_receipt("s1")
        (message,) = listener.messages(1)
        body = '{"n": 1, "t": "é"}'.encode()  # the octets as sent, not re-serialized (issue #16)
        assert (
            message.raw
            == (
                "MESSAGE\nsubscription:0\nmessage-id:{mid}\ndestination:/topic/msg-a\n"
                "event-id:{eid}\nevent-type:message\nsender:{sender}\ntime:{time}\n"
                "content-type:application/json\ncontent-length:{n}\n\n"
            )
            .format(
                mid=message.get("message-id"),
                eid=message.get("event-id"),
                sender=sender,
                time=message.get("time"),
                n=len(body),
            )
            .encode()
            + body
            + b"\x00"
        )
        (stored,) = history(server.url, "msg-a")["events"]
        assert stored["id"] == message.get("event-id") and stored["data"] == {"n": 1, "t": "é"}
        assert stored["sender"] == sender and float(message.get("time")) == stored["time"]

    def test_receipt_comes_after_the_publish(self, server, clients):
        client = clients()
        client.connect()
        for n in range(5):
            client.send_frame("SEND", {"destination": "/topic/msg-order", "receipt": f"r{n}"}, f"m{n}")
            client.expect_receipt(f"r{n}")
            assert [e["data"] for e in history(server.url, "msg-order")["events"]][-1] == f"m{n}"

    @pytest.mark.parametrize(
        ("data", "content_type", "body"),
        [
            ("plain text", "text/plain", b"plain text"),
            ({"text": "hi"}, "application/json", b'{"text":"hi"}'),
            (42, "application/json", b"42"),
            ("", "text/plain", b""),
            (None, "application/json", b"null"),
        ],
    )
    def test_http_publish_maps_to_message_body(self, server, clients, data, content_type, body):
        client = clients()
        client.connect()
        topic = f"map-{abs(hash(repr(data)))}"
        client.subscribe(f"/topic/{topic}")
        event = publish(server.url, topic, data, type="score")
        (message,) = client.messages(1)
        assert message.body == body and message.get("content-type") == content_type
        assert message.get("event-type") == "score" and message.get("event-id") == event["id"]

    @pytest.mark.parametrize(
        ("headers", "body", "data"),
        [
            ({}, "no content-type", "no content-type"),
            ({"content-type": "text/plain"}, "ünïcode", "ünïcode"),
            ({"content-type": "text/plain;charset=iso-8859-1"}, "caf\xe9".encode("latin-1"), "café"),
            ({"content-type": "application/json"}, '{"a": [1, 2]}', {"a": [1, 2]}),
            ({"content-type": "application/vnd.x+json"}, "true", True),
        ],
    )
    def test_send_body_becomes_event_data(self, server, clients, headers, body, data):
        client = clients()
        client.connect()
        topic = f"body-{abs(hash(repr(data)))}"
        client.send_frame(
            "SEND", {"destination": f"/topic/{topic}", "receipt": "r", **headers}, body, binary=isinstance(body, bytes)
        )  # latin-1 is not UTF-8: a binary message
        client.expect_receipt("r")
        (event,) = history(server.url, topic)["events"]
        assert event["data"] == data and event["type"] == "message"

    def test_event_type_header(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/typed")
        client.send_frame("SEND", {"destination": "/topic/typed", "event-type": "score", "receipt": "r"}, "1")
        client.expect_receipt("r")
        assert client.messages(1)[0].get("event-type") == "score"
        client.send_frame("SEND", {"destination": "/topic/typed", "event-type": "gap"}, "x")
        assert client.expect_error("invalid event-type")
        assert client.expect_close() == 1008

    def test_app_chat_stamps_the_sender_and_publishes_to_topic_chat(self, server, clients):
        cookie, sender = browser_identity(server.url)
        listener, talker = clients(), clients(cookie=cookie)
        listener.connect()
        talker.connect()
        listener.subscribe("/topic/chat")
        talker.send_frame(
            "SEND",
            {"destination": "/app/chat", "content-type": "application/json", "receipt": "c"},
            json.dumps({"text": "hello over STOMP", "sender": "admin", "extra": 1}),
        )
        talker.expect_receipt("c")
        (message,) = listener.messages(1)
        assert message.json() == {"text": "hello over STOMP"} and message.get("sender") == sender
        assert message.get("destination") == "/topic/chat"
        (stored,) = [event for event in history(server.url, "chat")["events"] if event["id"] == message.get("event-id")]
        assert stored["data"] == {"text": "hello over STOMP"} and stored["sender"] == sender
        # The same message as an HTTP publish of {"data": {"text": ...}} looks the same.
        with requests.Session() as http:
            http.headers["Cookie"] = cookie
            publish(server.url, "chat", {"text": "hello over HTTP"}, session=http)
        (same,) = listener.messages(1)
        assert same.json() == {"text": "hello over HTTP"} and same.get("sender") == sender
        assert same.get("content-type") == message.get("content-type") == "application/json"

    def test_app_chat_takes_plain_text(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/chat")
        client.send_frame("SEND", {"destination": "/app/chat", "content-type": "text/plain"}, "just text")
        assert client.messages(1)[0].json() == {"text": "just text"}

    @pytest.mark.parametrize("body", ['{"text": ""}', '{"words": "x"}', "[1]", ""])
    def test_app_chat_refuses_a_message_without_text(self, clients, body):
        client = clients()
        client.connect()
        client.send_frame(
            "SEND", {"destination": "/app/chat", "content-type": "application/json", "receipt": "bad"}, body
        )
        if body == "":  # not JSON at all
            error = client.expect_error("invalid JSON body")
        else:
            error = client.expect_error("a chat message needs text")
        assert error.get("receipt-id") == "bad"
        assert client.expect_close() == 1008

    def test_invalid_json_body(self, clients):
        client = clients()
        client.connect()
        client.send_frame("SEND", {"destination": "/topic/json-bad", "content-type": "application/json"}, "{nope")
        assert b"not JSON" in client.expect_error("invalid JSON body").body
        assert client.expect_close() == 1008

    def test_several_frames_in_one_message_and_one_frame_in_several(self, server, clients):
        client = clients()
        client.connect()
        client.send(
            build("SUBSCRIBE", {"id": "a", "destination": "/topic/split"})
            + build("SEND", {"destination": "/topic/split"}, "one")
            + b"\n"
            + build("SEND", {"destination": "/topic/split", "receipt": "two"}, "two")
        )
        frames = [client.frame() for _ in range(3)]
        assert sorted(f.command for f in frames) == ["MESSAGE", "MESSAGE", "RECEIPT"]
        assert [f.body for f in frames if f.command == "MESSAGE"] == [b"one", b"two"]
        whole = build("SEND", {"destination": "/topic/split", "receipt": "three"}, "three")
        for i in range(0, len(whole), 7):
            client.send(whole[i : i + 7])
        frames = [client.frame() for _ in range(2)]
        assert sorted(f.command for f in frames) == ["MESSAGE", "RECEIPT"]

    def test_disconnect_with_receipt(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/bye")
        client.send_frame("DISCONNECT", {"receipt": "bye"})
        client.expect_receipt("bye")
        assert client.expect_close() == 1000


class TestDestinations:
    @pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE"])
    @pytest.mark.parametrize(
        "destination",
        ["/queue/", "/topic/a/b", "/topic/", "/app/nothing", "chat", "/user/x", "/queue/a/b", "/topic/a.#.b"],
    )
    def test_unknown_destination_gets_an_error_naming_it(self, clients, command, destination):
        client = clients()
        client.connect()
        client.send_frame(command, {"destination": destination, "id": "0", "receipt": "r"}, "x")
        error = client.expect_error("invalid destination")
        assert repr(destination).encode() in error.body and error.get("receipt-id") == "r"
        assert client.expect_close() == 1008

    def test_no_subscribing_to_an_application_destination(self, clients):
        client = clients()
        client.connect()
        client.send_frame("SUBSCRIBE", {"destination": "/app/chat", "id": "0"})
        assert b"/app/chat" in client.expect_error("cannot subscribe to an application destination").body
        assert client.expect_close() == 1008

    def test_seed_prefixes_from_settings(self, start_server):
        seed = start_server({"SWITCHBOARD_STOMP_APP_PREFIX": "/pub", "SWITCHBOARD_STOMP_TOPIC_PREFIX": "/sub"})
        client, other = Wire(seed), Wire(seed)
        try:
            client.connect()
            client.subscribe("/sub/chat")
            client.send_frame(
                "SEND", {"destination": "/pub/chat", "content-type": "application/json"}, '{"text": "seed style"}'
            )
            (message,) = client.messages(1)
            assert message.get("destination") == "/sub/chat" and message.json() == {"text": "seed style"}
            other.connect()
            other.send_frame("SUBSCRIBE", {"destination": "/topic/chat", "id": "0"})
            assert b"/sub/<topic>" in other.expect_error("invalid destination").body
        finally:
            client.close()
            other.close()


class TestHeartBeats:
    def test_server_eols_then_a_silent_client_is_dropped(self, server, clients):
        client = clients()
        connected = client.connect(heart_beat="200,200")
        assert connected.get("heart-beat") == "1000,1000"  # so 1000 ms each way
        eols, sent_at = [], time.monotonic()
        deadline = time.monotonic() + scaled(5)
        client.ws.settimeout(0.3)
        while len(eols) < 2:
            assert time.monotonic() < deadline, "no server heart-beats"
            try:
                opcode, data = client.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                client.send(b"\n")  # our heart-beat
                sent_at = time.monotonic()
                continue
            assert (opcode, data) == (OP_TEXT, b"\n")
            eols.append(time.monotonic())
        assert eols[1] - eols[0] > 0.5, "heart-beats every ~1000 ms, not faster"
        # Now go silent: after 2 x 1000 ms the server gives up.
        error = client.expect_error("heart-beat timeout")
        assert time.monotonic() - sent_at >= 1.5
        assert b"1000 ms" in error.body
        assert client.expect_close() == 1011

    def test_no_heart_beats_unless_asked(self, clients):
        client = clients()
        assert client.connect(heart_beat="0,0").get("heart-beat") == "1000,1000"
        client.nothing_for(1.2)  # neither EOLs nor a timeout


class TestAcks:
    def test_client_individual_with_prefetch(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/ack-ind", ack="client-individual", prefetch_count="2")
        events = [publish(server.url, "ack-ind", n)["id"] for n in range(5)]
        first = client.messages(2)
        assert [m.get("event-id") for m in first] == events[:2]
        assert all(m.get("ack") == m.get("message-id") for m in first)
        client.nothing_for()
        client.send_frame("ACK", {"id": first[1].get("ack")})  # not cumulative: one slot opens
        (third,) = client.messages(1)
        assert third.get("event-id") == events[2]
        client.nothing_for()
        client.send_frame("ACK", {"id": first[0].get("ack")})
        client.send_frame("ACK", {"id": third.get("ack")})
        assert [m.get("event-id") for m in client.messages(2)] == events[3:]

    def test_client_mode_ack_is_cumulative(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/ack-cum", ack="client", prefetch_count="3")
        events = [publish(server.url, "ack-cum", n)["id"] for n in range(6)]
        first = client.messages(3)
        client.nothing_for()
        client.send_frame("ACK", {"id": first[2].get("ack"), "receipt": "a"})
        frames = [client.frame() for _ in range(4)]
        assert [f.get("event-id") for f in frames if f.command == "MESSAGE"] == events[3:]

    def test_nack_redelivers(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/nack", ack="client-individual")
        event = publish(server.url, "nack", "again")
        (message,) = client.messages(1)
        client.send_frame("NACK", {"id": message.get("ack")})
        (again,) = client.messages(1)
        assert again.get("redelivered") == "true" and again.get("event-id") == event["id"]
        assert again.get("message-id") == message.get("message-id")

    def test_auto_mode_has_no_window(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/auto", prefetch_count="1")
        for n in range(5):
            publish(server.url, "auto", n)
        messages = client.messages(5)
        assert [m.body for m in messages] == [b"0", b"1", b"2", b"3", b"4"] and "ack" not in messages[0]

    def test_1_1_ack_by_message_id_and_subscription(self, server, clients):
        client = clients(protocols=("v11.stomp",))
        client.connect("1.1")
        client.subscribe("/topic/ack-11", sub_id="s", ack="client", prefetch_count="1")
        publish(server.url, "ack-11", 1)
        publish(server.url, "ack-11", 2)
        (one,) = client.messages(1)
        assert "ack" not in one
        client.send_frame("ACK", {"message-id": one.get("message-id"), "subscription": "s"})
        assert client.messages(1)[0].body == b"2"


@pytest.fixture(scope="class")
def tight(tmp_path_factory):
    """A server with tiny subscriber queues and history, for the backlog rules."""
    with Gunicorn(
        tmp_path_factory.mktemp("tight"), env={"SWITCHBOARD_QUEUE_SIZE": "2", "SWITCHBOARD_HISTORY_SIZE": "10"}
    ) as running:
        yield running


class TestBacklog:
    def test_closed_window_is_caught_up_from_history(self, tight):
        client = Wire(tight)
        try:
            client.connect()
            client.subscribe("/topic/backlog", ack="client-individual", prefetch_count="1")
            ids = [publish(tight.url, "backlog", n)["id"] for n in range(8)]  # queue 2, history 10
            received = []
            for _ in ids:
                (message,) = client.messages(1)
                assert "gap" not in message
                received.append(message.get("event-id"))
                client.send_frame("ACK", {"id": message.get("ack")})
            assert received == ids
            client.nothing_for()
        finally:
            client.close()

    def test_slow_consumer_gets_a_gap_then_an_error(self, tight):
        client = Wire(tight)
        try:
            client.connect()
            client.subscribe("/topic/slow", ack="client-individual", prefetch_count="1")
            for n in range(30):  # far past queue (2) and history (10)
                publish(tight.url, "slow", n)
            for _ in range(10):
                message = client.frame()
                if message.command != "MESSAGE" or message.get("gap") == "true":
                    break
                client.send_frame("ACK", {"id": message.get("ack")})
            assert message.get("gap") == "true" and message.body == b"", message
            assert b"fell too far behind" in client.expect_error("slow consumer").body
            assert client.expect_close() == 1008
        finally:
            client.close()
        wait_until(lambda: subscribers(tight.url) == 0, timeout=5, message="subscriptions released")


class TestTransactions:
    def test_sends_wait_for_commit_and_abort_drops_them(self, server, clients):
        listener, client = clients(), clients()
        listener.connect()
        listener.subscribe("/topic/tx")
        client.connect()
        client.send_frame("BEGIN", {"transaction": "t1"})
        client.send_frame("SEND", {"destination": "/topic/tx", "transaction": "t1"}, "a")
        client.send_frame("SEND", {"destination": "/topic/tx", "transaction": "t1", "receipt": "held"}, "b")
        client.expect_receipt("held")
        assert history(server.url, "tx")["events"] == []
        client.send_frame("BEGIN", {"transaction": "t2"})
        client.send_frame("SEND", {"destination": "/topic/tx", "transaction": "t2"}, "dropped")
        client.send_frame("ABORT", {"transaction": "t2"})
        client.send_frame("COMMIT", {"transaction": "t1", "receipt": "done"})
        client.expect_receipt("done")
        assert [e["data"] for e in history(server.url, "tx")["events"]] == ["a", "b"]
        assert [m.body for m in listener.messages(2)] == [b"a", b"b"]
        listener.nothing_for()

    def test_ack_in_a_transaction(self, server, clients):
        client = clients()
        client.connect()
        client.subscribe("/topic/tx-ack", ack="client-individual", prefetch_count="1")
        publish(server.url, "tx-ack", 1)
        publish(server.url, "tx-ack", 2)
        (one,) = client.messages(1)
        client.send_frame("BEGIN", {"transaction": "t"})
        client.send_frame("ACK", {"id": one.get("ack"), "transaction": "t"})
        client.nothing_for()  # not applied before COMMIT
        client.send_frame("COMMIT", {"transaction": "t"})
        assert client.messages(1)[0].body == b"2"


class TestResume:
    def test_last_event_id_replays_once_in_order_then_live(self, server, clients):
        ids = [publish(server.url, "resume", n)["id"] for n in range(20)]
        more: list[str] = []

        def publisher():
            for n in range(20, 30):
                more.append(publish(server.url, "resume", n)["id"])

        client = clients()
        client.connect()
        thread = threading.Thread(target=publisher)
        thread.start()
        try:
            client.subscribe("/topic/resume", last_event_id=ids[4])
        finally:
            thread.join(scaled(30))
        live = publish(server.url, "resume", "live")["id"]
        expected = ids[5:] + more + [live]
        received = [m.get("event-id") for m in client.messages(len(expected))]
        assert received == expected
        client.nothing_for()

    def test_old_cursor_gets_a_gap_message_first(self, tight):
        ids = [publish(tight.url, "resume-gap", n)["id"] for n in range(15)]  # history keeps 10
        client = Wire(tight)
        try:
            client.connect()
            client.subscribe("/topic/resume-gap", last_event_id=ids[0])
            gap = client.frame()
            assert gap.command == "MESSAGE" and gap.get("gap") == "true" and gap.body == b""
            assert gap.get("content-length") == "0" and "event-id" not in gap
            assert [m.get("event-id") for m in client.messages(10)] == ids[5:]
        finally:
            client.close()

    def test_cursor_from_another_epoch_gets_a_gap(self, server, clients):
        event = publish(server.url, "resume-epoch", "kept")
        client = clients()
        client.connect()
        client.subscribe("/topic/resume-epoch", last_event_id="zzz9-" + event["id"].rsplit("-", 1)[1])
        gap, replayed = client.frame(), client.frame()
        assert gap.get("gap") == "true"
        assert replayed.get("event-id") == event["id"] and replayed.body == b"kept"

    def test_malformed_cursor(self, clients):
        client = clients()
        client.connect()
        client.send_frame("SUBSCRIBE", {"id": "0", "destination": "/topic/x", "last-event-id": "garbage"})
        client.expect_error("invalid last-event-id")
        assert client.expect_close() == 1008


class TestBrokenFrames:
    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"CONNECT\naccept-version:1.2\n\n\x00SEND\ndestination /topic/x\n\n\x00", "header line without ':'"),
            (b"CONNECT\naccept-version:1.2\n\n\x00SEND\ndestination:/topic/\\tx\n\n\x00", "undefined escape sequence"),
            (b"CONNECT\naccept-version:1.2\n\n\x00SEND\n\nno destination\x00", "missing header 'destination'"),
            (b"CONNECT\naccept-version:1.2\n\n\x00FLY\n\n\x00", "unknown command"),
            (b"SEND\ndestination:/topic/x\n\n\x00", "frame before CONNECT"),
            (b"CONNECT\naccept-version:1.2\n\n\x00SEND\ndestination:/topic/x\ncontent-length:3\n\nshort\x00", None),
        ],
    )
    def test_error_then_close_and_others_keep_working(self, server, clients, data, message):
        bystander = clients()
        bystander.connect()
        bystander.subscribe("/topic/bystander")
        broken = clients()
        broken.send(data)
        frames = []
        while True:
            frame = broken.frame()
            frames.append(frame)
            if frame.command == "ERROR":
                break
        error = frames[-1]
        if message is not None:
            assert message in error.get("message"), error
        assert error.body
        assert broken.expect_close() == 1002
        publish(server.url, "bystander", "still here")
        assert bystander.messages(1)[0].body == b"still here"

    def test_a_frame_over_the_size_limit_closes_with_1009(self, server, clients):
        # One WebSocket message over SWITCHBOARD_MAX_MESSAGE_BYTES: wsio refuses it (1009)
        # from its header, before the STOMP parser sees a byte.
        client = clients()
        client.connect()
        client.send_frame("SEND", {"destination": "/topic/huge"}, b"x" * (1024 * 1024 + 1))
        assert client.expect_close() == 1009

    def test_a_frame_over_the_limit_in_several_messages_gets_an_error(self, server, clients):
        # The same limit holds for a frame spread over several messages: the parser's.
        client = clients()
        client.connect()
        client.send(b"SEND\ndestination:/topic/huge\n\n" + b"x" * 600_000)
        client.send(b"x" * 600_000)
        assert b"1048576 octets" in client.expect_error("frame too large").body
        assert client.expect_close() == 1008


@pytest.fixture(scope="class")
def guarded(tmp_path_factory):
    """A server that wants STOMP credentials."""
    env = {"SWITCHBOARD_STOMP_LOGIN": "guest", "SWITCHBOARD_STOMP_PASSCODE": "s3cret:pass"}
    with Gunicorn(tmp_path_factory.mktemp("guarded"), env=env) as running:
        yield running


class TestCredentials:
    def test_right_credentials(self, guarded):
        client = Wire(guarded)
        try:
            connected = client.connect(login="guest", passcode="s3cret:pass")
            assert connected.get("version") == "1.2"
            client.subscribe("/topic/guarded")  # the session works after the login
        finally:
            client.close()

    @pytest.mark.parametrize("headers", [{"login": "guest", "passcode": "wrong"}, {"login": "guest"}, {}])
    def test_wrong_or_missing_credentials(self, guarded, headers):
        client = Wire(guarded)
        try:
            client.send_frame("CONNECT", {"accept-version": "1.2", "host": "x", **headers})
            client.expect_error("authentication failed")
            assert client.expect_close() == 1008
        finally:
            client.close()


class TestPayloads:
    def test_a_one_megabyte_message_passes(self, server, clients):
        listener, talker = clients(), clients()
        listener.connect()
        talker.connect()
        listener.subscribe("/topic/big")
        body = ("0123456789abcdef" * 62_500).encode()  # 1,000,000 bytes
        talker.send_frame("SEND", {"destination": "/topic/big", "content-type": "text/plain", "receipt": "big"}, body)
        talker.expect_receipt("big")
        (message,) = listener.messages(1, timeout=10)
        assert message.body == body and len(message.raw) > 1_000_000

    def test_non_utf8_body_goes_out_as_a_binary_frame(self, server, clients):
        listener, talker = clients(), clients()
        listener.connect()
        talker.connect()
        listener.subscribe("/topic/bin")
        payload = bytes([0xFF, 0x00, 0xFE, 0x80, 0x0A])
        frame = (
            b"SEND\ndestination:/topic/bin\ncontent-type:application/octet-stream\n"
            b"content-length:5\nreceipt:b\n\n" + payload + b"\x00"
        )
        talker.send(frame, binary=True)  # binary frames are accepted inbound
        talker.expect_receipt("b")
        (message,) = listener.messages(1)
        assert message.opcode == OP_BINARY and message.body == payload
        assert message.get("content-type") == "application/octet-stream" and message.get("event-type") == "binary"
        (event,) = history(server.url, "bin")["events"]
        assert event["type"] == "binary"
        assert event["data"] == {
            "base64": base64.b64encode(payload).decode(),
            "content-type": "application/octet-stream",
        }
        talker.send_frame("SEND", {"destination": "/topic/bin"}, "text again")
        again = listener.messages(1)[0]
        assert again.opcode == OP_TEXT and again.body == b"text again"


def sse_events(response, count: int) -> list:
    """Read ``count`` events (their one-line JSON data) from an open SSE response."""
    events, fields = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in fields:
                events.append(json.loads(fields["data"]))
                if len(events) == count:
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    raise AssertionError(f"the stream ended after {events}")


@pytest.fixture(scope="class")
def quick_sse(tmp_path_factory):
    """A server whose SSE heartbeat is short, so a closed stream is released at once."""
    with Gunicorn(tmp_path_factory.mktemp("cross"), env={"SWITCHBOARD_SSE_HEARTBEAT": "0.2"}) as running:
        yield running


class TestCrossTransport:
    @pytest.mark.parametrize("other", ["polling", "sse"])
    def test_stomp_and_http_clients_see_the_same_events(self, quick_sse, other):
        server, topic = quick_sse, f"cross-{other}"
        cookie, sender = browser_identity(server.url)
        stomp = Wire(server, cookie=cookie)
        stream = None
        try:
            stomp.connect()
            stomp.subscribe(f"/topic/{topic}")
            cursor = history(server.url, topic)["cursor"]
            if other == "sse":
                # Returns with the headers, which leave after the stream's subscription exists.
                stream = requests.get(f"{server.url}/api/topics/{topic}/stream", stream=True, timeout=scaled(10))
                if stream.status_code == 404:
                    pytest.skip("the SSE endpoint has not landed yet (app/transports/sse.py)")
                assert stream.status_code == 200

            http_event = publish(server.url, topic, {"text": "from HTTP"})
            stomp.send_frame(
                "SEND",
                {"destination": f"/topic/{topic}", "content-type": "application/json", "receipt": "r"},
                '{"text": "from STOMP"}',
            )
            frames = [stomp.frame() for _ in range(3)]  # the RECEIPT may come before or after the first MESSAGE
            assert [f.get("receipt-id") for f in frames if f.command == "RECEIPT"] == ["r"]
            via_stomp = [f for f in frames if f.command == "MESSAGE"]
            assert [m.json() for m in via_stomp] == [{"text": "from HTTP"}, {"text": "from STOMP"}]
            assert via_stomp[0].get("event-id") == http_event["id"]
            assert via_stomp[1].get("sender") == sender

            if stream is None:
                seen = history(server.url, topic, since=cursor)["events"]
            else:
                seen = sse_events(stream, 2)
            assert [(e["id"], e["data"], e["sender"]) for e in seen] == [
                (m.get("event-id"), m.json(), m.get("sender")) for m in via_stomp
            ]
        finally:
            stomp.close()
            if stream is not None:
                stream.close()


class TestCleanup:
    def test_everything_is_released(self, start_server):
        server = start_server()  # its own, so the subscriber count is this test's alone
        before = subscribers(server.url)
        wires = [Wire(server) for _ in range(3)]
        for _n, wire in enumerate(wires):
            wire.connect(heart_beat="1000,1000")
            wire.subscribe("/topic/cleanup-a", sub_id="a")
            wire.subscribe("/topic/cleanup-b", sub_id="b")
        wait_until(lambda: subscribers(server.url) == before + 6, timeout=5, message="six subscriptions")
        wires[0].send_frame("UNSUBSCRIBE", {"id": "a", "receipt": "u"})
        wires[0].expect_receipt("u")
        assert subscribers(server.url) == before + 5
        wires[0].close()  # a clean WebSocket close
        wires[1].ws.sock.close()  # the TCP connection just vanishes
        wires[2].send_frame("DISCONNECT", {})
        wait_until(lambda: subscribers(server.url) == before, timeout=10, message="subscriptions released")
        for wire in wires:
            wire.close()

    def test_sigterm_closes_sessions_with_1001_and_the_worker_exits(self, start_server):
        # DESIGN.md §8: an ERROR frame with a reconnect hint (the app's shutdown hook),
        # then 1001; clients resume with last-event-id.
        server = start_server()
        client = Wire(server)
        try:
            client.connect(heart_beat="1000,1000")
            client.subscribe("/topic/sigterm")
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            error = client.expect_error("server shutting down")
            assert b"last-event-id" in error.body
            assert client.expect_close() == 1001
            server.proc.wait(scaled(10))
            assert time.monotonic() - started < scaled(8), "the worker did not wait for the STOMP session"
        finally:
            client.close()


@pytest.mark.redis
class TestRedisBackend:
    def test_two_workers_share_topics_and_cursors(self, start_server, tmp_path):
        from tests.support.redis_server import RedisServer

        with RedisServer(tmp_path / "redis") as redis_server:
            server = start_server({"SWITCHBOARD_REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"})
            wires = [Wire(server) for _ in range(4)]  # spread over both workers by the kernel
            try:
                for wire in wires:
                    wire.connect()
                    wire.subscribe("/topic/redis-stomp")
                for n, wire in enumerate(wires):
                    wire.send_frame("SEND", {"destination": "/topic/redis-stomp"}, f"from {n}")
                for wire in wires:
                    bodies = sorted(m.body for m in wire.messages(4, timeout=10))
                    assert bodies == [f"from {n}".encode() for n in range(4)]
                ids = [e["id"] for e in history(server.url, "redis-stomp")["events"]]
                late = Wire(server)
                wires.append(late)
                late.connect()
                late.subscribe("/topic/redis-stomp", last_event_id=ids[1])
                assert [m.get("event-id") for m in late.messages(2)] == ids[2:]
            finally:
                for wire in wires:
                    wire.close()
