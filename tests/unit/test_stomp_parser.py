"""Tests for app.stomp.parser and app.stomp.frames: spec bytes in, frames out.

Every spec example is fed whole, one byte at a time and followed by trailing data
(the start of the next frame, which must stay buffered), as h11's test_io does.
Property tests then check that arbitrary bytes yield frames, heart-beats or the
documented StompError, and that serialize() and the parser agree.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.stomp import (
    HEARTBEAT,
    BadContentLength,
    BadEscape,
    Frame,
    FrameError,
    FrameParser,
    LimitExceeded,
    Limits,
    StompError,
    escape_header,
    escapes_headers,
    header_representable,
    serialize,
    unescape_header,
)

TRAILING = b"SEND\nx:y"  # the start of a next frame, short enough for every limit below


def _coalesce(items):
    # A run of EOLs is one HEARTBEAT when fed at once, several when split up.
    out = []
    for item in items:
        if item == HEARTBEAT and out and out[-1] == HEARTBEAT:
            continue
        out.append(item)
    return out


def parse_chunks(chunks, version=None, limits=None):
    """Feed chunks in order, draining after each; return (items, parser)."""
    parser = FrameParser(limits, version=version)
    items = []
    for chunk in chunks:
        parser.feed(chunk)
        items.extend(parser)
    return _coalesce(items), parser


def parsed_every_way(data, version=None, limits=None):
    """The items ``data`` parses to, after checking that whole, byte by byte and with
    trailing data all agree (h11's helper: a partial frame waits for more bytes)."""
    whole, parser = parse_chunks([data], version, limits)
    assert parser.buffered == 0
    by_byte, parser = parse_chunks([data[i : i + 1] for i in range(len(data))], version, limits)
    assert by_byte == whole and parser.buffered == 0
    trailing, parser = parse_chunks([data + TRAILING], version, limits)
    assert trailing == whole
    assert parser.buffered == len(TRAILING)  # a partial frame waits for more bytes
    return whole


def check_error(data, error, version=None, limits=None):
    """Assert ``data`` raises ``error`` whole and byte by byte."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        with pytest.raises(error):
            parse_chunks(chunks, version, limits)


def F(command, *headers, body=b""):
    return Frame(command, tuple(headers), body)


class TestSpecExamples:
    """The example frames of the STOMP 1.2 specification, byte for byte."""

    def test_connect(self):
        assert parsed_every_way(b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\x00") == [
            F("CONNECT", ("accept-version", "1.2"), ("host", "stomp.github.org"))
        ]

    def test_connected(self):
        assert parsed_every_way(b"CONNECTED\nversion:1.2\n\n\x00") == [F("CONNECTED", ("version", "1.2"))]

    def test_send_body_keeps_its_newline(self):
        assert parsed_every_way(
            b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\x00", version="1.2"
        ) == [F("SEND", ("destination", "/queue/a"), ("content-type", "text/plain"), body=b"hello queue a\n")]

    def test_subscribe(self):
        assert parsed_every_way(b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\x00", version="1.2") == [
            F("SUBSCRIBE", ("id", "0"), ("destination", "/queue/foo"), ("ack", "client"))
        ]

    def test_ack(self):
        assert parsed_every_way(b"ACK\nid:12345\ntransaction:tx1\n\n\x00", version="1.2") == [
            F("ACK", ("id", "12345"), ("transaction", "tx1"))
        ]

    def test_repeated_header_first_wins(self):
        data = b"MESSAGE\nfoo:World\nfoo:Hello\n\n\x00"
        assert parsed_every_way(data, version="1.2") == [F("MESSAGE", ("foo", "World"), ("foo", "Hello"))]
        (frame,), _ = parse_chunks([data], "1.2")
        assert frame.get("foo") == "World"
        assert frame.header_map() == {"foo": "World"}

    def test_disconnect_as_printed_without_blank_line(self):
        # The spec prints DISCONNECT and RECEIPT with NUL right after the headers.
        assert parsed_every_way(b"DISCONNECT\nreceipt:77\n\x00\n", "1.2") == [
            F("DISCONNECT", ("receipt", "77")),
            HEARTBEAT,
        ]
        assert parsed_every_way(b"RECEIPT\nreceipt-id:77\n\x00", "1.2") == [F("RECEIPT", ("receipt-id", "77"))]

    def test_error_with_content_length_and_unpadded_header(self):
        body = (
            b"The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\n"
            b"Hello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\n"
            b"for message propagation.\n"
        )
        # The spec announces 171 octets for these 170; the count here is the real one.
        data = (
            b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:170\n"
            b"message: malformed frame received\n\n" + body + b"\x00"
        )
        expected = F(
            "ERROR",
            ("receipt-id", "message-12345"),
            ("content-type", "text/plain"),
            ("content-length", "170"),
            ("message", " malformed frame received"),  # STOMP 1.2: never trim or pad
            body=body,
        )
        assert parsed_every_way(data, version="1.2") == [expected]

    def test_protocol_negotiation_error(self):
        assert parsed_every_way(
            b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\nSupported protocol versions are 1.2 2.1\x00",
            version="1.2",
        ) == [
            F(
                "ERROR",
                ("version", "1.2,2.1"),
                ("content-type", "text/plain"),
                body=b"Supported protocol versions are 1.2 2.1",
            )
        ]


class TestFraming:
    def test_crlf_line_endings(self):
        assert parsed_every_way(
            b"SEND\r\ndestination:/a\r\ncontent-type:text/plain\r\n\r\nbody\x00\r\n", version="1.2"
        ) == [F("SEND", ("destination", "/a"), ("content-type", "text/plain"), body=b"body"), HEARTBEAT]

    def test_content_length_body_may_hold_nul(self):
        assert parsed_every_way(b"SEND\ndestination:/a\ncontent-length:5\n\na\x00b\x00c\x00") == [
            F("SEND", ("destination", "/a"), ("content-length", "5"), body=b"a\x00b\x00c")
        ]

    def test_content_length_zero(self):
        assert parsed_every_way(b"SEND\ncontent-length:0\n\n\x00") == [F("SEND", ("content-length", "0"))]

    def test_first_content_length_wins(self):
        assert parsed_every_way(b"SEND\ncontent-length:3\ncontent-length:10\n\nabc\x00") == [
            F("SEND", ("content-length", "3"), ("content-length", "10"), body=b"abc")
        ]

    def test_without_content_length_the_first_nul_ends_the_body(self):
        assert parsed_every_way(b"SEND\n\nab\x00") == [F("SEND", body=b"ab")]
        items, parser = parse_chunks([b"SEND\n\nab\x00cd\x00"])
        assert items == [F("SEND", body=b"ab")]
        assert parser.buffered == 3  # "cd\x00" is the start of a command line

    def test_heart_beats_between_frames(self):
        assert parsed_every_way(b"\n\r\n\nSEND\n\nx\x00\n\nSEND\n\ny\x00\r\n") == [
            HEARTBEAT,
            F("SEND", body=b"x"),
            HEARTBEAT,
            F("SEND", body=b"y"),
            HEARTBEAT,
        ]

    def test_several_frames_in_one_chunk(self):
        data = b"".join(serialize(F("SEND", ("n", str(i)), body=b"%d" % i), "1.2") for i in range(50))
        items, _ = parse_chunks([data], "1.2")
        assert [f.body for f in items] == [b"%d" % i for i in range(50)]

    def test_partial_frame_waits(self):
        parser = FrameParser()
        parser.feed(b"SEND\ndestination:/a\ncontent-length:3\n\nab")
        assert parser.next_item() is None
        assert parser.buffered > 0
        parser.feed(b"c")
        assert parser.next_item() is None  # the NUL is still missing
        parser.feed(b"\x00")
        assert parser.next_item() == F("SEND", ("destination", "/a"), ("content-length", "3"), body=b"abc")
        assert parser.next_item() is None

    def test_lone_cr_waits_for_its_lf(self):
        parser = FrameParser()
        parser.feed(b"\r")
        assert parser.next_item() is None
        parser.feed(b"\n")
        assert parser.next_item() == HEARTBEAT

    def test_colon_in_value_is_kept(self):
        # Only the first ':' separates name and value (1.0 and CONNECT allow ':' in values).
        assert parsed_every_way(b"CONNECT\nlogin:a:b\n\n\x00") == [F("CONNECT", ("login", "a:b"))]
        assert parsed_every_way(b"SEND\ndestination:/a:b\n\n\x00", version="1.2") == [
            F("SEND", ("destination", "/a:b"))
        ]

    def test_unknown_command_is_left_to_the_session(self):
        assert parsed_every_way(b"FOO\n\n\x00") == [F("FOO")]

    @pytest.mark.parametrize(
        "data",
        [
            b"SEND\nno-colon-here\n\n\x00",
            b"SEND\n:empty-name\n\n\x00",
            b"SEND\nname:\xff\xfe\n\n\x00",
            b"\xc3\x28\n\n\x00",
        ],
    )
    def test_malformed(self, data):
        check_error(data, FrameError)

    @pytest.mark.parametrize(
        "header", [b"content-length:abc", b"content-length:-1", b"content-length: 3", b"content-length:3 "]
    )
    def test_invalid_content_length(self, header):
        check_error(b"SEND\n" + header + b"\n\nabc\x00", BadContentLength)

    def test_content_length_without_nul_after_body(self):
        check_error(b"SEND\ncontent-length:2\n\nabc\x00", BadContentLength)

    def test_nul_instead_of_blank_line_cannot_skip_an_announced_body(self):
        assert parsed_every_way(b"SEND\ncontent-length:0\n\x00") == [F("SEND", ("content-length", "0"))]
        check_error(b"SEND\ncontent-length:2\n\x00ab\x00", BadContentLength)

    def test_parser_stays_broken_after_an_error(self):
        parser = FrameParser()
        parser.feed(b"SEND\nbad\n\n\x00")
        with pytest.raises(FrameError) as first:
            parser.next_item()
        with pytest.raises(FrameError) as again:
            parser.feed(b"SEND\n\n\x00")
        assert again.value is first.value


class TestEscaping:
    def test_all_escapes_in_1_2(self):
        assert parsed_every_way(b"SEND\ndestination:/a\\c\\n\\r\\\\b\nna\\cme:v\n\n\x00", version="1.2") == [
            F("SEND", ("destination", "/a:\n\r\\b"), ("na:me", "v"))
        ]

    def test_escapes_in_1_1(self):
        assert parsed_every_way(b"SEND\nx:a\\nb\\cc\\\\d\n\n\x00", version="1.1") == [F("SEND", ("x", "a\nb:c\\d"))]

    @pytest.mark.parametrize("value", [b"a\\tb", b"a\\", b"\\x", b"a\\C"])
    def test_undefined_escape_is_fatal(self, value):
        check_error(b"SEND\nx:" + value + b"\n\n\x00", BadEscape, version="1.2")

    def test_undefined_escape_in_name_is_fatal(self):
        check_error(b"SEND\na\\tb:x\n\n\x00", BadEscape, version="1.1")

    @pytest.mark.parametrize("command", [b"CONNECT", b"STOMP", b"CONNECTED"])
    def test_connect_frames_are_not_unescaped(self, command):
        assert parsed_every_way(command + b"\npasscode:a\\tb\\c\n\n\x00", version="1.2") == [
            F(command.decode(), ("passcode", "a\\tb\\c"))
        ]

    @pytest.mark.parametrize("version", [None, "1.0"])
    def test_no_escaping_in_1_0_or_before_negotiation(self, version):
        assert parsed_every_way(b"SEND\nx:a\\tb\\c\\\n\n\x00", version=version) == [F("SEND", ("x", "a\\tb\\c\\"))]

    def test_version_switch_applies_to_the_next_frame(self):
        parser = FrameParser()
        parser.feed(b"SEND\nx:a\\c\n\n\x00SEND\nx:a\\c\n\n\x00")
        assert parser.next_item().get("x") == "a\\c"
        parser.version = "1.2"
        assert parser.next_item().get("x") == "a:"

    def test_escape_helpers(self):
        assert escape_header("a:b\nc\rd\\e") == "a\\cb\\nc\\rd\\\\e"
        assert unescape_header("a\\cb\\nc\\rd\\\\e") == "a:b\nc\rd\\e"
        assert unescape_header("\\\\n") == "\\n"  # escaped backslash, then a plain n
        with pytest.raises(ValueError):
            unescape_header("\\t")
        assert escapes_headers("SEND", "1.2") and escapes_headers("MESSAGE", "1.1")
        assert not escapes_headers("CONNECTED", "1.2")
        assert not escapes_headers("SEND", "1.0") and not escapes_headers("SEND", None)


class TestLimits:
    def test_header_count(self):
        limits = Limits(max_headers=2)
        assert parsed_every_way(b"SEND\na:1\nb:2\n\n\x00", limits=limits) == [F("SEND", ("a", "1"), ("b", "2"))]
        check_error(b"SEND\na:1\nb:2\nc:3\n\n\x00", LimitExceeded, limits=limits)

    def test_header_line_length(self):
        limits = Limits(max_header_line=10)
        assert parsed_every_way(b"SEND\nabcd:12345\r\n\n\x00", limits=limits) == [F("SEND", ("abcd", "12345"))]
        check_error(b"SEND\nabcd:123456\n\n\x00", LimitExceeded, limits=limits)
        check_error(b"COMMANDLONG\n\n\x00", LimitExceeded, limits=limits)

    def test_long_line_fails_before_its_end_arrives(self):
        parser = FrameParser(Limits(max_header_line=100))
        parser.feed(b"SEND\nx:" + b"y" * 99)
        assert parser.next_item() is None
        parser.feed(b"y" * 10)
        with pytest.raises(LimitExceeded):
            parser.next_item()

    def test_frame_size(self):
        limits = Limits(max_frame_bytes=30)
        ok = b"SEND\n\n" + b"x" * 23 + b"\x00"  # exactly 30 octets
        assert parsed_every_way(ok, limits=limits) == [F("SEND", body=b"x" * 23)]
        check_error(b"SEND\n\n" + b"x" * 24 + b"\x00", LimitExceeded, limits=limits)

    def test_announced_content_length_over_limit_fails_at_once(self):
        parser = FrameParser(Limits(max_frame_bytes=1000))
        parser.feed(b"SEND\ncontent-length:5000\n\n")
        with pytest.raises(LimitExceeded):
            parser.next_item()

    def test_unterminated_body_is_never_buffered_beyond_the_limit(self):
        limit, chunk = 64 * 1024, b"x" * 4096
        parser = FrameParser(Limits(max_frame_bytes=limit))
        parser.feed(b"SEND\ndestination:/a\n\n")
        with pytest.raises(LimitExceeded):
            for _ in range(10 * limit // len(chunk)):
                parser.feed(chunk)
                assert parser.next_item() is None
                assert parser.buffered <= limit + len(chunk)

    def test_byte_by_byte_large_frame_is_linear(self):
        # 200 KB one octet at a time must not rescan the buffer on every feed.
        body = b"x" * 200_000
        parser = FrameParser()
        data = b"SEND\n\n" + body + b"\x00"
        items = []
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
            items.extend(parser)
        assert items == [F("SEND", body=body)]

    def test_limits_must_be_positive(self):
        with pytest.raises(ValueError):
            Limits(max_headers=0)


class TestFrameAndSerialize:
    def test_get_default_and_contains(self):
        frame = Frame.build("SEND", [("a", "1"), ("a", "2")])
        assert frame.get("a") == "1"
        assert frame.get("b") is None and frame.get("b", "x") == "x"
        assert "a" in frame and "b" not in frame

    def test_build_from_mapping(self):
        assert Frame.build("SEND", {"a": "1", "b": "2"}, b"x") == F("SEND", ("a", "1"), ("b", "2"), body=b"x")

    def test_serialize_adds_real_content_length(self):
        frame = F("MESSAGE", ("content-length", "99"), ("a", "b"), body=b"a\x00b")
        assert serialize(frame, "1.2") == b"MESSAGE\na:b\ncontent-length:3\n\na\x00b\x00"

    def test_serialize_bodyless_frame(self):
        assert serialize(F("RECEIPT", ("receipt-id", "77")), "1.2") == b"RECEIPT\nreceipt-id:77\n\n\x00"

    def test_serialize_escapes_per_version_and_command(self):
        frame = F("MESSAGE", ("k:1", "a:b\nc"))
        assert serialize(frame, "1.2").startswith(b"MESSAGE\nk\\c1:a\\cb\\nc\n")
        with pytest.raises(ValueError):
            serialize(frame, "1.0")  # ':' in a name and LF in a value cannot be sent unescaped
        assert serialize(F("CONNECTED", ("server", "a:b")), "1.2").startswith(b"CONNECTED\nserver:a:b\n")

    @pytest.mark.parametrize("command", ["", "SE\nND", "A\x00"])
    def test_serialize_rejects_bad_commands(self, command):
        with pytest.raises(ValueError):
            serialize(F(command), "1.2")

    def test_representable(self):
        assert header_representable("a", "b:c", escaped=False)
        assert not header_representable("a:b", "c", escaped=False)
        assert not header_representable("a", "b\r", escaped=False)
        assert header_representable("a", "b\r\n", escaped=True)
        assert not header_representable("", "x", escaped=True)
        assert not header_representable("\x00a", "x", escaped=True)


# --- properties --------------------------------------------------------------------

VERSIONS = st.sampled_from([None, "1.0", "1.1", "1.2"])
SMALL_LIMITS = Limits(max_frame_bytes=400, max_headers=6, max_header_line=60)
SPECIAL = st.sampled_from([":", "\n", "\r", "\\", "\x00", " ", "c", "n", "r", "é", "€"])
CHARS = st.characters(blacklist_categories=("Cs",))  # lone surrogates are not UTF-8
TEXT = st.text(alphabet=st.one_of(SPECIAL, CHARS), max_size=12)
COMMANDS = st.one_of(
    st.sampled_from(["SEND", "MESSAGE", "ERROR", "CONNECT", "CONNECTED", "STOMP", "SUBSCRIBE", "ACK"]),
    st.text(CHARS.filter(lambda c: c not in "\r\n\x00"), min_size=1, max_size=10),
)


def _chunked(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def frame_like_bytes(draw):
    """Mostly-valid STOMP streams with random damage, to reach deep parser states."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        parts.append(draw(st.sampled_from([b"", b"\n", b"\r\n", b"\r"])))
        parts.append(draw(st.sampled_from([b"SEND", b"CONNECT", b"MESSAGE", b"X", b""])))
        parts.append(draw(st.sampled_from([b"\n", b"\r\n"])))
        for _ in range(draw(st.integers(0, 4))):
            parts.append(draw(st.binary(max_size=8)) + b":" + draw(st.binary(max_size=8)))
            parts.append(draw(st.sampled_from([b"\n", b"\r\n", b"\\c\n", b"\\t\n"])))
        if draw(st.booleans()):
            parts.append(b"content-length:" + str(draw(st.integers(0, 12))).encode() + b"\n")
        parts.append(draw(st.sampled_from([b"\n", b"\r\n", b""])))
        parts.append(draw(st.binary(max_size=12)))
        parts.append(draw(st.sampled_from([b"\x00", b"", b"\x00\n"])))
    return b"".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(st.binary(max_size=300), frame_like_bytes()),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
    version=VERSIONS,
)
def test_any_bytes_yield_frames_heartbeats_or_the_documented_error(data, cuts, version):
    parser = FrameParser(SMALL_LIMITS, version=version)
    try:
        for chunk in _chunked(data, cuts):
            parser.feed(chunk)
            for item in parser:
                assert item == HEARTBEAT or isinstance(item, Frame)
                assert parser.buffered <= SMALL_LIMITS.max_frame_bytes + len(data)
    except StompError as err:
        assert err.kind and err.message
        assert err.to_frame().command == "ERROR"


