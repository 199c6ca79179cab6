"""The one place a resume cursor and the paging limits are read from an HTTP request.

Every HTTP transport resumes the same way: the client hands back the last event id it
saw. Browsers' EventSource sends it as the ``Last-Event-ID`` header on reconnect, but
cannot set headers on the first connection, so a ``last_event_id`` query parameter is
accepted too; polling styles use ``since``.

A request that follows several topics (``/api/stream``, ``/api/long-poll``) hands back a
*compound cursor*: one cursor per topic, in an opaque text form that
:func:`format_compound` writes and :func:`compound_resume_cursor` reads (nothing else
looks inside it).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from flask import Request

from ..errors import ApiError
from ..events import TOPIC_RE, Cursor, InvalidCursor

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


# The compound form: "<topic>~<cursor>" pairs joined by "~", e.g. "chat~3f9a2c-17~ticks~3f9a2c-902".
# "~" occurs in no topic and no cursor (events.py), is unreserved in URLs (RFC 3986 2.3,
# so a query carries it as is) and is not CR, LF or NUL (so it fits an SSE id: line).
# Clients treat it as opaque, like any cursor.
_SEPARATOR = "~"


def _resume_value(request: Request) -> str | None:
    # WHATWG HTML: EventSource sends Last-Event-ID on a reconnect; it wins over the URL's
    # own last_event_id, which a page sets once for its first connection.
    for value in (request.headers.get("Last-Event-ID"), request.args.get("last_event_id"), request.args.get("since")):
        if value is not None:
            return value
    return None


def resume_cursor(request: Request) -> str | None:
    """The cursor the client resumes after, or None for "no position".

    Looks at, in order: the ``Last-Event-ID`` header, the ``last_event_id`` query
    parameter, the ``since`` query parameter. An empty value means no position.

    Raises:
        ApiError: 400 ``bad_cursor`` when the value is not a cursor at all. (A
            well-formed cursor of another epoch is not an error: the hub answers it
            with a gap.)
    """
    value = _resume_value(request)
    if not value:
        return None
    try:
        Cursor.parse(value)
    except InvalidCursor as exc:
        raise ApiError(400, "bad_cursor", str(exc)) from None
    return value


def format_compound(positions: Mapping[str, str]) -> str:
    """The compound cursor of ``positions`` (topic -> cursor); topics without one are left out."""
    return _SEPARATOR.join(f"{topic}{_SEPARATOR}{cursor}" for topic, cursor in positions.items() if cursor)


def parse_compound(text: str, max_topics: int) -> dict[str, str]:
    """The cursor of each topic in a compound cursor (see :func:`format_compound`).

    Raises:
        ApiError: 400 ``bad_cursor`` when ``text`` is not a compound cursor of at most
            ``max_topics`` topics, each named once.
    """
    if not text:
        return {}
    # At most one split more than a full cursor needs: an oversized one costs no more.
    parts = text.split(_SEPARATOR, 2 * max_topics)
    if len(parts) > 2 * max_topics:
        raise ApiError(400, "bad_cursor", f"a compound cursor names at most {max_topics} topics")
    if len(parts) % 2:
        raise ApiError(400, "bad_cursor", f"{text[:40]!r} is not a compound cursor issued by this server")
    positions: dict[str, str] = {}
    for topic, cursor in zip(parts[::2], parts[1::2]):
        if not TOPIC_RE.match(topic) or topic in positions:
            raise ApiError(400, "bad_cursor", f"{text[:40]!r} is not a compound cursor issued by this server")
        try:
            Cursor.parse(cursor)
        except InvalidCursor as exc:
            raise ApiError(400, "bad_cursor", f"in the compound cursor, topic {topic!r}: {exc}") from None
        positions[topic] = cursor
    return positions


def compound_resume_cursor(request: Request, topics: Sequence[str], max_topics: int) -> dict[str, str]:
    """Where each of ``topics`` resumes: the request's compound cursor, read like
    :func:`resume_cursor` reads a cursor (``Last-Event-ID``, ``last_event_id``, ``since``).

    Returns:
        topic -> cursor, for the requested topics the cursor names. A topic it does not
        name has no position (the caller starts it live); a topic it names that was not
        requested is ignored (a page may follow fewer topics than before).

    Raises:
        ApiError: 400 ``bad_cursor`` (see :func:`parse_compound`).
    """
    positions = parse_compound(_resume_value(request) or "", max_topics)
    return {topic: positions[topic] for topic in topics if topic in positions}


def read_limit(request: Request) -> int:
    """The ``limit`` query parameter: 1..1000, default 50.

    Raises:
        ApiError: 400 ``bad_limit`` when it is not an integer in range.
    """
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    # isascii: str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)
