"""STOMP topic delivery on the fan-out (app/transports/stomp_delivery.py): the direct way of
an auto-ack subscription writes the bytes the session's queue would have, and never
overtakes a frame the session queued first.

Each test drives real connections (the app's broker, real sessions) over a fake WebSocket
that keeps the wire: the delivery layer's writes and the connection's own sends, in order.
The fan-out greenlet never runs here (nothing yields); the tests call the framer the way
one round does.
"""

from __future__ import annotations

import pytest

import app.stomp.session as session_module
from app.config import Settings
from app.events import Gap, RawBody
from app.hub import Hub
from app.hub.memory import MemoryBackend
from app.server.frames import OP_BINARY, OP_TEXT, encode_frame, frame_header
from app.stomp import StompSession
from app.transports.stomp_connection import Connection
from app.transports.stomp_ws import Broker

SESSION_ID = "feedc0de"


class Wire:
    """A WebSocket whose outbox and direct sends append to one byte string."""

    close_code = None
    has_writer = False
    lost = False
    sealed = False
    backlog = 0
    last_write = 0.0

    def __init__(self) -> None:
        self.outbox = self
        self.on_drained: list = []
        self.on_lost: list = []
        self.data = bytearray()

    def write(self, pieces, *, last: bool = False) -> None:
        for piece in pieces:
            self.data += piece

    def send_encoded(self, payload: bytes, binary: bool = False) -> None:
        self.data += encode_frame(OP_BINARY if binary else OP_TEXT, payload)

    def close(self, *args) -> None:
        pass

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


@pytest.fixture
def broker(monkeypatch):
    # One session id for every connection, so that two sessions write the same message-ids.
    monkeypatch.setattr(session_module.secrets, "token_hex", lambda n: SESSION_ID)
    broker = Broker.from_settings(Hub(MemoryBackend(1000, 3600.0)), Settings.load(environ={}))
    yield broker
    broker.delivery.close()


def open_connection(broker, version: str, ack: str = "auto", heart_beat: str = "0,0"):
    wire = Wire()
    connection = Connection(broker, wire, "guest")
    connection.on_message(f"CONNECT\naccept-version:{version}\nhost:h\nheart-beat:{heart_beat}\n\n\x00")
    connection.on_message(f"SUBSCRIBE\nid:0\ndestination:/topic/a\nack:{ack}\n\n\x00")
    assert connection.session.version == version and not connection.session.closed
    wire.take()  # CONNECTED
    return connection, wire, connection._pumps["0"]


def events(broker) -> list:
    """Events the direct way must write exactly: user headers that need escaping (and that
    1.0 cannot carry), a binary body, a non-ASCII body, a body past 64 KiB."""
    hub = broker.hub
    return [
        hub.publish("other", {"text": "plain"}, sender="alice"),
        hub.publish(
            "other",
            {"text": "headers"},
            sender="bob:the\\builder",
            headers=(("x-colon", "a:b"), ("x-backslash", "c\\d"), ("x-newline", "e\nf\rg"), ("x-ok", "h")),
        ),
        hub.publish("other", None, raw=RawBody(b"\xff\x00\x80binary\xc3", "application/octet-stream")),
        hub.publish("other", None, raw=RawBody("héllo 한국어 ✓".encode(), "text/plain;charset=utf-8")),
        hub.publish("other", None, raw=RawBody(b"x" * 70_000, None)),
    ]


def direct_spy(connection) -> list:
    """Record what each ``direct_messages`` call of the connection's session answered."""
    answers: list = []
    session = connection.session
    real = session.direct_messages

    def spy(sub_id, count, now):
        answer = real(sub_id, count, now)
        answers.append(answer is not None)
        return answer

    session.direct_messages = spy
    return answers


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_the_direct_way_writes_the_queued_way_bytes(broker, version):
    direct, direct_wire, direct_framer = open_connection(broker, version)
    queued, queued_wire, queued_framer = open_connection(broker, version)
    answers = direct_spy(direct)
    items = events(broker)
    out_direct: list = []
    out_queued: list = []
    # One at a time (the paced case), then all in one batch.
    for item in items:
        assert direct_framer.frame([item], out_direct) == 1
        assert queued_framer._frame_queued([item], out_queued) == 1
    assert direct_framer.frame(items, out_direct) == len(items)
    assert queued_framer._frame_queued(items, out_queued) == len(items)
    assert answers == [True] * (len(items) + 1)
    assert len(out_direct) == len(out_queued) == 2 * len(items)
    assert out_direct == out_queued
    # And what was checked is what the session would have said: the message-ids run on.
    assert b"message-id:%s-%d\n" % (SESSION_ID.encode(), 2 * len(items)) in out_direct[-1]
    assert out_direct[2][0] == 0x80 | OP_BINARY and out_direct[3][0] == 0x80 | OP_TEXT
    assert direct_wire.take() == queued_wire.take() == b""


