"""Sending to work queues and user destinations over HTTP (what STOMP SEND does to them).

``POST /api/queues/<name>/messages`` puts one message in work queue ``<name>`` (STOMP
``/queue/<name>``), kept until one consumer has acknowledged it; ``POST
/api/users/<sub>/queue/<name>/events`` publishes to every session of user ``<sub>``
subscribed to ``/user/queue/<name>`` (the hub topic ``user.<sub>.queue.<name>``). The body
is the topic publish's, ``{"type"?, "data", "headers"?}``; the sender is the caller.
Access: ``publish`` on ``queue.<name>``, and on ``user.<sub>`` unless the caller is ``<sub>``.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from .api import read_publish_body
from .auth import Unauthorized
from .auth.web import authorize, request_identity
from .errors import ApiError, error_response
from .events import NAME_RULE, check_topic
from .hub import QueueFull
from .services import services
from .transports.stomp_destinations import QUEUE_NAME_RE, USER_SUB_RE, user_topic

__all__ = ["bp", "queue_envelope"]

bp = Blueprint("queues_api", __name__)


def queue_envelope(event) -> dict:
    """A queue message as JSON: the event's form, its ``topic`` named ``queue``."""
    body = event.to_dict()
    queue = body.pop("topic")
    return {"id": body.pop("id"), "queue": queue, **body}


def _check_queue(name: str) -> None:
    if not QUEUE_NAME_RE.match(name):
        raise ApiError(
            400, "bad_queue", f"a queue is 1-100 characters of {NAME_RULE}, and starts with a letter or digit"
        )


@bp.post("/api/queues/<name>/messages")
def send(name: str) -> tuple[Response, int]:
    """Put one message in a work queue; 201 with the stored message, 429 when the queue is full."""
    _check_queue(name)
    identity = authorize("publish", f"queue.{name}", "http")
    type_, data, headers = read_publish_body()
    try:
        event = services().hub.enqueue(name, data, type=type_, sender=identity.sender, headers=headers)
    except QueueFull as exc:
        return error_response(
            429, "queue_full", f"{exc}; nothing was stored (nothing is dropped to make room)", {"Retry-After": "1"}
        )
    response = jsonify(queue_envelope(event))
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.post("/api/users/<sub>/queue/<name>/events")
def send_to_user(sub: str, name: str) -> tuple[Response, int]:
    """Publish to every session of user ``sub`` subscribed to /user/queue/<name>."""
    if not USER_SUB_RE.match(sub):
        raise ApiError(400, "bad_user", "a user is 1-64 characters of A-Z a-z 0-9 _ : - (no dot)")
    _check_queue(name)
    topic = check_topic(user_topic(sub, name))
    identity = request_identity()
    if identity.sub is None or identity.sub != sub:
        identity = authorize("publish", f"user.{sub}", "http")
    else:  # one's own user destination: no permission needed, but a live token and no CSRF
        left = identity.seconds_left()
        if left is not None and left <= 0:
            raise Unauthorized("the token has expired", invalid_token=True, expired=True)
        if identity.via == "cookie":
            services().access.check_same_origin(request.environ)
    type_, data, headers = read_publish_body()
    event = services().hub.publish(topic, data, type=type_, sender=identity.sender, headers=headers)
    response = jsonify(event.to_dict())
    response.headers["Cache-Control"] = "no-store"
    return response, 201
