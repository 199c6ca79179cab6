"""Interval polling: the client asks "anything after my cursor?" on a timer.

The cheapest answer to "nothing new" is ``304 Not Modified``: the cursor doubles as
the ``ETag``, so a client that sends ``If-None-Match`` with its cursor gets an empty
304 instead of a JSON body.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request

from .. import state
from ..auth.web import authorize
from .cursor import read_limit, resume_cursor

bp = Blueprint("polling", __name__)


@bp.get("/api/topics/<topic>/events")
def poll(topic: str) -> Response:
    """Return the events after ``since`` (or the newest ones), or 304 if nothing changed."""
    authorize("subscribe", topic, "polling")
    page = state.hub().history(topic, since=resume_cursor(request), limit=read_limit(request))
    if page.cursor and not page.gap and page.cursor in request.if_none_match:
        response = Response(status=304)
    else:
        response = jsonify(page.to_dict())
        metrics = state.metrics()
        metrics.delivered.labels("polling").inc(len(page.events))
        if page.gap:
            metrics.gaps.labels("resume").inc()
    if page.cursor:
        response.set_etag(page.cursor)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
