"""MESSAGE frames: the headers a session writes itself, and the part shared by every session.

A MESSAGE is the per-subscription lines (``subscription``, ``message-id``,
``destination``, ``ack``, ``redelivered``) followed by the event's own headers and body,
which are the same for every subscriber of one event in one escaping mode: the broker
builds that tail once (:func:`encode_message_tail`) and hands it to every session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .frames import escape_header, header_representable

__all__ = ["BLOB_TYPE", "RESERVED_MESSAGE_HEADERS", "encode_message_tail", "event_header_lines"]

#: MESSAGE headers the session writes itself; headers by these names given for an event
#: are dropped, so a broker (or a SEND's user headers) cannot forge or duplicate them.
RESERVED_MESSAGE_HEADERS = frozenset(
    {"subscription", "message-id", "destination", "ack", "content-length", "redelivered"}
)

#: STOMP 1.2, "Header content-type": without one the body is a binary blob; said so when
#: the event does not carry its own content-type.
BLOB_TYPE = "application/octet-stream"


def event_header_lines(headers: Mapping[str, str] | Iterable[tuple[str, str]], escaped: bool,
                       body: bytes, default_type: str | None = BLOB_TYPE) -> list[tuple[str, str]]:
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
