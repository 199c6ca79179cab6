"""The event model shared by the hub and every transport: topics, cursors, events, gaps.

Pure standard library: no Flask, gevent or sockets, so any layer may import it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable, Iterable, Mapping


def name_re(length: int) -> re.Pattern[str]:
    """Names of topics and queues, of at most ``length`` characters: ``NAME_RULE``.

    The ``{tag}`` is a Redis Cluster hash tag: names with the same tag share a slot, so a
    STOMP transaction can keep to one (app/hub/redis/keys.py, app/hub/redis_queue_keys.py).
    """
    return re.compile(rf"(?=.{{1,{length}}}\Z)[A-Za-z0-9][A-Za-z0-9._:-]*(?:\{{[A-Za-z0-9_:-]+\}}[A-Za-z0-9._:-]*)?\Z")


#: What a topic or queue name may hold (for the messages that refuse one).
NAME_RULE = "A-Z a-z 0-9 . _ : - and at most one {tag} of A-Z a-z 0-9 _ : -"
TOPIC_RE = name_re(128)
TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
_EPOCH_RE = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_MAX_CURSOR_LEN = 100

# The type of the join and leave events the server publishes (app/hub/presence.py).
PRESENCE_TYPE = "presence"
# Event types the transports use for their own signals, and the server's presence events;
# a publisher cannot take them (a client cannot forge a join or a leave).
RESERVED_TYPES = frozenset({"gap", "error", PRESENCE_TYPE})


class InvalidTopic(ValueError):
    """A topic name outside ``TOPIC_RE``."""


class InvalidCursor(ValueError):
    """A string that is not a cursor this server could have issued."""


class InvalidEventType(ValueError):
    """An event type that is malformed or reserved."""


class InvalidHeaders(ValueError):
    """User-defined event headers that are malformed, reserved, or too many or too large."""


#: User-defined headers an event may carry (a STOMP SEND's own headers, or the ``headers``
#: object of an HTTP or ``/ws`` publish): at most this many, of at most this many bytes
#: (names and values as UTF-8), each name an HTTP token of 1-128 characters.
MAX_HEADERS = 32
MAX_HEADER_BYTES = 4096
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")

#: Header names the broker writes itself (STOMP frame and MESSAGE headers, the event's
#: metadata): never user-defined. A STOMP SEND's headers by these names are the frame's
#: own; an HTTP or /ws publish that names one is refused.
RESERVED_HEADERS = frozenset(
    {
        "destination",
        "transaction",
        "receipt",
        "content-length",
        "content-type",
        "subscription",
        "message-id",
        "ack",
        "redelivered",
        "delivery-count",
        "event-id",
        "event-type",
        "sender",
        "time",
        "gap",
        "id",
        "last-event-id",
        "prefetch-count",
        "persistent-id",
    }
)


def check_headers(headers: Mapping[str, Any] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """The user-defined headers of a publish, checked, as ``(name, value)`` pairs in order.

    Args:
        headers: a JSON object of strings (HTTP, /ws) or ``(name, value)`` pairs (STOMP,
            reserved names already left out); ``None`` for none.

    Raises:
        InvalidHeaders: not an object of strings, a name that is not a token or is
            reserved, a value with NUL, or more than ``MAX_HEADERS`` / ``MAX_HEADER_BYTES``.
    """
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, (list, tuple)):
        items = list(headers)
    else:
        raise InvalidHeaders('headers must be an object of strings, like {"x-trace": "abc"}')
    if len(items) > MAX_HEADERS:
        raise InvalidHeaders(f"at most {MAX_HEADERS} headers")
    size = 0
    for name, value in items:
        if not isinstance(name, str) or not HEADER_NAME_RE.match(name):
            raise InvalidHeaders(
                f"header name {str(name)[:40]!r} must be 1-128 characters of A-Z a-z 0-9 ! # $ % & ' * + . ^ _ ` | ~ -"
            )
        if name.lower() in RESERVED_HEADERS:
            raise InvalidHeaders(f"header {name!r} is reserved: the server sets it")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidHeaders(f"header {name!r} must have a string value without NUL")
        size += len(name.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_HEADER_BYTES:
        raise InvalidHeaders(f"headers may take at most {MAX_HEADER_BYTES} bytes in all")
    return tuple((name, value) for name, value in items)


@dataclass(frozen=True)
class RawBody:
    """The octets and content-type of a STOMP SEND, kept when the event's ``data`` would
    not give them back exactly (JSON with its own whitespace, ``text/html;charset=utf-8``,
    a body without a content-type): a STOMP subscriber gets these, other transports ``data``."""

    octets: bytes
    content_type: str | None

    def to_json(self) -> dict[str, Any]:
        """The stored form (Redis): the text when it is UTF-8, else base64."""
        try:
            body: dict[str, Any] = {"t": self.octets.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"b": base64.b64encode(self.octets).decode("ascii")}
        body["ct"] = self.content_type
        return body

    @classmethod
    def from_json(cls, stored: Any) -> "RawBody | None":
        """Read :meth:`to_json`'s form back; ``None`` for anything else."""
        if not isinstance(stored, dict):
            return None
        try:
            octets = stored["t"].encode("utf-8") if "t" in stored else base64.b64decode(stored["b"], validate=True)
        except (KeyError, AttributeError, TypeError, binascii.Error, ValueError):
            return None
        content_type = stored.get("ct")
        return cls(octets, content_type if isinstance(content_type, str) else None)


