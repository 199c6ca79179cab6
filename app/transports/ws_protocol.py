"""The ``/ws`` JSON protocol without I/O: client ops parsed into commands, server ops built.

:func:`parse` turns one text message into a command (or raises :class:`ClientError`, which
becomes an ``error`` op: a bad message never closes the connection); :func:`ok`,
:func:`error`, :func:`encode_event` and :func:`encode_gap` build what the server sends. The
connection that reads and writes them is :mod:`app.transports.websocket`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..auth.tokens import MAX_TOKEN_BYTES
from ..events import (
    Cursor,
    Event,
    InvalidCursor,
    InvalidEventType,
    InvalidHeaders,
    InvalidTopic,
    check_headers,
    check_topic,
    check_type,
    parse_json,
)
from .ws_queues import QUEUE_OPS

MAX_REF_LENGTH = 256


# ----------------------------------------------------------------------- errors


class ClientError(Exception):
    """A message the server cannot act on; answered with an ``error`` op, never a close.

    Attributes:
        code: the stable ``error`` code.
        message: the human text.
        ref: the client's ``ref`` when it could be read, else ``None``.
    """

    def __init__(self, code: str, message: str, ref: Any = None, **details: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.details = details


# ---------------------------------------------------------------------- client ops


@dataclass(frozen=True)
class Subscribe:
    ref: Any
    topic: str
    since: str | None


@dataclass(frozen=True)
class Unsubscribe:
    ref: Any
    topic: str


@dataclass(frozen=True)
class Publish:
    ref: Any
    topic: str
    type: str
    data: Any
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Ping:
    ref: Any


@dataclass(frozen=True)
class Auth:
    ref: Any
    token: str


Command = Subscribe | Unsubscribe | Publish | Ping | Auth


def _since(value: Any, ref: Any) -> str | None:
    if value is None or value == "":
        return None
    try:
        Cursor.parse(value)
    except InvalidCursor as exc:
        raise ClientError("bad_cursor", f"since: {exc}", ref) from None
    return value


def _token(value: Any, ref: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_BYTES:
        raise ClientError(
            "bad_message", f"token must be a non-empty string of at most {MAX_TOKEN_BYTES} characters", ref
        )
    return value


def _headers(value: Any, ref: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ClientError("bad_headers", 'headers must be an object of strings, like {"x-trace": "abc"}', ref)
    try:
        return check_headers(value)
    except InvalidHeaders as exc:
        raise ClientError("bad_headers", str(exc), ref) from None


def _type(value: Any, ref: Any) -> str:
    try:
        return check_type(value)
    except InvalidEventType as exc:
        raise ClientError("bad_type", str(exc), ref) from None


# op -> (builder, required fields, optional fields). Every op also accepts "op" and "ref".
_OPS: dict[str, tuple[Callable[[dict, Any], Command], frozenset, frozenset]] = {
    "subscribe": (
        lambda m, ref: Subscribe(ref, m["topic"], _since(m.get("since"), ref)),
        frozenset({"topic"}),
        frozenset({"since"}),
    ),
    "unsubscribe": (lambda m, ref: Unsubscribe(ref, m["topic"]), frozenset({"topic"}), frozenset()),
    "publish": (
        lambda m, ref: Publish(
            ref,
            m["topic"],
            _type(m.get("type", "message"), ref),
            m["data"],
            _headers(m["headers"], ref) if "headers" in m else (),
        ),
        frozenset({"topic", "data"}),
        frozenset({"type", "headers"}),
    ),
    "ping": (lambda m, ref: Ping(ref), frozenset(), frozenset()),
    "auth": (lambda m, ref: Auth(ref, _token(m["token"], ref)), frozenset({"token"}), frozenset()),
    # Work queues (app/transports/ws_queues.py).
    **{
        op: (lambda m, ref, build=build: build(m, ref, ClientError), required, optional)  # type: ignore[misc]
        for op, (build, required, optional) in QUEUE_OPS.items()
    },
}
_ENVELOPE = frozenset({"op", "ref"})


def _read_ref(message: dict) -> Any:
    ref = message.get("ref")
    if ref is None:
        return None
    if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH:
        return ref
    # Any int: math.isfinite() raises OverflowError beyond a double (a 400-digit ref).
    if (isinstance(ref, int) and not isinstance(ref, bool)) or (isinstance(ref, float) and math.isfinite(ref)):
        return ref
    raise ClientError("bad_ref", f"ref must be a string of at most {MAX_REF_LENGTH} characters or a number")


def parse(text: str) -> Command:
    """Read one client message.

    Args:
        text: the text of one WebSocket message.

    Returns:
        The command it asks for, its fields checked (topic, cursor, type).

    Raises:
        ClientError: the message is not a valid op; ``ref`` is set when it was readable.
    """
    try:
        message = parse_json(text)
    except ValueError as exc:
        raise ClientError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ClientError("bad_message", 'a message is a JSON object like {"op": "subscribe", "topic": "chat"}')
    ref = _read_ref(message)
    op = message.get("op")
    if not isinstance(op, str):
        raise ClientError("bad_message", 'the message needs an "op" string', ref)
    try:
        build, required, optional = _OPS[op]
    except KeyError:
        raise ClientError("unknown_op", f"unknown op {op[:40]!r}; known: {', '.join(_OPS)}", ref) from None
    missing = required - message.keys()
    if missing:
        raise ClientError("bad_message", f"{op} needs field(s): {', '.join(sorted(missing))}", ref)
    unknown = message.keys() - required - optional - _ENVELOPE
    if unknown:
        hint = " (the server sets the sender)" if "sender" in unknown else ""
        raise ClientError("bad_message", f"unknown field(s) for {op}: {', '.join(sorted(unknown))}{hint}", ref)
    if "topic" in required:
        try:
            check_topic(message["topic"])
        except InvalidTopic as exc:
            raise ClientError("bad_topic", str(exc), ref) from None
    return build(message, ref)


# ---------------------------------------------------------------------- server ops


def _dumps(value: dict) -> str:
    # ASCII-only: a ref may hold a lone surrogate (JSON allows "\ud800"), which has no
    # UTF-8 form; escaped, it is still the same JSON string.
    return json.dumps(value, separators=(",", ":"))


def ok(ref: Any, **details: Any) -> str:
    """The text of an ``ok`` reply."""
    return _dumps({"op": "ok", "ref": ref, **details})


def error(ref: Any, code: str, message: str, **details: Any) -> str:
    """The text of an ``error`` reply."""
    return _dumps({"op": "error", "ref": ref, "error": code, "message": message, **details})


def _encode_event(event: Event) -> bytes:
    # event.json() is '{"id":...}' (compact, one line, cached): splice the op in front.
    try:
        return ('{"op":"event",' + event.json()[1:]).encode("utf-8")
    except UnicodeEncodeError:
        # The data holds a lone surrogate (published as "\ud800"): no UTF-8 form, so
        # send it escaped, as valid JSON, rather than fail every subscriber.
        return _dumps({"op": "event", **event.to_dict()}).encode("ascii")


def encode_event(event: Event) -> bytes:
    """The UTF-8 text of an ``event`` op; built once per event, shared by every socket."""
    return event.encoded("ws", _encode_event)


def encode_gap(topic: str) -> bytes:
    """The UTF-8 text of a ``gap`` op."""
    return _dumps({"op": "gap", "topic": topic}).encode("utf-8")
