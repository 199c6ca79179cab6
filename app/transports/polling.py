"""Interval polling: the client asks "anything after my cursor?" on a timer.

The cheapest answer to "nothing new" is ``304 Not Modified``: the cursor doubles as
the ``ETag``, so a client that sends ``If-None-Match`` with its cursor gets an empty
304 instead of a JSON body.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request

from ..auth import Identity
from ..auth.web import authorize
from ..hub import Hub
from ..identity import sender_is_new
from ..services import Services, services
from .cursor import read_limit, resume_cursor

bp = Blueprint("polling", __name__)


def count_poll(hub: Hub, topics: list[str], identity: Identity, hold: float = 0.0) -> None:
    """Count a poll toward presence: the poller is present in each topic for ``hold`` (a long
    poll's timeout) plus the presence TTL, renewed by its next poll. A client that sent
    neither a session cookie nor a token is a new guest on every request: not counted."""
    if identity.anonymous and sender_is_new():
        return
    for topic in topics:
        hub.presence.touch(topic, identity.sender, hold)


@bp.get("/api/topics/<topic>/events")
def poll(topic: str) -> Response:
    """Return the events after ``since`` (or the newest ones), or 304 if nothing changed."""
    identity = authorize("subscribe", topic, "polling")
    hub = services().hub
    page = hub.history(topic, since=resume_cursor(request), limit=read_limit(request))
    count_poll(hub, [topic], identity)
    if page.cursor and not page.gap and page.cursor in request.if_none_match:
        response = Response(status=304)
    else:
        response = jsonify(page.to_dict())
        metrics = services().metrics
        metrics.delivered.labels("polling").inc(len(page.events))
        if page.gap:
            metrics.gaps.labels("resume").inc()
    if page.cursor:
        response.set_etag(page.cursor)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask, services: Services) -> dict[str, tuple[str, ...]]:
    """Register the polling route (no WebSocket path)."""
    app.register_blueprint(bp)
    return {}