def stored_extras(headers: tuple[tuple[str, str], ...], raw: "RawBody | None") -> dict[str, Any]:
    """The fields a backend stores beside ``type``, ``sender`` and ``data`` (none when empty)."""
    extras: dict[str, Any] = {}
    if headers:
        extras["h"] = [list(pair) for pair in headers]
    if raw is not None:
        extras["r"] = raw.to_json()
    return extras


def extras_from_stored(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``headers`` and ``raw`` keyword arguments of :class:`Event` from stored fields."""
    extras: dict[str, Any] = {}
    pairs = fields.get("h")
    if isinstance(pairs, list):
        extras["headers"] = tuple(
            (str(pair[0]), str(pair[1])) for pair in pairs if isinstance(pair, list) and len(pair) == 2
        )
    raw = RawBody.from_json(fields.get("r"))
    if raw is not None:
        extras["raw"] = raw
    return extras


def check_topic(name: object) -> str:
    """Return ``name`` if it is a valid topic.

    Raises:
        InvalidTopic: it is not a string matching ``TOPIC_RE``.
    """
    if not isinstance(name, str) or not TOPIC_RE.match(name):
        raise InvalidTopic(f"a topic is 1-128 characters of {NAME_RULE}, and starts with a letter or digit")
    return name


def check_type(name: object) -> str:
    """Return ``name`` if it may be used as an event type.

    Raises:
        InvalidEventType: malformed (it becomes an SSE ``event:`` line) or reserved.
    """
    if not isinstance(name, str) or not TYPE_RE.match(name):
        raise InvalidEventType("a type is 1-64 characters of A-Z a-z 0-9 . _ : - and starts with a letter or digit")
    if name in RESERVED_TYPES:
        raise InvalidEventType(f"type {name!r} is reserved for the server's own signals")
    return name


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON syntax but overflows to inf, which json.dumps writes as
    # Infinity: not JSON, so every subscriber's parser would fail on the event.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_json(text: str | bytes) -> Any:
    """Parse JSON that every subscriber can read back: strict, finite numbers only.

    Every transport that takes event data from a client reads it here, so an HTTP
    publish, a ``/ws`` publish and a STOMP SEND accept exactly the same JSON.

    Raises:
        ValueError: not JSON, ``NaN``/``Infinity``, a number beyond a double, or nested
            too deeply (Python's recursion limit).
    """
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in one topic's history: ``<epoch>-<n>[-<n>]``.

    ``epoch`` names the history a position belongs to (a restarted in-memory hub, or a
    flushed Redis, starts a new epoch); ``position`` orders events within an epoch (one
    integer in memory, a stream id's two integers with Redis). Clients treat the text
    as opaque and hand back the last one they saw.
    """

    epoch: str
    position: tuple[int, ...]

    def __str__(self) -> str:
        return self.epoch + "".join(f"-{n}" for n in self.position)

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        """Parse the text form.

        Raises:
            InvalidCursor: not ``<epoch>-<digits>[-<digits>]``.
        """
        if not isinstance(text, str) or len(text) > _MAX_CURSOR_LEN:
            raise InvalidCursor("not a cursor")
        epoch, _, rest = text.partition("-")
        parts = rest.split("-") if rest else []
        if (
            not _EPOCH_RE.match(epoch)
            or not 1 <= len(parts) <= 2
            or not all(p.isascii() and p.isdigit() for p in parts)
        ):
            raise InvalidCursor(f"{text[:40]!r} is not a cursor issued by this server")
        return cls(epoch, tuple(int(p) for p in parts))


@dataclass(frozen=True, eq=False)
class Event:
    """One published event, as stored in history and delivered to every transport.

    Transports that write the same event to many clients call :meth:`encoded` so the
    bytes are built once per format, not once per client.
    """

    cursor: Cursor
    topic: str
    type: str
    data: Any
    sender: str | None
    time: float
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _: KW_ONLY
    #: User-defined headers (:func:`check_headers`), in the order they were sent.
    headers: tuple[tuple[str, str], ...] = ()
    #: A STOMP SEND's own octets and content-type, when ``data`` would not give them back.
    raw: RawBody | None = None

    @property
    def id(self) -> str:
        """The cursor as text: what a client hands back to resume after this event."""
        # Cached: fan-out asks for it once per subscriber.
        try:
            return self._cache["id"]
        except KeyError:
            text = self._cache["id"] = str(self.cursor)
            return text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of DESIGN.md §3, with ``headers`` (an object) when the event has some."""
        body = {
            "id": self.id,
            "topic": self.topic,
            "type": self.type,
            "data": self.data,
            "sender": self.sender,
            "time": self.time,
        }
        if self.headers:
            body["headers"] = self.header_map()
        return body

    def header_map(self) -> dict[str, str]:
        """The user-defined headers as an object; of a repeated name the first wins (STOMP 1.2)."""
        mapped: dict[str, str] = {}
        for name, value in self.headers:
            mapped.setdefault(name, value)
        return mapped

    def json(self) -> str:
        """The event as one line of compact JSON (no raw newlines, whatever the data holds)."""
        return self.encoded("json", lambda e: json.dumps(e.to_dict(), ensure_ascii=False, separators=(",", ":")))

    @property
    def size(self) -> int:
        """Bytes of the event's JSON (:meth:`json` as UTF-8), measured once and cached.

        What the byte bounds of history and of subscriber queues count. The JSON is the
        form SSE and ``/ws`` send, so measuring it costs no extra encoding when they run.
        """
        try:
            return self._cache["size"]
        except KeyError:
            text = self.json()
            # ASCII text (the common case) is known from a flag, without encoding it again;
            # surrogatepass: a lone surrogate in the data still has a length.
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if self.raw is not None:  # kept beside the JSON: it costs its octets too
                size += len(self.raw.octets)
            self._cache["size"] = size
            return size

    def encoded(self, fmt: str, encode: Callable[["Event"], Any]) -> Any:
        """Return ``encode(self)``, computed once per ``fmt`` and cached on the event.

        Args:
            fmt: a name for the encoding, unique per transport format (e.g. ``"sse"``).
            encode: builds the encoding; called at most once per event and format.
        """
        try:
            return self._cache[fmt]
        except KeyError:
            value = self._cache[fmt] = encode(self)
            return value


@dataclass(frozen=True)
class Gap:
    """A marker in a subscription: events between the subscriber's cursor and the next
    item were lost to it (pruned from history, or from an older epoch).

    ``slow`` is True when the gap came from the subscriber falling behind its queue and
    history both; the subscription is closed right after delivering it.
    """

    topic: str
    slow: bool = False


@dataclass(frozen=True)
class Page:
    """A read of history: ``events`` after the given cursor, the cursor to hand back next,
    and whether events were lost between the given cursor and ``events[0]``."""

    events: list[Event]
    cursor: str
    gap: bool

    def to_dict(self) -> dict[str, Any]:
        return {"events": [e.to_dict() for e in self.events], "cursor": self.cursor, "gap": self.gap}
