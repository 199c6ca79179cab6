"""WebSocket frames and messages (RFC 6455 sections 5 and 7) without a socket.

This module reads frames through a ``read(n)`` callable, joins fragments into
messages and encodes the server's frames. It never touches a socket, gevent or
gevent-websocket, so it can be tested with ``io.BytesIO(...).read``. Every way a
peer can break the protocol raises :class:`FrameError` carrying the close code to
send; :mod:`app.server.websocket` turns it into a Close frame in one place.

Two properties the I/O layer relies on:

* :func:`read_frame` checks the announced payload length against a limit *before*
  reading the payload, so a header announcing 100 MB costs 14 bytes, not 100 MB.
* Unmasking runs at native speed (``wsaccel`` when installed, else one big-integer
  XOR over the whole payload) and UTF-8 is checked by CPython's own decoder, once per
  frame and incrementally across fragments, so invalid text fails fast.
"""

from __future__ import annotations

import codecs
import struct
from typing import Callable, NamedTuple

try:  # Cython XOR, about 2 GB/s; gevent-websocket's per-byte Python loop does ~20 MB/s.
    from wsaccel.xormask import XorMaskerSimple as _XorMasker
except ImportError:  # pragma: no cover - wsaccel is pinned in requirements.txt
    _XorMasker = None

# Opcodes (RFC 6455 section 5.2).
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
"""The purpose of the connection is fulfilled."""
CLOSE_GOING_AWAY = 1001
"""The server is shutting down (or a browser left the page)."""
CLOSE_PROTOCOL_ERROR = 1002
"""The peer broke RFC 6455: bad opcode, unmasked frame, reserved bits, bad control frame."""
CLOSE_UNSUPPORTED_DATA = 1003
"""The peer sent a kind of data the endpoint cannot accept (e.g. binary where text is expected)."""
CLOSE_NO_STATUS = 1005
"""Never sent: what a Close frame without a status code is reported as."""
CLOSE_ABNORMAL = 1006
"""Never sent: what a connection lost without a Close frame is reported as."""
CLOSE_INVALID_DATA = 1007
"""A text message (or a close reason) that is not UTF-8."""
CLOSE_POLICY_VIOLATION = 1008
"""A message that breaks the application's policy, when no more specific code fits."""
CLOSE_MESSAGE_TOO_BIG = 1009
"""A frame or message larger than the configured limit."""
CLOSE_MANDATORY_EXTENSION = 1010
"""Sent by clients only: the server did not negotiate an extension the client needs."""
CLOSE_INTERNAL_ERROR = 1011
"""The server hit an unexpected condition (an application error, a dead keepalive)."""

MAX_CONTROL_PAYLOAD = 125  # RFC 6455 section 5.5: control frames carry at most 125 bytes.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

_DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# Codes a peer may put in a Close frame: the RFC's own (minus the reserved 1004-1006,
# 1015), IANA's 1012-1014, and the ranges for libraries (3000-3999) and applications
# (4000-4999). RFC 6455 section 7.4.
_RECEIVABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEADER16 = struct.Struct("!BBH")
_HEADER64 = struct.Struct("!BBQ")
_utf8_incremental = codecs.getincrementaldecoder("utf-8")


class FrameError(Exception):
    """The peer broke the protocol; the connection must be closed with ``code``.

    Attributes:
        code: the RFC 6455 close code to send (1002, 1007 or 1009).
        reason: a short explanation, sent as the Close frame's reason.
    """

    def __init__(self, code: int, reason: str):
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class ConnectionLost(Exception):
    """The byte stream ended (or broke) before a whole frame arrived."""


class Frame(NamedTuple):
    """One frame from the peer, unmasked."""

    opcode: int
    fin: bool
    payload: bytes


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    if not payload:
        return b""
    if _XorMasker is not None:
        return _XorMasker(mask).process(payload)
    return _unmask_stdlib(payload, mask)


def _unmask_stdlib(payload: bytes, mask: bytes) -> bytes:
    # One XOR of two big integers: linear and in C, about 20 times the per-byte loop.
    size = len(payload)
    repeated = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")


def read_frame(read: Callable[[int], bytes], max_payload: int) -> Frame:
    """Read one client frame through ``read``.

    Args:
        read: returns up to ``n`` bytes, fewer only at the end of the stream
            (``io.BufferedReader.read`` semantics).
        max_payload: the largest payload a *data* frame may carry now (the message
            limit minus what the current fragmented message already holds). Checked
            before the payload is read.

    Returns:
        The frame, with its payload unmasked.

    Raises:
        FrameError: the frame breaks RFC 6455 (code 1002) or is too big (code 1009).
        ConnectionLost: the stream ended before the frame was complete.
    """
    head = read(2)
    if len(head) != 2:
        raise ConnectionLost("end of stream before a frame header")
    first, second = head[0], head[1]
    fin = bool(first & 0x80)
    opcode = first & 0x0F
    if first & 0x70:
        # RFC 6455 5.2: RSV1-3 MUST be 0 unless an extension says otherwise; we negotiate none.
        raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
    if not second & 0x80:
        # RFC 6455 5.1: the server MUST close the connection on an unmasked client frame.
        raise FrameError(CLOSE_PROTOCOL_ERROR, "client frame is not masked")
    length = second & 0x7F

    if opcode in _CONTROL_OPCODES:
        # RFC 6455 5.5: control frames are never fragmented and carry at most 125 bytes.
        if not fin:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
        if length > MAX_CONTROL_PAYLOAD:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "control frame longer than 125 bytes")
        mask = _read_exactly(read, 4)
    elif opcode in _DATA_OPCODES:
        if length == 126:
            extended = _read_exactly(read, 6)
            length = _U16.unpack_from(extended)[0]
            mask = extended[2:]
        elif length == 127:
            extended = _read_exactly(read, 12)
            length = _U64.unpack_from(extended)[0]
            if length >> 63:
                # RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0.
                raise FrameError(CLOSE_PROTOCOL_ERROR, "payload length has its top bit set")
            mask = extended[8:]
        else:
            mask = _read_exactly(read, 4)
        if length > max_payload:
            # Refuse before reading: the announced length alone is enough to say no.
            raise FrameError(CLOSE_MESSAGE_TOO_BIG, "message too big")
    else:
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")

    if not length:
        return Frame(opcode, fin, b"")
    return Frame(opcode, fin, unmask(_read_exactly(read, length), mask))


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    data = read(size)
    if len(data) != size:
        raise ConnectionLost(f"end of stream: {len(data)} of {size} bytes")
    return data


