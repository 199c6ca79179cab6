"""Between STOMP frames and hub events (DESIGN.md §6): SEND -> event, event -> MESSAGE.

SEND -> event. The body becomes the event's ``data``: parsed JSON for ``content-type:
application/json`` (or ``+json``), the text for ``text/*`` or no content-type. Anything
else, or text that does not decode, is binary: an event of type ``binary`` with data
``{"base64": "...", "content-type": "..."}``, so every transport can carry it. A SEND may
name its event type with an ``event-type`` header (default ``message``). Its other
headers, all but the frame's own (:data:`app.events.RESERVED_HEADERS`), are the event's
user-defined ``headers``. When ``data`` would not give the SEND's octets and content-type
back exactly (JSON with its own spacing, ``text/html;charset=utf-8``, no content-type at
all), the event keeps them (:class:`app.events.RawBody`): STOMP subscribers get those,
byte for byte; the JSON transports get ``data`` as before.

Event -> MESSAGE. The kept octets and content-type if any; else a string is UTF-8 text
with ``content-type: text/plain``, a ``binary`` event its octets with its content-type,
anything else JSON with ``content-type: application/json``. Headers ``event-id`` (the
cursor to resume after), ``event-type``, ``sender`` (absent for server events), ``time``
(unix seconds), ``content-type``, then the user-defined headers in the order they were
sent. Body and headers are built once per event, whatever the audience.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..events import RESERVED_HEADERS, Event, InvalidHeaders, RawBody, check_headers, parse_json
from ..stomp.messages import encode_message_tail

__all__ = ["BINARY_TYPE", "BodyError", "decode_send_body", "encode_message", "message_tail", "raw_body", "send_headers"]

#: The event type of a SEND whose body is not text or JSON (see the module docstring).
BINARY_TYPE = "binary"


class BodyError(Exception):
    """A SEND that cannot become an event (a body that is not JSON, bad user headers)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


def _split_content_type(content_type: str | None) -> tuple[str | None, dict[str, str]]:
    if content_type is None:
        return None, {}
    mime, *params = content_type.split(";")
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return mime.strip().lower(), parsed


def decode_send_body(body: bytes, content_type: str | None) -> tuple[str | None, Any]:
    """Turn a SEND body into event data (DESIGN.md §6).

    Args:
        body: the body octets.
        content_type: the SEND ``content-type`` header, or ``None``.

    Returns:
        ``(event_type, data)``: ``event_type`` is :data:`BINARY_TYPE` for a binary
        body and ``None`` otherwise (the caller picks the type).

    Raises:
        BodyError: the content-type says JSON and the body is not JSON.
    """
    mime, params = _split_content_type(content_type)
    charset = params.get("charset", "utf-8")
    if mime is not None and (mime == "application/json" or mime.endswith("+json")):
        try:
            return None, parse_json(body.decode(charset))
        except (LookupError, ValueError) as exc:
            raise BodyError(
                "invalid JSON body", f"content-type is {content_type} but the body is not JSON: {exc}"
            ) from None
    if mime is None or mime.startswith("text/"):
        try:
            return None, body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass  # not text after all: carried as binary, octets intact
    return BINARY_TYPE, {
        "base64": base64.b64encode(body).decode("ascii"),
        "content-type": content_type or "application/octet-stream",
    }


def send_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The user-defined headers of a SEND frame: all but the frame's own, in order, checked.

    Raises:
        BodyError: too many, too large, or a name that is not a token (the rule every
            transport's publish follows, :func:`app.events.check_headers`).
    """
    mine = tuple((name, value) for name, value in headers if name.lower() not in RESERVED_HEADERS)
    try:
        return check_headers(mine)
    except InvalidHeaders as exc:
        raise BodyError(
            "invalid headers", f"{exc}. The frame's own headers ({', '.join(sorted(RESERVED_HEADERS))}) do not count."
        ) from None


def _binary_payload(type_: str, data: Any) -> tuple[bytes, str] | None:
    if type_ != BINARY_TYPE or not isinstance(data, dict):
        return None
    encoded, content_type = data.get("base64"), data.get("content-type", "application/octet-stream")
    if not isinstance(encoded, str) or not isinstance(content_type, str) or "\n" in content_type:
        return None
    try:
        return base64.b64decode(encoded, validate=True), content_type
    except (binascii.Error, ValueError):
        return None


def _data_body(type_: str, data: Any) -> tuple[bytes, str]:
    binary = _binary_payload(type_, data)
    if binary is not None:
        return binary
    if isinstance(data, str):
        try:
            return data.encode("utf-8"), "text/plain"
        except UnicodeEncodeError:
            pass  # a lone surrogate (JSON allows "\ud800"): JSON escapes carry it losslessly
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8"), "application/json"
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":")).encode("ascii"), "application/json"


def raw_body(body: bytes, content_type: str | None, type_: str, data: Any) -> RawBody | None:
    """The SEND's octets and content-type to keep with its event, or ``None`` when the
    MESSAGE built from ``data`` gives them back exactly (the common case costs nothing)."""
    if content_type is not None and _data_body(type_, data) == (bytes(body), content_type):
        return None
    return RawBody(bytes(body), content_type)


def _message_body(event: Event) -> tuple[bytes, str | None]:
    if event.raw is not None:
        return event.raw.octets, event.raw.content_type
    return _data_body(event.type, event.data)


def _encode_event(event: Event) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    body, content_type = _message_body(event)
    headers = [("event-id", event.id), ("event-type", event.type)]
    if event.sender is not None:
        headers.append(("sender", event.sender))
    headers.append(("time", repr(event.time)))
    if content_type is not None:
        headers.append(("content-type", content_type))
    return body, (*headers, *event.headers)


def encode_message(event: Event) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """The MESSAGE body and event headers for ``event``, built once per event.

    Returns:
        ``(body, headers)`` for :meth:`StompSession.deliver` (with ``default_type=None``:
        a SEND without a content-type is delivered without one); the session adds
        ``subscription``, ``message-id``, ``destination``, ``ack`` and ``content-length``.
    """
    return event.encoded("stomp-message", _encode_event)


def _tail_escaped(event: Event) -> bytes:
    return encode_message_tail(*encode_message(event), True, None)


def _tail_unescaped(event: Event) -> bytes:
    return encode_message_tail(*encode_message(event), False, None)


def message_tail(event: Event, escaped: bool) -> bytes:
    """The event's part of every MESSAGE frame (headers, content-length, body, NUL), built once
    per event and escaping mode (1.1/1.2 escape header values, 1.0 does not); see
    :func:`app.stomp.messages.encode_message_tail`."""
    if escaped:
        return event.encoded("stomp-tail-escaped", _tail_escaped)
    return event.encoded("stomp-tail-unescaped", _tail_unescaped)
