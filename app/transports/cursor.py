"""The one place a resume cursor and the paging limits are read from an HTTP request.

Every HTTP transport resumes the same way: the client hands back the last event id it
saw. Browsers' EventSource sends it as the ``Last-Event-ID`` header on reconnect, but
cannot set headers on the first connection, so a ``last_event_id`` query parameter is
accepted too; polling styles use ``since``.
"""

from __future__ import annotations

from flask import Request

from ..errors import ApiError
from ..events import Cursor, InvalidCursor

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


def resume_cursor(request: Request) -> str | None:
    """The cursor the client resumes after, or None for "no position".

    Looks at, in order: the ``Last-Event-ID`` header, the ``last_event_id`` query
    parameter, the ``since`` query parameter. An empty value means no position.

    Raises:
        ApiError: 400 ``bad_cursor`` when the value is not a cursor at all. (A
            well-formed cursor of another epoch is not an error: the hub answers it
            with a gap.)
    """
    for value in (request.headers.get("Last-Event-ID"), request.args.get("last_event_id"),
                  request.args.get("since")):
        if value is None:
            continue
        if value == "":
            return None
        try:
            Cursor.parse(value)
        except InvalidCursor as exc:
            raise ApiError(400, "bad_cursor", str(exc)) from None
        return value
    return None


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
