"""STOMP frames, header escaping and serialisation (STOMP 1.0, 1.1 and 1.2).

A frame on the wire (STOMP 1.2, "STOMP Frames" and "Augmented BNF")::

    COMMAND EOL
    *( header-name ":" header-value EOL )
    EOL
    *OCTET
    NULL
    *( EOL )

where ``EOL = [CR] LF``. This module holds the in-memory :class:`Frame`, the
header value encoding rules and :func:`serialize`; reading frames from bytes
is :mod:`app.stomp.parser`'s job. Nothing here touches a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import overload

__all__ = [
    "BODY_COMMANDS",
    "CLIENT_COMMANDS",
    "EOL",
    "Frame",
    "HEARTBEAT",
    "Heartbeat",
    "NULL",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "UNESCAPED_COMMANDS",
    "escape_header",
    "escapes_headers",
    "header_representable",
    "serialize",
    "unescape_header",
]

#: Versions this implementation speaks, lowest first (STOMP 1.2, "Protocol Negotiation").
SUPPORTED_VERSIONS: tuple[str, ...] = ("1.0", "1.1", "1.2")

NULL = b"\x00"
EOL = b"\n"

#: STOMP 1.2, "Augmented BNF": client-command.
CLIENT_COMMANDS = frozenset(
    {
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "ACK",
        "NACK",
        "DISCONNECT",
        "CONNECT",
        "STOMP",
    }
)

#: STOMP 1.2, "Augmented BNF": server-command.
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})

#: STOMP 1.2, "Body": only these frames MAY have a body.
BODY_COMMANDS = frozenset({"SEND", "MESSAGE", "ERROR"})

#: STOMP 1.2, "Value Encoding": CONNECT and CONNECTED never escape their headers,
#: to stay backward compatible with 1.0. STOMP is handled "in the same manner as
#: a CONNECT frame" (STOMP 1.2, "CONNECT or STOMP Frame"), so it is not escaped
#: either; this is also what a client does, since it cannot know the version yet.
UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})


@dataclass(frozen=True)
class Heartbeat:
    """A bare EOL between frames: the peer is alive (STOMP 1.2, "Heart-beating").

    Use the :data:`HEARTBEAT` instance; all instances compare equal.
    """


#: The one heart-beat item yielded by :class:`app.stomp.parser.FrameParser`.
HEARTBEAT = Heartbeat()


@dataclass(frozen=True)
class Frame:
    """One STOMP frame: a command, ordered headers and a body of raw bytes.

    Headers keep their wire order and repetitions, decoded (unescaped) to ``str``.
    Use :meth:`get` to read one: STOMP 1.2, "Repeated Header Entries": only the
    first entry of a repeated header is its value.

    Attributes:
        command: the command, e.g. ``"SEND"``; case sensitive.
        headers: ``(name, value)`` pairs in wire order, repetitions included.
        body: the body octets; may contain NUL when sent with ``content-length``.
    """

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def build(
        cls,
        command: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Frame:
        """Make a frame from a mapping or an iterable of pairs.

        Args:
            command: the frame's command.
            headers: a mapping (its iteration order is kept) or ``(name, value)`` pairs.
            body: the body octets.

        Returns:
            The new :class:`Frame`.
        """
        items = headers.items() if isinstance(headers, Mapping) else headers
        return cls(command, tuple((str(k), str(v)) for k, v in items), bytes(body))

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    @overload
    def get(self, name: str, default: str | None) -> str | None: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of header ``name``.

        Args:
            name: the header name (case sensitive, STOMP 1.2 "STOMP Frames").
            default: returned when the header is absent.

        Returns:
            The value of the FIRST entry named ``name`` (STOMP 1.2, "Repeated
            Header Entries"), or ``default``.
        """
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def __contains__(self, name: object) -> bool:
        """Return whether the frame has at least one header called ``name``."""
        return any(key == name for key, _ in self.headers)

    def header_map(self) -> dict[str, str]:
        """Return the headers as a dict in which the first entry of a name wins.

        Returns:
            A new ``dict`` from header name to value.
        """
        result: dict[str, str] = {}
        for key, value in self.headers:
            result.setdefault(key, value)
        return result


# --- header value encoding (STOMP 1.2, "Value Encoding") ---------------------------

# Encoding: backslash first is not needed with str.translate (one pass per character).
_ESCAPE_TABLE = {ord("\\"): "\\\\", ord("\r"): "\\r", ord("\n"): "\\n", ord(":"): "\\c"}

# STOMP 1.2: \r -> CR, \n -> LF, \c -> ':', \\ -> '\'. Anything else after a
# backslash, including nothing at all, is an undefined escape.
_UNESCAPES = {"r": "\r", "n": "\n", "c": ":", "\\": "\\"}
_ESCAPE_SEQUENCE = re.compile(r"\\(.?)", re.DOTALL)