class MessageAssembler:
    """Joins data frames into messages (RFC 6455 5.4) and checks that text is UTF-8 (8.1).

    Feed every data frame to :meth:`feed`; pass :attr:`room` as ``max_payload`` to
    :func:`read_frame` so a fragmented message cannot outgrow ``max_size`` either.
    """

    __slots__ = ("max_size", "_opcode", "_size", "_parts", "_decoder")

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._opcode: int | None = None
        self._size = 0
        self._parts: list = []
        self._decoder: codecs.BufferedIncrementalDecoder | None = None

    @property
    def room(self) -> int:
        """How many payload bytes the next data frame may carry."""
        return self.max_size - self._size

    def feed(self, frame: Frame) -> str | bytes | None:
        """Take one data frame.

        Returns:
            The whole message (``str`` for text, ``bytes`` for binary) when ``frame``
            completes one, else ``None``.

        Raises:
            FrameError: a continuation without a start, a new message inside a
                fragmented one (1002), text that is not UTF-8 (1007), or a message
                larger than ``max_size`` (1009).
        """
        opcode, fin, payload = frame
        if len(payload) > self.room:
            raise FrameError(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
            return self._continue(fin, payload)
        if self._opcode is not None:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "new message started inside a fragmented one")
        if fin:  # The common case: a whole message in one frame.
            if opcode == OP_TEXT:
                try:
                    return payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
            return payload
        self._opcode = opcode
        self._size = 0
        self._parts = []
        self._decoder = _utf8_incremental() if opcode == OP_TEXT else None
        return self._continue(False, payload)

    def _continue(self, fin: bool, payload: bytes) -> str | bytes | None:
        self._size += len(payload)
        decoder = self._decoder
        if decoder is not None:
            try:
                # Incremental: a code point split across frames waits for its tail,
                # a byte that can never be UTF-8 fails now (fail fast, RFC 6455 8.1).
                text = decoder.decode(payload, fin)
            except UnicodeDecodeError:
                self._reset()
                raise FrameError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
            if text:
                self._parts.append(text)
        elif payload:
            self._parts.append(payload)
        if not fin:
            return None
        message = ("" if decoder is not None else b"").join(self._parts)
        self._reset()
        return message

    def _reset(self) -> None:
        self._opcode = None
        self._size = 0
        self._parts = []
        self._decoder = None


def parse_close(payload: bytes) -> tuple[int, str]:
    """The status code and reason of a peer's Close frame (RFC 6455 5.5.1, 7.4).

    Returns:
        ``(code, reason)``; ``(1005, "")`` for an empty payload.

    Raises:
        FrameError: a 1-byte payload or a code a peer may not send (1002), or a
            reason that is not UTF-8 (1007).
    """
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _U16.unpack_from(payload)[0]
    if code not in _RECEIVABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
    return code, reason


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a Close frame we send: the code, then a reason cut to fit 125 bytes.

    ``code=None`` gives an empty payload (the answer to a Close frame that had none).
    """
    if code is None:
        return b""
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON:
        # Cut on a character boundary: a reason cut inside a code point would make
        # the peer fail the connection with 1007.
        encoded = encoded[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + encoded


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame: never masked (RFC 6455 5.1), no extension bits."""
    return frame_header((0x80 if fin else 0) | opcode, len(payload)) + payload


def frame_header(first: int, size: int) -> bytes:
    """The header of a server frame whose first byte is ``first`` (FIN and opcode) and whose
    payload has ``size`` bytes, for a caller that builds the payload in pieces."""
    if size < 126:
        return bytes((first, size))
    if size <= 0xFFFF:
        return _HEADER16.pack(first, 126, size)
    return _HEADER64.pack(first, 127, size)


def mask_frame(opcode: int, payload: bytes, mask: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A *client* frame (masked), for tests and benchmarks that play the client.

    ``rsv`` is OR-ed into the first byte (0x70 covers RSV1-3), to build bad frames.
    """
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size <= 0xFFFF:
        header = bytes((first, 0x80 | 126)) + _U16.pack(size)
    else:
        header = bytes((first, 0x80 | 127)) + _U64.pack(size)
    return header + mask + unmask(payload, mask)
