"""MESSAGE frames: the one writer of every MESSAGE a session sends.

A MESSAGE is the per-subscription lines (``subscription``, a new unique ``message-id``,
``destination``, in 1.2 with a client ack mode ``ack`` equal to the message-id,
``redelivered:true`` when asked) followed by the event's own headers (``event-id``,
``event-type``, ``sender``, ``time``, ``content-type``, the SEND's user headers; the
default type for a non-empty body without one; ``content-length``) and body,
which are the same for every subscriber of one event in one escaping mode: the broker
builds that tail once (:func:`encode_message_tail`) and hands it to every session, which
puts its own lines in front (:func:`message_head`, :func:`message_from_tail`). A MESSAGE
that is kept for a redelivery, or differs per subscription, is a whole :class:`Frame`
(:func:`message_frame`), serialized with the same rules. A session's :class:`MessageWriter`
numbers its MESSAGEs and chooses between the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .frames import Frame, escape_header, escapes_headers, header_representable, serialize

if TYPE_CHECKING:
    from .acks import AckBook, SessionSubscription

__all__ = [
    "BLOB_TYPE",
    "MessageWriter",
    "RESERVED_MESSAGE_HEADERS",
    "encode_message_tail",
    "event_header_lines",
    "message_frame",
    "message_from_tail",
    "message_head",
]

#: MESSAGE headers the session writes itself; headers by these names given for an event
#: are dropped, so a broker (or a SEND's user headers) cannot forge or duplicate them.
RESERVED_MESSAGE_HEADERS = frozenset(
    {"subscription", "message-id", "destination", "ack", "content-length", "redelivered"}
)

#: STOMP 1.2, "Header content-type": without one the body is a binary blob; said so when
#: the event does not carry its own content-type.
BLOB_TYPE = "application/octet-stream"


def event_header_lines(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    escaped: bool,
    body: bytes,
    default_type: str | None = BLOB_TYPE,
) -> list[tuple[str, str]]:
    """The event's MESSAGE headers as they will be written, in order.

    The reserved names are dropped, and so are headers this escaping mode cannot carry
    (1.0 has no escapes: no CR, LF in a value, no ':' in a name). A non-empty body without
    a ``content-type`` gets ``default_type`` (none when it is ``None``).
    """
    lines: list[tuple[str, str]] = []
    has_type = False
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        name, value = str(name), str(value)
        if name in RESERVED_MESSAGE_HEADERS or not header_representable(name, value, escaped):
            continue
        if name == "content-type":
            if has_type:
                continue  # STOMP 1.2: the first one wins; a second would only mislead
            has_type = True
        lines.append((name, value))
    if body and not has_type and default_type is not None:
        lines.append(("content-type", default_type))
    return lines


def encode_message_tail(
    body: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    escaped: bool,
    default_type: str | None = BLOB_TYPE,
) -> bytes:
    """The part of a MESSAGE frame that depends only on the event, for :meth:`StompSession.deliver`.

    The header lines of :func:`event_header_lines`, ``content-length``, the blank line,
    the body and the NUL. Build it once per event and escaping mode and pass it to every
    session's ``deliver(..., tail=...)``.

    Args:
        body: the message body octets.
        headers: the event's MESSAGE headers, as a mapping or ``(name, value)`` pairs.
        escaped: :attr:`StompSession.escapes_messages` of the sessions it is for.
        default_type: the content-type said for a body that has none (``None``: say nothing).

    Returns:
        The frame's bytes from the first event header to the NUL.
    """
    lines = [
        f"{escape_header(name)}:{escape_header(value)}\n" if escaped else f"{name}:{value}\n"
        for name, value in event_header_lines(headers, escaped, body, default_type)
    ]
    lines.append(f"content-length:{len(body)}\n\n")
    return b"".join(("".join(lines).encode("utf-8"), bytes(body), b"\x00"))


def message_head(sub: SessionSubscription, session_id: str, escaped: bool) -> tuple[bytes, bytes]:
    """The per-subscription lines of ``sub``'s MESSAGEs, around the message number; kept on ``sub``.

    "MESSAGE", ``subscription`` and ``message-id`` up to the number, then the
    ``destination`` line: the same lines :func:`~.frames.serialize` writes.

    Raises:
        ValueError: a value cannot be written in this escaping mode.
    """
    lines = []
    for name, value in (
        ("subscription", sub.sub_id),
        ("message-id", f"{session_id}-1"),
        ("destination", sub.destination),
    ):
        if not header_representable(name, value, escaped):
            raise ValueError(f"header {name!r}: {value!r} cannot be written in this frame")
        lines.append(f"{escape_header(name)}:{escape_header(value)}" if escaped else f"{name}:{value}")
    before = "MESSAGE\n" + lines[0] + "\n" + lines[1][:-1]  # up to the message number
    head = sub.message_head = (before.encode("utf-8"), ("\n" + lines[2] + "\n").encode("utf-8"))
    return head


def message_from_tail(head: tuple[bytes, bytes], number: int, tail: bytes) -> bytes:
    """A whole MESSAGE: :func:`message_head`'s lines around ``number``, then :func:`encode_message_tail`'s."""
    return b"%s%d%s%s" % (head[0], number, head[1], tail)


def message_frame(
    sub: SessionSubscription,
    message_id: str,
    body: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    version: str | None,
    *,
    redelivered: bool = False,
    default_type: str | None = BLOB_TYPE,
    destination: str | None = None,
) -> Frame:
    """The MESSAGE frame for ``sub`` (see :meth:`StompSession.deliver` for the headers)."""
    frame_headers = [
        ("subscription", sub.sub_id),
        ("message-id", message_id),
        ("destination", destination if destination is not None else sub.destination),
    ]
    if sub.ack_mode != "auto" and version == "1.2":
        # STOMP 1.2, "MESSAGE": client ack modes need an ack header, which the
        # ACK/NACK id header must then match.
        frame_headers.append(("ack", message_id))
    if redelivered:
        frame_headers.append(("redelivered", "true"))
    frame_headers += event_header_lines(headers, escapes_headers("MESSAGE", version), body, default_type)
    return Frame("MESSAGE", tuple(frame_headers), bytes(body))


class MessageWriter:
    """One session's MESSAGEs: their ``message-id`` (``<session id>-<n>``) and their bytes.

    Args:
        session_id: the session's id, the prefix of every ``message-id``.
        acks: where a MESSAGE of a client ack mode is kept until it is settled.
    """

    __slots__ = ("session_id", "_acks", "_last")

    def __init__(self, session_id: str, acks: AckBook) -> None:
        self.session_id = session_id
        self._acks = acks
        self._last = 0  # the number of the latest message-id

    def reserve(self, count: int) -> int:
        """Take the next ``count`` message numbers for MESSAGEs written elsewhere from
        :func:`message_head` and a shared tail (:meth:`StompSession.direct_messages`); the first."""
        first = self._last + 1
        self._last += count
        return first

    def write(
        self,
        sub: SessionSubscription,
        body: bytes,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        version: str | None,
        *,
        tail: bytes | None,
        redelivered: bool,
        default_type: str | None,
        destination: str | None,
    ) -> tuple[str, bytes]:
        """A new MESSAGE for ``sub``, kept in the ack book in a client ack mode (for
        :meth:`StompSession.deliver`, whose arguments these are).

        Args:
            sub: the subscription.
            body: the message body octets.
            headers: extra MESSAGE headers, as a mapping or ``(name, value)`` pairs.
            version: the session's STOMP version (its escaping).
            tail: ``encode_message_tail(body, headers, session.escapes_messages, default_type)``
                of the same arguments, for a caller that delivers one event to many
                sessions and builds it once. An ``auto`` subscription's frame is then
                the per-subscription headers plus ``tail`` (the same bytes); client ack
                modes ignore it (they keep the frame for NACK).
            redelivered: a shared queue's message delivered before (to anyone).
            default_type: the content-type said for a body that has none; ``None``: none.
            destination: the ``destination`` header, when it is not the subscription's own
                (a wildcard subscription's MESSAGE names the topic it came from).

        Returns:
            Its ``message-id`` and its bytes.

        Raises:
            ValueError: a header cannot be written in this version's escaping.
        """
        if tail is not None and sub.ack_mode == "auto" and not redelivered and destination is None:
            # Nothing is kept for a redelivery: write the per-subscription lines and the
            # shared tail; the same bytes serialize() writes for the frame built below.
            number = self._last = self._last + 1
            head = sub.message_head or message_head(sub, self.session_id, escapes_headers("MESSAGE", version))
            return f"{self.session_id}-{number}", message_from_tail(head, number, tail)
        self._last += 1
        message_id = f"{self.session_id}-{self._last}"
        frame = message_frame(
            sub,
            message_id,
            body,
            headers,
            version,
            redelivered=redelivered,
            default_type=default_type,
            destination=destination,
        )
        if sub.ack_mode != "auto":
            self._acks.track(sub, message_id, frame)
        return message_id, serialize(frame, version)