@st.composite
def frames_and_version(draw):
    version = draw(VERSIONS)
    command = draw(COMMANDS)
    escaped = escapes_headers(command, version)
    header = st.tuples(TEXT.filter(bool), TEXT).filter(
        lambda h: h[0] != "content-length" and header_representable(h[0], h[1], escaped)
    )
    headers = tuple(draw(st.lists(header, max_size=6)))
    body = draw(st.binary(max_size=40) | st.sampled_from([b"\x00", b"a\x00b", b"\n\x00\n"]))
    return Frame(command, headers, body), version


@settings(max_examples=300, deadline=None)
@given(frame_version=frames_and_version(), cuts=st.lists(st.integers(0, 1000), max_size=5))
def test_serialize_then_parse_round_trips(frame_version, cuts):
    frame, version = frame_version
    wire = serialize(frame, version)
    items, parser = parse_chunks(_chunked(wire + b"\r\n", cuts), version)
    assert items[-1] == HEARTBEAT
    (parsed,) = items[:-1]
    assert parsed.command == frame.command
    assert parsed.body == frame.body
    assert [h for h in parsed.headers if h[0] != "content-length"] == list(frame.headers)
    if frame.body:
        assert parsed.get("content-length") == str(len(frame.body))
    assert parser.buffered == 0
