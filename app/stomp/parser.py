"""Bytes in, STOMP frames and heart-beats out, within fixed size limits.

:class:`FrameParser` is fed whatever the transport received (one WebSocket
message may carry several frames, and one frame may span several messages) and
hands back complete items one at a time::

    parser = FrameParser(Limits())
    parser.feed(data)
    while (item := parser.next_item()) is not None:
        ...  # a Frame, or HEARTBEAT for a run of bare EOLs

Items are parsed lazily, one per :meth:`FrameParser.next_item` call, so a caller
can change :attr:`FrameParser.version` between two frames: the session does so
right after CONNECT, and the frames that follow are unescaped by the new rules.

Memory stays bounded: a partial frame is never held beyond
:attr:`Limits.max_frame_bytes` (plus the last chunk fed), a header line beyond
:attr:`Limits.max_header_line`; each excess raises :class:`LimitExceeded` as
soon as it is known. Searches resume where the previous one stopped, so feeding
a frame one byte at a time costs linear time.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import BadContentLength, BadEscape, FrameError, LimitExceeded, StompError
from .frames import HEARTBEAT, Frame, Heartbeat, escapes_headers, unescape_header

__all__ = ["FrameParser", "Limits"]

_LF = 0x0A
_NUL = 0x00

# STOMP 1.2, "STOMP Frames": "The NULL octet can be optionally followed by
# multiple EOLs", and "Heart-beating": a heart-beat is one EOL. EOL = [CR] LF.
_EOL_RUN = re.compile(rb"(?:\r?\n)+")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Limits:
    """Size limits on inbound frames (STOMP 1.2, "Size Limits").

    Attributes:
        max_frame_bytes: the largest frame, from the first octet of the command
            to the NUL, headers and body included. The default leaves a 1 MiB
            body 64 KiB of room for its command and headers.
        max_headers: the most header lines one frame may have.
        max_header_line: the longest command or header line, in octets, EOL
            excluded.
    """

    max_frame_bytes: int = 1024 * 1024 + 64 * 1024
    max_headers: int = 64
    max_header_line: int = 8 * 1024

    def __post_init__(self) -> None:
        """Reject limits that would make every frame invalid.

        Raises:
            ValueError: a limit is not a positive integer.
        """
        for name in ("max_frame_bytes", "max_headers", "max_header_line"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive integer, not {value!r}")


class _Phase(enum.Enum):
    IDLE = "idle"  # between frames: bare EOLs (heart-beats), then a command line
    HEADERS = "headers"  # header lines until the blank line
    BODY = "body"  # the body, up to content-length octets or the first NUL


class FrameParser:
    """Incremental STOMP frame parser, sans-I/O.

    Header escaping follows :attr:`version`: ``None`` (before CONNECT) and
    ``"1.0"`` leave headers as they are; ``"1.1"`` and ``"1.2"`` decode ``\\r``,
    ``\\n``, ``\\c`` and ``\\\\`` in every frame except CONNECT, STOMP and
    CONNECTED (STOMP 1.2, "Value Encoding"). An EOL is LF or CR LF in every
    version. A header line splits at its first ':', so an unescaped ':' in a
    value is kept as part of the value.

    Once :meth:`next_item` has raised, the parser is broken: every later call
    raises the same error.

    Attributes:
        limits: the :class:`Limits` enforced.
        version: the negotiated STOMP version, or ``None``; the session sets it.
    """

    def __init__(self, limits: Limits | None = None, version: str | None = None) -> None:
        """Create a parser with an empty buffer.

        Args:
            limits: the size limits; ``Limits()`` when omitted.
            version: the STOMP version whose escaping rules apply, or ``None``.
        """
        self.limits = limits if limits is not None else Limits()
        self.version = version
        self._buf = bytearray()
        self._pos = 0  # first octet not yet consumed
        self._scan = 0  # where the pending search for LF or NUL resumes
        self._phase = _Phase.IDLE
        self._command = ""
        self._headers: list[tuple[str, str]] = []
        self._content_length: int | None = None
        self._frame_bytes = 0  # octets of the current frame consumed so far
        self._error: StompError | None = None

    @property
    def buffered(self) -> int:
        """Number of octets received that are not yet part of a returned item."""
        return self._frame_bytes + len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes; call :meth:`next_item` until it returns ``None``.

        Call :meth:`next_item` after every feed: the limits are checked there, so
        feeding repeatedly without draining would let the buffer grow.

        Args:
            data: the bytes received, in any chunking (empty is allowed).

        Raises:
            StompError: the parser already failed; it is the earlier error.
        """
        if self._error is not None:
            raise self._error
        self._compact()
        self._buf += data

    def next_item(self) -> Frame | Heartbeat | None:
        """Parse and return the next complete item, if the buffer holds one.

        Returns:
            A :class:`~app.stomp.frames.Frame`; :data:`~app.stomp.frames.HEARTBEAT`
            for a run of bare EOLs between frames; or ``None`` when more bytes
            are needed (a partial frame stays buffered).

        Raises:
            FrameError: malformed bytes: a header line without ':', a command or
                header that is not UTF-8, an empty header name.
            BadEscape: an undefined escape sequence in a 1.1/1.2 header.
            BadContentLength: ``content-length`` is not a decimal number, or the
                octet after the announced body is not NUL.
            LimitExceeded: a frame, header line or header count over its limit.
        """
        if self._error is not None:
            raise self._error
        try:
            item = self._next()
        except StompError as err:
            self._error = err
            raise
        if item is None:
            self._compact()
        return item

    def __iter__(self) -> Iterator[Frame | Heartbeat]:
        """Yield every complete item now buffered (see :meth:`next_item`)."""
        while (item := self.next_item()) is not None:
            yield item

    # --- internals ----------------------------------------------------------------

    def _compact(self) -> None:
        # Drop consumed octets; done only between calls so that draining many small
        # frames from one chunk does not move the rest of the buffer each time.
        if self._pos:
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0

    def _next(self) -> Frame | Heartbeat | None:
        while True:
            if self._phase is _Phase.IDLE:
                eols = _EOL_RUN.match(self._buf, self._pos)
                if eols is not None:
                    self._pos = self._scan = eols.end()
                    return HEARTBEAT
                line = self._read_line()
                if line is None:
                    return None
                self._command = self._decode(line, "command")
                self._headers = []
                self._content_length = None
                self._phase = _Phase.HEADERS
            elif self._phase is _Phase.HEADERS:
                if self._pos < len(self._buf) and self._buf[self._pos] == _NUL:
                    # The spec's own DISCONNECT and RECEIPT examples end their
                    # headers with NUL and no blank line: accept that as an
                    # empty body rather than reject the spec's bytes.
                    self._start_body()
                    if self._content_length:
                        raise BadContentLength(
                            "frame not terminated after content-length",
                            f"Expected {self._content_length} body octets, found NUL.",
                        )
                    self._pos += 1
                    self._frame_bytes += 1
                    return self._finish(b"")
                line = self._read_line()
                if line is None:
                    self._check_frame_size(len(self._buf) - self._pos)
                    return None
                if not line:
                    self._start_body()
                    self._phase = _Phase.BODY
                elif len(self._headers) >= self.limits.max_headers:
                    raise LimitExceeded(
                        "too many headers",
                        f"A frame may have at most {self.limits.max_headers} headers.",
                    )
                else:
                    self._headers.append(self._parse_header(line))
            else:
                return self._read_body()

    def _read_line(self) -> bytes | None:
        # One line without its EOL, or None when no LF is buffered yet.
        limit = self.limits.max_header_line
        end = self._buf.find(b"\n", self._scan)
        if end < 0:
            self._scan = len(self._buf)
            if len(self._buf) - self._pos > limit + 1:  # + 1: a CR that may turn out to be EOL
                raise LimitExceeded("header line too long", f"Lines are limited to {limit} octets.")
            return None
        line = bytes(self._buf[self._pos : end])
        self._frame_bytes += end + 1 - self._pos
        self._pos = self._scan = end + 1
        if line.endswith(b"\r"):  # STOMP 1.2: EOL = [CR] LF
            line = line[:-1]
        if len(line) > limit:
            raise LimitExceeded("header line too long", f"Lines are limited to {limit} octets.")
        return line

    def _decode(self, raw: bytes, what: str) -> str:
        # STOMP 1.2, "Value Encoding": commands and headers are UTF-8.
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(f"{what} is not UTF-8", f"Invalid octets: {raw[:64]!r}") from None

    def _parse_header(self, line: bytes) -> tuple[str, str]:
        colon = line.find(b":")
        if colon < 0:
            raise FrameError("header line without ':'", f"Line: {line[:64]!r}")
        name = self._decode(line[:colon], "header name")
        value = self._decode(line[colon + 1 :], "header value")
        if escapes_headers(self._command, self.version):
            try:
                name = unescape_header(name)
                value = unescape_header(value)
            except ValueError as exc:
                # STOMP 1.2: undefined escapes "MUST be treated as a fatal protocol error".
                raise BadEscape("undefined escape sequence in header", str(exc)) from None
        if not name:
            raise FrameError("empty header name", f"Line: {line[:64]!r}")
        return name, value

    def _start_body(self) -> None:
        # STOMP 1.2, "Repeated Header Entries": the first content-length wins.
        raw = next((v for k, v in self._headers if k == "content-length"), None)
        if raw is not None:
            if not _DIGITS.fullmatch(raw):
                raise BadContentLength(
                    "invalid content-length",
                    f"content-length must be a decimal octet count, not {raw[:32]!r}.",
                )
            self._content_length = int(raw)
            # Refuse now rather than buffer a body that can never be accepted.
            self._check_frame_size(self._content_length + 1)
        self._scan = self._pos

    def _read_body(self) -> Frame | None:
        start = self._pos
        if self._content_length is not None:
            # STOMP 1.2, "Header content-length": this many octets MUST be read,
            # NUL or not, and the frame is still terminated by a NUL.
            end = start + self._content_length
            if len(self._buf) <= end:
                return None
            if self._buf[end] != _NUL:
                raise BadContentLength(
                    "frame not terminated after content-length",
                    f"Expected NUL after {self._content_length} body octets.",
                )
        else:
            end = self._buf.find(b"\x00", self._scan)
            if end < 0:
                self._scan = len(self._buf)
                self._check_frame_size(len(self._buf) - self._pos + 1)
                return None
            self._check_frame_size(end - start + 1)
        body = bytes(self._buf[start:end])
        self._pos = end + 1
        self._frame_bytes += end + 1 - start
        return self._finish(body)

    def _finish(self, body: bytes) -> Frame:
        frame = Frame(self._command, tuple(self._headers), body)
        self._phase = _Phase.IDLE
        self._scan = self._pos
        self._headers = []
        self._frame_bytes = 0
        return frame

    def _check_frame_size(self, pending: int) -> None:
        # pending: octets of the current frame beyond those consumed so far.
        limit = self.limits.max_frame_bytes
        if self._frame_bytes + pending > limit:
            raise LimitExceeded("frame too large", f"Frames are limited to {limit} octets.")
