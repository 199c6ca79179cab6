"""Long polling: the server holds the request until there is news or a timeout.

The client loops ``GET /api/topics/<topic>/long-poll?since=<cursor>``:

* anything newer than ``since`` already in history: answered at once (200);
* otherwise the request parks on a hub subscription that starts *at* ``since``, so an
  event published between two of the client's requests is replayed, never lost (the
  seed's demo has no cursor and loses exactly those);
* on wake-up it drains: the first item with the timeout, then everything already
  queued, up to ``limit``, in one answer (python-engineio's ``poll()`` does the same);
* nothing within the timeout: ``204 No Content``; the client asks again with the same
  cursor.

A 200 has the polling body ``{"events", "cursor", "gap"}``. A parked request costs one
greenlet and one subscription; both end at the timeout at the latest, whether or not
the client is still there (a WSGI server notices a gone client only when it writes).
A parked request counts against the connection limits (``app/limits.py``): beyond them
it is answered 503 or 429 with ``Retry-After`` instead of parking. On shutdown every
parked request is answered 204 at once (DESIGN.md §8); the client polls again.
"""

from __future__ import annotations

import logging
import math

from flask import Blueprint, Flask, Request, Response, jsonify, request

from .. import limits, state
from ..auth import Unauthorized
from ..auth.web import authorize
from ..errors import ApiError
from ..events import Event, Gap, Page, check_topic
from ..hub import SubscriptionClosed
from .cursor import read_limit, resume_cursor

log = logging.getLogger(__name__)

bp = Blueprint("longpoll", __name__)


def read_timeout(req: Request, maximum: float) -> float:
    """The ``timeout`` query parameter in seconds, clamped to ``maximum`` (its default).

    Raises:
        ApiError: 400 ``bad_timeout`` when it is not a finite, non-negative number.
    """
    raw = req.args.get("timeout")
    if raw is None or raw == "":
        return maximum
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "bad_timeout", f"timeout must be a number of seconds from 0 to {maximum:g}")
    return min(value, maximum)


def _answer(page: Page) -> Response:
    response = jsonify(page.to_dict())
    response.headers["Cache-Control"] = "no-store"
    return response


def _no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/topics/<topic>/long-poll")
def long_poll(topic: str) -> Response:
    """Answer with the events after ``since`` now, or park until one arrives (200) or the timeout (204)."""
    check_topic(topic)
    identity = authorize("subscribe", topic, "long-polling")
    since = resume_cursor(request)
    limit = read_limit(request)
    timeout = read_timeout(request, state.settings().longpoll_timeout)
    token_left = identity.seconds_left()
    hub = state.hub()

    if since:
        page = hub.history(topic, since=since, limit=limit)
        if page.events or page.gap:
            state.metrics().delivered.labels("long-polling").inc(len(page.events))
            if page.gap:
                state.metrics().gaps.labels("resume").inc()
            return _answer(page)

    slot = limits.current().open_stream(request.environ, "long-polling")  # or 503/429
    try:
        # Starts at ``since``: whatever is published from here on (or was, since the
        # history read above) is replayed or queued live, exactly once (seam rule).
        sub = hub.subscribe(topic, since=since)
    except SubscriptionClosed:
        slot.release()
        raise ApiError(503, "shutting_down", "the server is shutting down; poll again shortly",
                       {"Retry-After": "1"}) from None
    except BaseException:
        slot.release()
        raise
    metrics = state.metrics()
    with slot, sub, metrics.connection("long-polling"):
        metrics.long_polls_parked.inc()
        try:
            # A parked poll never outlives its token: it wakes at exp and answers 401.
            items = sub.get_many(limit, timeout if token_left is None else max(0.0, min(timeout, token_left)))
        except SubscriptionClosed:  # hub shutdown (DESIGN.md §8): the client polls again
            items = []
        finally:
            metrics.long_polls_parked.dec()

    events = [item for item in items if isinstance(item, Event)]
    gap = any(isinstance(item, Gap) for item in items)
    if any(isinstance(item, Gap) and item.slow for item in items):
        log.info("slow consumer dropped: client %s, transport long-polling, topic %s: its queue and history "
                 "overflowed while parked; answered gap:true", slot.client, topic)
    if not events and not gap:
        if token_left is not None and identity.seconds_left() <= 0:
            raise Unauthorized("the token expired while the poll was parked", invalid_token=True, expired=True)
        return _no_content()
    metrics.delivered.labels("long-polling").inc(len(events))
    return _answer(Page(events, events[-1].id if events else (since or ""), gap))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