def test_frame_header_is_encode_frame_s():
    for size in (0, 1, 125, 126, 127, 65535, 65536, 70_000):
        payload = b"p" * size
        for first in (0x80 | OP_TEXT, 0x80 | OP_BINARY, OP_TEXT):
            assert frame_header(first, size) + payload == encode_frame(first & 0x0F, payload, fin=first >= 0x80)


def test_a_frame_the_session_queued_first_goes_first(broker):
    connection, wire, framer = open_connection(broker, "1.2", heart_beat="0,1000")
    answers = direct_spy(connection)
    first, second, third = events(broker)[:3]
    session = connection.session
    # A RECEIPT the reader's session queued, and not written yet (the reader's drain comes next).
    session.receive_data(b"BEGIN\ntransaction:t\nreceipt:r1\n\n\x00", now=connection._clock())
    out: list = []
    framer.frame([first], out)
    assert answers == [False]
    assert out[0] == encode_frame(OP_TEXT, b"RECEIPT\nreceipt-id:r1\n\n\x00")
    assert b"message-id:%s-1\n" % SESSION_ID.encode() in out[1] and len(out) == 2
    # A heart-beat (an EOL) the timer's session queued: before the next MESSAGE too.
    session.tick(connection._clock() + 60)
    out = []
    framer.frame([second], out)
    assert answers == [False, False]
    assert out[0] == encode_frame(OP_TEXT, b"\n")
    assert b"message-id:%s-2\n" % SESSION_ID.encode() in out[1] and len(out) == 2
    # Nothing queued: the direct way again, numbered on.
    out = []
    framer.frame([third], out)
    assert answers == [False, False, True]
    assert b"message-id:%s-3\n" % SESSION_ID.encode() in out[0] and len(out) == 1
    assert wire.take() == b""


def test_frames_interleave_in_the_order_they_were_made(broker):
    connection, wire, framer = open_connection(broker, "1.2")
    answers = direct_spy(connection)
    first, second = events(broker)[:2]
    out: list = []
    framer.frame([first], out)
    wire.write(out)  # as the fan-out round does
    connection.on_message(b"BEGIN\ntransaction:t\nreceipt:r1\n\n\x00")  # the reader's RECEIPT
    out = []
    framer.frame([second], out)
    wire.write(out)
    assert answers == [True, True]
    frames = wire.take()
    receipt = encode_frame(OP_TEXT, b"RECEIPT\nreceipt-id:r1\n\n\x00")
    one = frames.index(b"message-id:%s-1\n" % SESSION_ID.encode())
    two = frames.index(b"message-id:%s-2\n" % SESSION_ID.encode())
    assert one < frames.index(receipt) < two


def test_while_the_reader_writes_the_framer_goes_through_the_queue(broker):
    connection, wire, framer = open_connection(broker, "1.2")
    answers = direct_spy(connection)
    with connection._lock:  # the reader or the timer is acting and writing
        assert framer.room() == 0
        out: list = []
        framer.frame(events(broker)[:1], out)
    assert answers == []  # never asked
    assert b"message-id:%s-1\n" % SESSION_ID.encode() in out[0]


def test_client_acks_and_gaps_stay_with_the_session(broker):
    connection, wire, framer = open_connection(broker, "1.2", ack="client")
    answers = direct_spy(connection)
    out: list = []
    framer.frame(events(broker)[:1], out)
    assert answers == [False]  # kept for an ACK: the session writes it
    assert b"\nack:%s-1\n" % SESSION_ID.encode() in out[0]
    connection, wire, framer = open_connection(broker, "1.2")
    answers = direct_spy(connection)
    out = []
    framer.frame([Gap("a")], out)
    assert answers == []
    assert b"\ngap:true\n" in out[0]


def test_direct_messages_says_when_it_cannot():
    session = StompSession(now=0.0)
    assert session.direct_messages("0", 1, 0.0) is None  # not connected
    session.receive_data(b"CONNECT\naccept-version:1.2\nhost:h\n\n\x00", now=0.0)
    session.confirm(0.0)
    assert session.direct_messages("0", 1, 0.0) is None  # CONNECTED is still queued
    session.data_to_send()
    assert session.direct_messages("0", 1, 0.0) is None  # no such subscription
    session.receive_data(b"SUBSCRIBE\nid:0\ndestination:/topic/a\n\n\x00", now=0.0)
    session.confirm(0.0)
    before, after, first = session.direct_messages("0", 2, 0.0)
    assert (before, after, first) == (
        b"MESSAGE\nsubscription:0\nmessage-id:" + session.session_id.encode() + b"-",
        b"\ndestination:/topic/a\n",
        1,
    )
    assert session.deliver("0", b"x") == f"{session.session_id}-3"