def escapes_headers(command: str, version: str | None) -> bool:
    """Tell whether a frame's headers are escaped on the wire.

    Args:
        command: the frame's command.
        version: the session's negotiated version, or ``None`` before negotiation.

    Returns:
        ``True`` for every frame of a 1.1 or 1.2 session except CONNECT, STOMP and
        CONNECTED (STOMP 1.2, "Value Encoding"); ``False`` for a 1.0 session, which
        predates escaping, and before a version is negotiated.
    """
    return version not in (None, "1.0") and command not in UNESCAPED_COMMANDS


def escape_header(text: str) -> str:
    """Escape a header name or value for a 1.1/1.2 frame.

    Args:
        text: the decoded header name or value.

    Returns:
        ``text`` with backslash, CR, LF and ':' replaced by ``\\\\``, ``\\r``,
        ``\\n`` and ``\\c`` (STOMP 1.2, "Value Encoding").
    """
    return text.translate(_ESCAPE_TABLE)


def unescape_header(text: str) -> str:
    """Decode the escapes of a header name or value read from a 1.1/1.2 frame.

    Args:
        text: the header name or value as it appeared on the wire.

    Returns:
        The decoded text.

    Raises:
        ValueError: ``text`` holds an undefined escape sequence such as ``\\t`` or
            a trailing lone backslash ("MUST be treated as a fatal protocol
            error", STOMP 1.2 "Value Encoding"). The parser turns it into
            :class:`app.stomp.errors.BadEscape`.
    """
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        try:
            return _UNESCAPES[match.group(1)]
        except KeyError:
            raise ValueError(f"undefined escape sequence {match.group(0)!r}") from None

    return _ESCAPE_SEQUENCE.sub(replace, text)


def header_representable(name: str, value: str, escaped: bool) -> bool:
    """Tell whether a header survives a round trip through the wire format.

    No frame can carry an empty name, or one starting with NUL (a NUL where a
    header line should start ends the frame, see the parser). Otherwise escaped
    (1.1/1.2) frames can carry any name and any value. Unescaped frames (1.0,
    CONNECT, CONNECTED) cannot carry LF anywhere, a CR at the end of a name or
    value (it would read as part of a CR LF EOL), or ':' in a name (a header
    line splits at its first ':').

    Args:
        name: the header name.
        value: the header value.
        escaped: whether the frame's headers are escaped (see :func:`escapes_headers`).

    Returns:
        ``True`` if :func:`serialize` can write the header faithfully.
    """
    if not name or name[0] == "\x00":
        return False
    if escaped:
        return True
    return (
        ":" not in name
        and "\n" not in name
        and "\n" not in value
        and not name.endswith("\r")
        and not value.endswith("\r")
    )


def serialize(frame: Frame, version: str | None) -> bytes:
    """Encode a frame for the wire.

    Header names and values are UTF-8; they are escaped when
    :func:`escapes_headers` says so. Any ``content-length`` header of ``frame``
    is replaced by the body's real length, which is always written when the body
    is non-empty (STOMP 1.2, "Header content-length": a body with NUL octets MUST
    have one) and for the body-carrying commands SEND, MESSAGE and ERROR. Lines
    end with LF; the frame ends with NUL.

    Args:
        frame: the frame to encode.
        version: the negotiated version (``"1.0"``, ``"1.1"``, ``"1.2"``), or
            ``None`` before negotiation (no escaping).

    Returns:
        The frame's bytes, NUL included.

    Raises:
        ValueError: the frame cannot be represented: an empty command or one with
            CR, LF or NUL, a header that :func:`header_representable` rejects,
            or text that is not encodable as UTF-8 (``UnicodeEncodeError``).
    """
    command = frame.command
    if not command or any(c in command for c in "\r\n\x00"):
        raise ValueError(f"invalid command {command!r}")
    escaped = escapes_headers(command, version)
    lines = [command]
    for name, value in frame.headers:
        if name == "content-length":
            continue
        if not header_representable(name, value, escaped):
            raise ValueError(f"header {name!r}: {value!r} cannot be written in this frame")
        if escaped:
            lines.append(f"{escape_header(name)}:{escape_header(value)}")
        else:
            # Unescaped: a header line splits at its first ':', so a value may hold ':'.
            lines.append(f"{name}:{value}")
    if frame.body or command in BODY_COMMANDS:
        lines.append(f"content-length:{len(frame.body)}")
    head = "\n".join(lines).encode("utf-8")
    return b"".join((head, b"\n\n", frame.body, NULL))
