"""Tests for app.stomp.session: one class per section of the STOMP 1.2 spec.

A small client harness feeds frames as bytes with an explicit clock and parses
what the session sends back, checking on the way that every outgoing chunk is
exactly one frame or one heart-beat (the I/O layer sends each as one message).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.stomp import (
    Ack,
    AuthError,
    Closed,
    Commit,
    Connect,
    Frame,
    FrameParser,
    Limits,
    Nack,
    Send,
    SessionState,
    StompConfig,
    StompError,
    StompSession,
    Subscribe,
    Unsubscribe,
    serialize,
)
from app.stomp.session import encode_message_tail


class Client:
    """Drives a StompSession the way the WebSocket transport will."""

    def __init__(self, config: StompConfig | None = None, now: float = 0.0, auto_confirm: bool = True) -> None:
        self.session = StompSession(config, now=now, session_id="s1")
        self.now = now
        self.version: str | None = None  # the escaping this client uses
        # As a broker that accepts every request would: confirm each frame that waits.
        self.auto_confirm = auto_confirm

    def raw(self, data: bytes, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        self.session.receive_data(data, now=self.now)
        while self.auto_confirm and self.session.waiting:
            self.session.confirm(self.now)

    def send(self, command: str, headers=(), body: bytes = b"", now: float | None = None) -> None:
        self.raw(serialize(Frame.build(command, headers, body), self.version), now)

    def connect(self, version: str = "1.2", **headers: str) -> Frame:
        headers = {"accept-version": version, "host": "localhost", **headers}
        self.send("CONNECT", {k.replace("_", "-"): v for k, v in headers.items()})
        (connected,) = self.frames()
        assert connected.command == "CONNECTED", connected
        self.version = connected.get("version")
        return connected

    def frames(self) -> list:
        """Parse everything the session queued, one chunk = one item."""
        items = []
        for chunk in self.session.data_to_send():
            parser = FrameParser(version=self.session.version)
            parser.feed(chunk)
            (item,) = list(parser)
            assert parser.buffered == 0
            items.append(item)
        return items

    def requests(self) -> list:
        return self.session.requests()

    def subscribe(self, sub_id: str = "0", destination: str = "/topic/chat", **headers: str) -> None:
        self.send("SUBSCRIBE", {"id": sub_id, "destination": destination, **headers})
        assert self.frames() == []
        (request,) = self.requests()
        assert isinstance(request, Subscribe)

    def error_frame(self) -> Frame:
        """The ERROR the session answered with, after checking it is well formed and final."""
        *_, error = self.frames()
        assert error.command == "ERROR"
        assert error.body, "the ERROR body explains the failure"
        assert error.get("content-type", "").startswith("text/plain")
        assert self.session.closed
        closed = self.requests()[-1]
        assert closed == Closed(error.get("message"), closed.error_kind)
        self.last_error_kind = closed.error_kind
        return error

    def error(self) -> tuple[str, str]:
        """``(message header, error kind)`` of the ERROR that closed the session."""
        frame = self.error_frame()
        return frame.get("message"), self.last_error_kind

    def expect_error(self, message: str, kind: str) -> Frame:
        """The ERROR frame, asserting its message and kind (for tests that read its body)."""
        frame = self.error_frame()
        assert (frame.get("message"), self.last_error_kind) == (message, kind)
        return frame


def connected(version: str = "1.2", config: StompConfig | None = None, **headers: str) -> Client:
    client = Client(config)
    client.connect(version, **headers)
    client.requests()
    return client


class TestConnecting:
    def test_spec_example(self):
        client = Client()
        client.raw(b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\x00")
        (frame,) = client.frames()
        assert frame.command == "CONNECTED"
        assert frame.get("version") == "1.2"
        assert frame.get("session") == "s1"
        assert frame.get("server") == "Switchboard"
        assert frame.get("heart-beat") == "10000,10000"
        assert client.requests() == [Connect("1.2", None, "stomp.github.org", "s1", (0, 0))]
        assert client.session.state is SessionState.CONNECTED

    def test_stomp_frame_is_handled_like_connect(self):
        client = Client()
        client.raw(b"STOMP\naccept-version:1.2\nhost:h\n\n\x00")
        assert client.frames()[0].command == "CONNECTED"

    @pytest.mark.parametrize(
        ("accept_version", "expected"),
        [("1.0,1.1,2.0", "1.1"), ("1.2", "1.2"), ("1.1, 1.2", "1.2"), ("1.0", "1.0"), (None, "1.0")],
    )
    def test_version_negotiation(self, accept_version, expected):
        client = Client()
        headers = {"host": "h"} if accept_version is None else {"accept-version": accept_version}
        client.send("CONNECT", headers)
        (frame,) = client.frames()
        assert frame.get("version") == expected
        assert client.session.version == expected
        assert client.requests()[0].version == expected

    def test_no_common_version(self):
        client = Client()
        client.raw(b"CONNECT\naccept-version:2.0,2.1\nhost:h\n\n\x00")
        error = client.expect_error("no common protocol version", "unsupported-version")
        assert error.get("version") == "1.0,1.1,1.2"
        assert error.body == b"Supported protocol versions are 1.0 1.1 1.2"

    def test_missing_accept_version_means_1_0_only(self):
        client = Client(StompConfig(versions=("1.1", "1.2")))
        client.raw(b"CONNECT\nhost:h\n\n\x00")
        error = client.expect_error("no common protocol version", "unsupported-version")
        assert error.get("version") == "1.1,1.2"

    @pytest.mark.parametrize("host", [None, "", "anything.example", "a:b"])
    def test_any_host_is_accepted(self, host):
        client = Client()
        headers = {"accept-version": "1.2"} if host is None else {"accept-version": "1.2", "host": host}
        client.send("CONNECT", headers)
        assert client.frames()[0].command == "CONNECTED"
        assert client.requests()[0].host == host

    def test_login_hook_gets_credentials(self):
        seen = []
        config = StompConfig(authenticate=lambda login, passcode: seen.append((login, passcode)) or True)
        client = Client(config)
        client.connect(login="alice", passcode="s3cr\\t:")  # CONNECT headers are never unescaped
        assert seen == [("alice", "s3cr\\t:")]
        assert client.requests()[0].login == "alice"

    def test_rejected_login(self):
        client = Client(StompConfig(authenticate=lambda login, passcode: False))
        client.send("CONNECT", {"accept-version": "1.2", "login": "eve", "passcode": "x"})
        assert client.error() == ("authentication failed", "auth")
        assert client.session.version is None

    def test_login_hook_may_choose_the_message(self):
        def hook(login, passcode):
            raise AuthError("account locked", "Too many attempts.")

        client = Client(StompConfig(authenticate=hook))
        client.send("CONNECT", {"accept-version": "1.2"})
        assert client.expect_error("account locked", "auth").body == b"Too many attempts."

    def test_default_hook_accepts_anyone(self):
        client = Client()
        assert client.connect(login="whoever", passcode="whatever").command == "CONNECTED"
        assert not client.session.closed

    def test_heart_beats_before_connect_are_fine(self):
        client = Client()
        client.raw(b"\n\r\n")
        assert client.frames() == [] and not client.session.closed
        assert client.connect().get("version") == "1.2"

    def test_frames_after_connect_in_the_same_message_use_the_new_escaping(self):
        client = Client()
        client.raw(
            b"CONNECT\naccept-version:1.2\n\n\x00SEND\ndestination:/a\\cb\n\n\x00CONNECT\naccept-version:1.2\n\n\x00"
        )
        requests = client.requests()
        assert isinstance(requests[0], Connect)
        assert requests[1].destination == "/a:b"
        assert requests[2] == Closed("already connected", "protocol-violation")

    def test_1_0_session_does_not_unescape(self):
        client = connected("1.0")
        client.raw(b"SEND\ndestination:/a\\cb\\t\n\nx\x00")
        assert client.requests()[0].destination == "/a\\cb\\t"

    def test_connect_timeout(self):
        client = Client(StompConfig(connect_timeout=5.0), now=100.0)
        assert client.session.next_deadline() == 105.0
        client.session.tick(104.9)
        assert not client.session.closed
        client.session.tick(105.0)
        assert client.error() == ("no CONNECT frame received", "connect-timeout")

    def test_connect_timer_starts_with_the_first_call_when_no_time_given(self):
        session = StompSession(StompConfig(connect_timeout=5.0))
        assert session.next_deadline() is None
        session.tick(50.0)
        assert session.next_deadline() == 55.0


class TestHeartBeating:
    @pytest.mark.parametrize(
        ("client_hb", "server_hb", "expected"),
        [
            (None, (10000, 10000), (0, 0)),  # missing header = 0,0
            ("0,0", (10000, 10000), (0, 0)),
            ("1000,2000", (10000, 10000), (10000, 10000)),
            ("20000,5000", (10000, 1000), (20000, 10000)),
            ("0,5000", (10000, 10000), (0, 10000)),  # client cannot send
            ("5000,0", (10000, 10000), (10000, 0)),  # client wants none
            ("5000,5000", (0, 0), (0, 0)),  # server neither sends nor wants
            ("5000,5000", (3000, 0), (0, 5000)),
        ],
    )
    def test_negotiation(self, client_hb, server_hb, expected):
        client = Client(StompConfig(heart_beat=server_hb))
        headers = {} if client_hb is None else {"heart_beat": client_hb}
        frame = client.connect(**headers)
        assert frame.get("heart-beat") == f"{server_hb[0]},{server_hb[1]}"
        assert client.session.heart_beat == expected
        assert client.requests()[0].heart_beat == expected

    def test_server_sends_eol_when_due(self):
        client = connected(config=StompConfig(heart_beat=(1000, 0)), heart_beat="0,2000")
        assert client.session.heart_beat == (0, 2000)
        assert client.session.next_deadline() == 2.0
        client.session.tick(1.9)
        assert client.session.data_to_send() == []
        client.session.tick(2.0)
        assert client.session.data_to_send() == [b"\n"]
        assert client.session.next_deadline() == 4.0

    def test_frames_count_as_heart_beats(self):
        client = connected(config=StompConfig(heart_beat=(1000, 0)), heart_beat="0,2000")
        client.subscribe()
        assert client.session.deliver("0", b"x", now=1.5) is not None
        client.frames()
        assert client.session.next_deadline() == 3.5
        client.session.tick(2.0)
        assert client.session.data_to_send() == []

    def test_silent_client_is_disconnected_after_margin(self):
        config = StompConfig(heart_beat=(0, 1000), heartbeat_margin=2.0)
        client = connected(config=config, heart_beat="1500,0")
        assert client.session.heart_beat == (1500, 0)
        assert client.session.next_deadline() == 3.0
        client.session.tick(2.9)
        assert not client.session.closed
        client.session.tick(3.0)
        assert client.error() == ("heart-beat timeout", "heartbeat-timeout")
        assert client.session.next_deadline() is None

    @pytest.mark.parametrize("data", [b"\n", b"\r\n", b"SEND\ndest"])
    def test_any_bytes_keep_the_client_alive(self, data):
        client = connected(config=StompConfig(heart_beat=(0, 1000)), heart_beat="1000,0")
        client.raw(data, now=1.5)
        assert client.session.next_deadline() == 3.5
        client.session.tick(3.0)
        assert not client.session.closed

    @pytest.mark.parametrize("value", ["1000", "a,b", "-1,0", "1000,", "1,2,3"])
    def test_invalid_header(self, value):
        client = Client()
        client.send("CONNECT", {"accept-version": "1.2", "heart-beat": value})
        assert client.error() == ("invalid heart-beat header", "protocol-violation")

    def test_none_in_1_0(self):
        client = Client()
        client.send("CONNECT", {"heart-beat": "1000,1000"})
        (frame,) = client.frames()
        assert frame.get("version") == "1.0" and "heart-beat" not in frame
        assert client.session.heart_beat == (0, 0)
        assert client.session.next_deadline() is None

    def test_no_deadline_without_heart_beats(self):
        assert connected().session.next_deadline() is None


class TestSend:
    def test_spec_example(self):
        client = connected()
        client.raw(b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\x00")
        assert client.requests() == [
            Send(
                "/queue/a",
                b"hello queue a\n",
                "text/plain",
                (("destination", "/queue/a"), ("content-type", "text/plain")),
            )
        ]
        assert client.frames() == []

    def test_user_headers_and_binary_body_pass_through(self):
        client = connected()
        client.send("SEND", {"destination": "/topic/t", "x-custom": "a:b\nc"}, b"\x00\x01")
        (request,) = client.requests()
        assert request.body == b"\x00\x01"
        assert request.content_type is None
        assert ("x-custom", "a:b\nc") in request.headers

    def test_missing_destination(self):
        client = connected()
        client.send("SEND", {"receipt": "r1"}, b"x")
        assert client.expect_error("missing header 'destination'", "missing-header").get("receipt-id") == "r1"

    def test_destination_hook(self):
        def check(destination):
            return None if destination.startswith("/topic/") else "unknown prefix"

        config = StompConfig(validate_destination=check)
        client = connected(config=config)
        client.send("SEND", {"destination": "/topic/ok"}, b"x")
        assert isinstance(client.requests()[0], Send)
        client.send("SEND", {"destination": "/queue/no", "receipt": "r9"}, b"x")
        error = client.expect_error("invalid destination", "bad-destination")
        assert error.get("receipt-id") == "r9"
        assert b"unknown prefix" in error.body


class TestSubscribe:
    def test_spec_example(self):
        client = connected()
        client.raw(b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\x00")
        (request,) = client.requests()
        assert request == Subscribe(
            "0",
            "/queue/foo",
            "client",
            None,
            None,
            (("id", "0"), ("destination", "/queue/foo"), ("ack", "client")),
        )

    def test_defaults_and_options(self):
        client = connected()
        client.send("SUBSCRIBE", {"id": "a", "destination": "/topic/t"})
        assert client.requests()[0].ack_mode == "auto"
        client.send(
            "SUBSCRIBE",
            {
                "id": "b",
                "destination": "/topic/t",
                "ack": "client-individual",
                "last-event-id": "e-7",
                "prefetch-count": "5",
            },
        )
        request = client.requests()[0]
        assert (request.ack_mode, request.last_event_id, request.prefetch) == ("client-individual", "e-7", 5)

    @pytest.mark.parametrize(
        ("headers", "message", "kind"),
        [
            ({"destination": "/topic/t"}, "missing header 'id'", "missing-header"),
            ({"id": "0"}, "missing header 'destination'", "missing-header"),
            ({"id": "0", "destination": "/t", "ack": "sometimes"}, "invalid ack mode", "protocol-violation"),
            (
                {"id": "0", "destination": "/t", "prefetch-count": "-1"},
                "invalid prefetch-count",
                "protocol-violation",
            ),
        ],
    )
    def test_invalid(self, headers, message, kind):
        client = connected()
        client.send("SUBSCRIBE", headers)
        assert client.error() == (message, kind)

    def test_duplicate_id(self):
        client = connected()
        client.subscribe("0")
        client.send("SUBSCRIBE", {"id": "0", "destination": "/topic/other"})
        assert client.error() == ("duplicate subscription id", "protocol-violation")

    def test_unsubscribe(self):
        client = connected()
        client.subscribe("0", "/topic/chat")
        client.raw(b"UNSUBSCRIBE\nid:0\n\n\x00")
        assert client.requests() == [Unsubscribe("0", "/topic/chat")]
        assert not client.session.can_deliver("0")
        assert client.session.deliver("0", b"late") is None
        client.subscribe("0", "/topic/chat")  # the id is free again

    def test_unsubscribe_unknown(self):
        client = connected()
        client.send("UNSUBSCRIBE", {"id": "nope"})
        assert client.error() == ("unknown subscription", "protocol-violation")

    def test_unsubscribe_needs_id(self):
        client = connected()
        client.send("UNSUBSCRIBE", {"destination": "/topic/chat"})
        assert client.error() == ("missing header 'id'", "missing-header")

    def test_1_0_subscription_without_id(self):
        client = connected("1.0")
        client.send("SUBSCRIBE", {"destination": "/topic/chat"})
        assert client.requests()[0].sub_id == "/topic/chat"
        client.send("UNSUBSCRIBE", {"destination": "/topic/chat"})
        assert client.requests() == [Unsubscribe("/topic/chat", "/topic/chat")]

    def test_subscription_limit(self):
        client = connected(config=StompConfig(max_subscriptions=2))
        client.subscribe("a")
        client.subscribe("b")
        client.send("SUBSCRIBE", {"id": "c", "destination": "/topic/t"})
        assert client.error() == ("too many subscriptions", "limit-exceeded")


class TestMessage:
    def test_frame_headers(self):
        client = connected()
        client.subscribe("sub-1", "/topic/chat")
        extra = {
            "event-id": "e1-5",
            "event-type": "message",
            "sender": "bob",
            "time": "1.5",
            "content-type": "application/json",
        }
        message_id = client.session.deliver("sub-1", b'{"text":"hi"}', extra)
        (frame,) = client.frames()
        assert frame.command == "MESSAGE"
        assert frame.headers[:3] == (
            ("subscription", "sub-1"),
            ("message-id", message_id),
            ("destination", "/topic/chat"),
        )
        assert "ack" not in frame  # auto mode
        for name, value in extra.items():
            assert frame.get(name) == value
        assert frame.get("content-length") == "13"
        assert frame.body == b'{"text":"hi"}'

    def test_message_ids_are_unique(self):
        client = connected()
        client.subscribe("a")
        client.subscribe("b", "/topic/other")
        ids = {client.session.deliver(sub, b"x") for sub in ("a", "b") * 5}
        assert len(ids) == 10 and None not in ids

    def test_default_content_type_for_a_body(self):
        client = connected()
        client.subscribe()
        client.session.deliver("0", b"\x00\xff")
        client.session.deliver("0", b"")
        with_body, empty = client.frames()
        assert with_body.get("content-type") == "application/octet-stream"
        assert with_body.body == b"\x00\xff"
        assert "content-type" not in empty and empty.get("content-length") == "0"

    def test_reserved_headers_cannot_be_overridden(self):
        client = connected()
        client.subscribe("0", "/topic/chat")
        extra = [("subscription", "evil"), ("destination", "/x"), ("ack", "1"), ("gap", "true")]
        client.session.deliver("0", b"x", extra)
        (frame,) = client.frames()
        assert [v for k, v in frame.headers if k == "subscription"] == ["0"]
        assert [v for k, v in frame.headers if k == "destination"] == ["/topic/chat"]
        assert "ack" not in frame and frame.get("gap") == "true"

    def test_header_values_are_escaped_in_1_2(self):
        client = connected()
        client.subscribe()
        client.session.deliver("0", b"x", {"sender": "a:b\nc\\d"})
        (chunk,) = client.session.data_to_send()
        assert b"sender:a\\cb\\nc\\\\d\n" in chunk

    def test_1_0_drops_headers_it_cannot_carry(self):
        client = connected("1.0")
        client.send("SUBSCRIBE", {"id": "0", "destination": "/topic/t"})
        client.session.deliver("0", b"x", {"sender": "a\nb", "event-id": "e:1"})
        (frame,) = client.frames()
        assert "sender" not in frame and frame.get("event-id") == "e:1"

    @pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
    @pytest.mark.parametrize("ack", ["auto", "client", "client-individual"])
    def test_a_shared_tail_gives_the_same_bytes(self, version, ack):
        # deliver(..., tail=encode_message_tail(...)): one encoding per event for every
        # subscriber, byte for byte the frame deliver() builds from body and headers.
        cases = [
            (b'{"text":"hi"}', {"event-id": "e1-5", "sender": "a:b\nc\\d", "content-type": "application/json"}),
            (b"\x00\xff", [("subscription", "evil"), ("gap", "true"), ("x\r", "y\r")]),
            (b"", {"event-id": "e:1"}),
        ]
        plain, shared = connected(version), connected(version)
        for client in (plain, shared):
            client.send("SUBSCRIBE", {"id": "s:1\\", "destination": "/topic/a:b", "ack": ack})
            client.requests()
        assert shared.session.escapes_messages is (version != "1.0")
        for body, headers in cases:
            tail = encode_message_tail(body, headers, shared.session.escapes_messages)
            assert plain.session.deliver("s:1\\", body, headers) == shared.session.deliver(
                "s:1\\", body, headers, tail=tail
            )
        assert plain.session.data_to_send() == shared.session.data_to_send()
        if ack != "auto" and version != "1.0":  # kept for NACK as before: redelivered:true
            shared.send("NACK", {"id" if version == "1.2" else "message-id": "s1-1", "subscription": "s:1\\"})
            (again,) = shared.frames()
            assert again.get("redelivered") == "true" and again.body == b'{"text":"hi"}'

    def test_not_delivered_when_unknown_or_not_connected(self):
        assert StompSession().deliver("0", b"x") is None
        client = connected()
        assert client.session.deliver("nope", b"x") is None
        assert not client.session.can_deliver("nope")
        assert client.session.data_to_send() == []


class TestAckNack:
    def _client(self, mode: str, version: str = "1.2", **headers: str) -> tuple[Client, list[str]]:
        client = connected(version)
        client.subscribe("0", "/topic/t", ack=mode, **headers)
        ids = [client.session.deliver("0", b"m%d" % i) for i in range(3)]
        frames = client.frames()
        if version == "1.2" and mode != "auto":
            assert [f.get("ack") for f in frames] == ids
        else:
            assert all("ack" not in f for f in frames)
        return client, ids

    def test_client_mode_ack_is_cumulative(self):
        client, (m0, m1, m2) = self._client("client")
        client.send("ACK", {"id": m1})
        assert client.requests() == [Ack("0", (m0, m1))]
        client.send("ACK", {"id": m2, "receipt": "r"})
        assert client.requests() == [Ack("0", (m2,))]
        assert [f.command for f in client.frames()] == ["RECEIPT"]

    def test_client_mode_cannot_ack_twice(self):
        client, (m0, m1, _) = self._client("client")
        client.send("ACK", {"id": m1})
        client.requests()
        client.send("ACK", {"id": m0})
        assert client.error() == ("bad ack id", "protocol-violation")

    def test_client_individual_ack_is_not_cumulative(self):
        client, (m0, m1, m2) = self._client("client-individual")
        client.send("ACK", {"id": m1})
        assert client.requests() == [Ack("0", (m1,))]
        client.send("ACK", {"id": m0})
        client.send("ACK", {"id": m2})
        assert client.requests() == [Ack("0", (m0,)), Ack("0", (m2,))]
        assert not client.session.closed

    def test_nack_redelivers_to_the_same_subscription(self):
        client, (m0, m1, m2) = self._client("client-individual")
        client.send("NACK", {"id": m1})
        (again,) = client.frames()
        assert again.get("message-id") == m1 and again.get("ack") == m1
        assert again.get("subscription") == "0" and again.get("redelivered") == "true"
        assert again.body == b"m1"
        assert client.requests() == [Nack("0", (m1,))]
        client.send("ACK", {"id": m1})  # still awaiting its ACK
        assert client.requests() == [Ack("0", (m1,))]

    def test_nack_in_client_mode_is_cumulative(self):
        client, (m0, m1, m2) = self._client("client")
        client.send("NACK", {"id": m1})
        assert [(f.get("message-id"), f.body) for f in client.frames()] == [(m0, b"m0"), (m1, b"m1")]
        assert client.requests() == [Nack("0", (m0, m1))]
        client.send("ACK", {"id": m1})  # redelivered last, so this ACK covers all three
        assert client.requests() == [Ack("0", (m2, m0, m1))]

    def test_nacked_twice_has_one_redelivered_header(self):
        client, (m0, _, _) = self._client("client-individual")
        client.send("NACK", {"id": m0})
        client.send("NACK", {"id": m0})
        _, again = client.frames()
        assert [k for k, _ in again.headers].count("redelivered") == 1

    @pytest.mark.parametrize("command", ["ACK", "NACK"])
    def test_unknown_ack_id(self, command):
        client, _ = self._client("client")
        client.send(command, {"id": "s1-999", "receipt": "r"})
        assert client.expect_error("bad ack id", "protocol-violation").get("receipt-id") == "r"

    def test_auto_mode_messages_cannot_be_acked(self):
        client, (m0, _, _) = self._client("auto")
        client.send("ACK", {"id": m0})
        assert client.error() == ("bad ack id", "protocol-violation")

    def test_ack_needs_id_in_1_2(self):
        client, (m0, _, _) = self._client("client")
        client.send("ACK", {"message-id": m0, "subscription": "0"})
        assert client.error() == ("missing header 'id'", "missing-header")

    def test_1_1_ack_uses_message_id_and_subscription(self):
        client, (m0, m1, _) = self._client("client-individual", "1.1")
        client.send("ACK", {"message-id": m1, "subscription": "0"})
        assert client.requests() == [Ack("0", (m1,))]
        client.send("NACK", {"message-id": m0, "subscription": "0"})
        assert client.frames()[0].get("redelivered") == "true"

    def test_1_1_ack_needs_subscription(self):
        client, (m0, _, _) = self._client("client", "1.1")
        client.send("ACK", {"message-id": m0})
        assert client.error() == ("missing header 'subscription'", "missing-header")

    def test_1_1_ack_unknown_subscription(self):
        client, (m0, _, _) = self._client("client", "1.1")
        client.send("ACK", {"message-id": m0, "subscription": "9"})
        assert client.error() == ("unknown subscription", "protocol-violation")

    def test_1_0_ack_uses_message_id(self):
        client, (m0, _, _) = self._client("client", "1.0")
        client.send("ACK", {"message-id": m0})
        assert client.requests() == [Ack("0", (m0,))]

    def test_1_0_has_no_nack(self):
        client, (m0, _, _) = self._client("client", "1.0")
        client.send("NACK", {"message-id": m0})
        assert client.error() == ("command not in this version", "protocol-violation")

    def test_unsubscribe_forgets_pending_messages(self):
        client, (m0, _, _) = self._client("client")
        client.send("UNSUBSCRIBE", {"id": "0"})
        client.requests()
        client.send("ACK", {"id": m0})
        assert client.error() == ("bad ack id", "protocol-violation")


class TestPrefetch:
    def test_window_bounds_unacked_messages(self):
        client = connected()
        client.subscribe("0", ack="client-individual", **{"prefetch-count": "2"})
        assert client.session.can_deliver("0")
        m0 = client.session.deliver("0", b"a")
        m1 = client.session.deliver("0", b"b")
        assert not client.session.can_deliver("0")
        assert client.session.deliver("0", b"c") is None
        assert len(client.frames()) == 2
        client.send("ACK", {"id": m1})
        assert client.requests() == [Ack("0", (m1,))]
        assert client.session.can_deliver("0")
        client.session.deliver("0", b"c")
        assert not client.session.can_deliver("0")
        client.send("NACK", {"id": m0})  # redelivered, so still unacknowledged
        assert not client.session.can_deliver("0")

    def test_cumulative_ack_frees_the_window(self):
        client = connected()
        client.subscribe("0", ack="client", **{"prefetch-count": "3"})
        ids = [client.session.deliver("0", b"x") for _ in range(3)]
        assert not client.session.can_deliver("0")
        client.send("ACK", {"id": ids[-1]})
        assert client.session.can_deliver("0")

    def test_auto_mode_has_no_window(self):
        client = connected()
        client.subscribe("0", **{"prefetch-count": "1"})
        for _ in range(5):
            assert client.session.deliver("0", b"x") is not None
        assert client.session.can_deliver("0")

    @pytest.mark.parametrize(("prefetch", "window"), [(None, 4), ("0", 4), ("2", 2), ("100", 4)])
    def test_max_unacked_caps_the_window(self, prefetch, window):
        client = connected(config=StompConfig(max_unacked=4))
        headers = {} if prefetch is None else {"prefetch-count": prefetch}
        client.subscribe("0", ack="client", **headers)
        delivered = 0
        while client.session.can_deliver("0"):
            client.session.deliver("0", b"x")
            delivered += 1
        assert delivered == window


class TestTransactions:
    def test_sends_are_held_until_commit(self):
        client = connected()
        client.send("BEGIN", {"transaction": "tx1"})
        client.send("SEND", {"destination": "/topic/a", "transaction": "tx1"}, b"1")
        client.send("SEND", {"destination": "/topic/b", "transaction": "tx1"}, b"2")
        assert client.requests() == []
        client.send("COMMIT", {"transaction": "tx1"})
        (commit,) = client.requests()
        assert isinstance(commit, Commit) and commit.transaction == "tx1"
        assert [(r.destination, r.body, r.transaction) for r in commit.items] == [
            ("/topic/a", b"1", "tx1"),
            ("/topic/b", b"2", "tx1"),
        ]

    def test_abort_drops_held_frames(self):
        client = connected()
        client.send("BEGIN", {"transaction": "tx1"})
        client.send("SEND", {"destination": "/topic/a", "transaction": "tx1"}, b"1")
        client.send("ABORT", {"transaction": "tx1"})
        assert client.requests() == []
        client.send("COMMIT", {"transaction": "tx1"})
        assert client.error() == ("unknown transaction", "protocol-violation")

    def test_receipt_is_sent_on_receipt_not_on_commit(self):
        client = connected()
        client.send("BEGIN", {"transaction": "tx1"})
        client.send("SEND", {"destination": "/topic/a", "transaction": "tx1", "receipt": "r1"}, b"1")
        assert [f.get("receipt-id") for f in client.frames()] == ["r1"]
        assert client.requests() == []

    def test_acks_are_held_until_commit(self):
        client = connected()
        client.subscribe("0", ack="client-individual", **{"prefetch-count": "1"})
        m0 = client.session.deliver("0", b"x")
        client.send("BEGIN", {"transaction": "t"})
        client.send("ACK", {"id": m0, "transaction": "t"})
        assert client.requests() == []
        assert not client.session.can_deliver("0")
        client.send("COMMIT", {"transaction": "t"})
        assert client.requests() == [Commit("t", (Ack("0", (m0,)),))]
        assert client.session.can_deliver("0")

    def test_nack_in_transaction_redelivers_at_commit(self):
        client = connected()
        client.subscribe("0", ack="client-individual")
        m0 = client.session.deliver("0", b"x")
        client.frames()
        client.send("BEGIN", {"transaction": "t"})
        client.send("NACK", {"id": m0, "transaction": "t"})
        assert client.frames() == []
        client.send("COMMIT", {"transaction": "t"})
        assert client.frames()[0].get("redelivered") == "true"

    def test_ack_already_settled_at_commit_is_ignored(self):
        client = connected()
        client.subscribe("0", ack="client")
        m0, m1 = client.session.deliver("0", b"x"), client.session.deliver("0", b"y")
        client.send("BEGIN", {"transaction": "t"})
        client.send("ACK", {"id": m0, "transaction": "t"})
        client.send("ACK", {"id": m1})  # cumulative, settles m0 too
        client.send("COMMIT", {"transaction": "t"})
        assert client.requests() == [Ack("0", (m0, m1)), Commit("t", ())]
        assert not client.session.closed

    def test_bad_ack_in_transaction_fails_at_once(self):
        client = connected()
        client.send("BEGIN", {"transaction": "t"})
        client.send("ACK", {"id": "nope", "transaction": "t"})
        assert client.error() == ("bad ack id", "protocol-violation")

    def test_disconnect_aborts_open_transactions(self):
        client = connected()
        client.send("BEGIN", {"transaction": "t"})
        client.send("SEND", {"destination": "/topic/a", "transaction": "t"}, b"1")
        client.send("DISCONNECT")
        assert client.requests() == [Closed("client disconnected", None)]

    def test_connection_loss_aborts_open_transactions(self):
        client = connected()
        client.send("BEGIN", {"transaction": "t"})
        client.send("SEND", {"destination": "/topic/a", "transaction": "t"}, b"1")
        client.session.connection_lost()
        assert client.requests() == [Closed("connection lost", None)]

    @pytest.mark.parametrize(
        ("frames", "message"),
        [
            ([("BEGIN", {"transaction": "t"}), ("BEGIN", {"transaction": "t"})], "duplicate transaction"),
            ([("SEND", {"destination": "/a", "transaction": "t"})], "unknown transaction"),
            ([("ACK", {"id": "x", "transaction": "t"})], "bad ack id"),
            ([("COMMIT", {"transaction": "t"})], "unknown transaction"),
            ([("ABORT", {"transaction": "t"})], "unknown transaction"),
        ],
    )
    def test_invalid(self, frames, message):
        client = connected()
        for command, headers in frames:
            client.send(command, headers)
        assert client.error() == (message, "protocol-violation")

    @pytest.mark.parametrize("command", ["BEGIN", "COMMIT", "ABORT"])
    def test_transaction_header_is_required(self, command):
        client = connected()
        client.send(command)
        assert client.error() == ("missing header 'transaction'", "missing-header")

    def test_id_may_be_reused_once_finished(self):
        client = connected()
        for _ in range(2):
            client.send("BEGIN", {"transaction": "t"})
            client.send("COMMIT", {"transaction": "t"})
        assert not client.session.closed

    def test_limits(self):
        client = connected(config=StompConfig(max_transactions=1, max_transaction_frames=2))
        client.send("BEGIN", {"transaction": "a"})
        client.send("BEGIN", {"transaction": "b"})
        assert client.error() == ("too many transactions", "limit-exceeded")
        client = connected(config=StompConfig(max_transaction_frames=2))
        client.send("BEGIN", {"transaction": "a"})
        for _ in range(3):
            client.send("SEND", {"destination": "/a", "transaction": "a"})
        assert client.error() == ("transaction too large", "limit-exceeded")


class TestReceipt:
    def test_spec_example(self):
        client = connected()
        client.raw(b"SEND\ndestination:/queue/a\nreceipt:message-12345\n\nhello queue a\x00")
        (receipt,) = client.frames()
        assert receipt == Frame("RECEIPT", (("receipt-id", "message-12345"),))

    @pytest.mark.parametrize(
        "frames",
        [
            [("SUBSCRIBE", {"id": "0", "destination": "/t"})],
            [("SUBSCRIBE", {"id": "0", "destination": "/t"}), ("UNSUBSCRIBE", {"id": "0"})],
            [("BEGIN", {"transaction": "t"})],
            [("BEGIN", {"transaction": "t"}), ("COMMIT", {"transaction": "t"})],
            [("BEGIN", {"transaction": "t"}), ("ABORT", {"transaction": "t"})],
        ],
    )
    def test_every_client_frame_may_ask(self, frames):
        client = connected()
        for i, (command, headers) in enumerate(frames):
            client.send(command, {**headers, "receipt": f"r{i}"})
        assert [f.get("receipt-id") for f in client.frames()] == [f"r{i}" for i in range(len(frames))]

    def test_receipt_ids_are_escaped_both_ways(self):
        client = connected()
        client.raw(b"BEGIN\ntransaction:t\nreceipt:a\\cb\\nc\n\n\x00")
        (chunk,) = client.session.data_to_send()
        assert chunk == b"RECEIPT\nreceipt-id:a\\cb\\nc\n\n\x00"


class TestDisconnect:
    def test_spec_example(self):
        client = connected()
        client.raw(b"DISCONNECT\nreceipt:77\n\x00")  # as printed in the spec, no blank line
        assert client.frames() == [Frame("RECEIPT", (("receipt-id", "77"),))]
        assert client.session.closed
        assert client.requests() == [Closed("client disconnected", None)]
        assert client.session.error is None

    def test_without_receipt(self):
        client = connected()
        client.send("DISCONNECT")
        assert client.frames() == []
        assert client.session.closed and client.session.close_reason == "client disconnected"

    def test_nothing_after_disconnect_is_processed(self):
        client = connected()
        client.raw(b"DISCONNECT\n\n\x00SEND\ndestination:/a\n\nx\x00")
        client.raw(b"SEND\ndestination:/a\n\nx\x00")
        assert client.requests() == [Closed("client disconnected", None)]
        assert client.frames() == []

    def test_connection_lost(self):
        client = connected()
        client.session.connection_lost()
        client.session.connection_lost()
        assert client.requests() == [Closed("connection lost", None)]


class TestErrors:
    @pytest.mark.parametrize(
        ("data", "message", "kind"),
        [
            (b"FOO\n\n\x00", "unknown command", "protocol-violation"),
            (b"CONNECTED\nversion:1.2\n\n\x00", "server frame from client", "protocol-violation"),
            (b"MESSAGE\n\n\x00", "server frame from client", "protocol-violation"),
            (b"RECEIPT\n\n\x00", "server frame from client", "protocol-violation"),
            (b"ERROR\n\n\x00", "server frame from client", "protocol-violation"),
            (b"CONNECT\naccept-version:1.2\n\n\x00", "already connected", "protocol-violation"),
            (b"STOMP\naccept-version:1.2\n\n\x00", "already connected", "protocol-violation"),
            (b"SEND\ndestination:/a\\tb\n\n\x00", "undefined escape sequence in header", "bad-escape"),
            (b"SEND\ncontent-length:x\n\n\x00", "invalid content-length", "bad-content-length"),
            (
                b"SEND\ncontent-length:1\n\nab\x00",
                "frame not terminated after content-length",
                "bad-content-length",
            ),
            (b"SEND\nno colon\n\n\x00", "header line without ':'", "malformed-frame"),
            (b"SEND\n" + b"h:v\n" * 65 + b"\n\x00", "too many headers", "limit-exceeded"),
            (b"SEND\nh:" + b"v" * 9000 + b"\n\n\x00", "header line too long", "limit-exceeded"),
            (b"SEND\ndestination:/a\n\n" + b"x" * 1_200_000 + b"\x00", "frame too large", "limit-exceeded"),
            (b"SEND\ncontent-length:99999999\n\n", "frame too large", "limit-exceeded"),
        ],
    )
    def test_error_then_close(self, data, message, kind):
        client = connected()
        client.raw(data + b"SEND\ndestination:/after\n\n\x00")
        assert client.error() == (message, kind)
        assert client.session.error.kind == kind

    @pytest.mark.parametrize(
        "data",
        [b"SEND\ndestination:/a\n\n\x00", b"SUBSCRIBE\nid:0\ndestination:/a\n\n\x00", b"DISCONNECT\n\n\x00"],
    )
    def test_frame_before_connect(self, data):
        client = Client()
        client.raw(data)
        assert client.error() == ("frame before CONNECT", "protocol-violation")

    def test_error_carries_the_receipt_id_and_a_length(self):
        client = connected()
        client.raw(b"UNSUBSCRIBE\nid:x\nreceipt:r-42\n\n\x00")
        error = client.expect_error("unknown subscription", "protocol-violation")
        assert error.get("receipt-id") == "r-42"
        assert error.get("content-length") == str(len(error.body))

    def test_error_message_quotes_client_text_safely(self):
        client = connected("1.0")
        client.raw(b"UNSUBSCRIBE\nid:a\rb\n\n\x00")  # a CR inside a 1.0 value
        error = client.expect_error("unknown subscription", "protocol-violation")
        assert b"'a\\rb'" in error.body

    def test_broker_error(self):
        client = connected()
        client.session.send_error("unknown destination", "No such topic.", receipt_id="r1")
        error = client.expect_error("unknown destination", "broker")
        assert error.get("receipt-id") == "r1"
        client.session.send_error("again")
        assert client.session.data_to_send() == [] and client.requests() == []

    def test_closed_session_ignores_everything(self):
        client = connected()
        client.raw(b"FOO\n\n\x00")
        assert client.error() == ("unknown command", "protocol-violation")
        client.raw(b"SEND\ndestination:/a\n\n\x00")
        client.session.tick(1e9)
        assert client.session.data_to_send() == [] and client.requests() == []
        assert client.session.next_deadline() is None
        assert client.session.state is SessionState.CLOSED

    def test_one_error_frame_per_failure(self):
        # The ERROR frame comes from StompError.to_frame and nowhere else.
        err = StompError("m", "d", headers=[("x", "1")], receipt_id="r")
        assert err.to_frame() == Frame(
            "ERROR",
            (("message", "m"), ("receipt-id", "r"), ("x", "1"), ("content-type", "text/plain;charset=utf-8")),
            b"d",
        )

    def test_kinds_are_distinct(self):
        import app.stomp as stomp

        classes = [o for o in vars(stomp).values() if isinstance(o, type) and issubclass(o, StompError)]
        kinds = [cls.kind for cls in classes]
        assert len(classes) >= 12 and len(set(kinds)) == len(kinds)

    def test_limits_come_from_the_config(self):
        client = connected(config=StompConfig(limits=Limits(max_headers=2)))
        client.raw(b"SEND\ndestination:/a\nx:y\nz:w\n\n\x00")
        assert client.error() == ("too many headers", "limit-exceeded")


class TestConfig:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"heart_beat": (-1, 0)},
            {"heartbeat_margin": 0.5},
            {"versions": ("2.0",)},
            {"versions": ()},
            {"server_name": "a\nb"},
            {"max_unacked": 0},
        ],
    )
    def test_invalid(self, kwargs):
        with pytest.raises(ValueError):
            StompConfig(**kwargs)


# --- property: no input crashes the session ------------------------------------------

CLIENT_FRAMES = st.sampled_from(
    [
        b"CONNECT\naccept-version:1.0,1.1,1.2\nheart-beat:100,100\n\n\x00",
        b"SUBSCRIBE\nid:0\ndestination:/t\nack:client\n\n\x00",
        b"SUBSCRIBE\nid:1\ndestination:/t\nack:client-individual\nprefetch-count:1\n\n\x00",
        b"UNSUBSCRIBE\nid:0\n\n\x00",
        b"SEND\ndestination:/t\ntransaction:t\n\nx\x00",
        b"SEND\ndestination:/t\nreceipt:r\n\nx\x00",
        b"BEGIN\ntransaction:t\n\n\x00",
        b"COMMIT\ntransaction:t\n\n\x00",
        b"ABORT\ntransaction:t\n\n\x00",
        b"ACK\nid:s1-1\n\n\x00",
        b"NACK\nid:s1-2\ntransaction:t\n\n\x00",
        b"DISCONNECT\nreceipt:z\n\n\x00",
        b"\n",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("data"), st.one_of(CLIENT_FRAMES, st.binary(max_size=40))),
            st.tuples(st.just("deliver"), st.sampled_from(["0", "1", "x"])),
            st.tuples(st.just("tick"), st.floats(0, 1)),
        ),
        max_size=25,
    )
)
def test_any_sequence_of_inputs_keeps_the_session_consistent(steps):
    session = StompSession(StompConfig(limits=Limits(max_frame_bytes=200)), now=0.0, session_id="s1")
    now = 0.0
    for action, arg in steps:
        if action == "data":
            session.receive_data(arg, now=now)
        elif action == "deliver":
            if session.can_deliver(arg):
                assert session.deliver(arg, b"body", {"event-id": "1"}, now=now) is not None
        else:
            now += arg
            session.tick(now)
        for chunk in session.data_to_send():
            parser = FrameParser(version=session.version)
            parser.feed(chunk)
            assert len(list(parser)) == 1 and parser.buffered == 0
        requests = session.requests()
        assert all(not isinstance(r, Closed) for r in requests[:-1])
        if requests and isinstance(requests[-1], Closed):
            assert session.closed
        deadline = session.next_deadline()
        assert deadline is None or deadline >= 0
