"""Publishing over HTTP, health and identity endpoints."""

from __future__ import annotations

import gc
import hmac
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from gevent import Greenlet

from .auth.web import authorize, request_identity
from .errors import ApiError, error_response
from .events import InvalidHeaders, check_headers, check_topic, parse_json
from .hub import BackendUnavailable
from .services import services

bp = Blueprint("api", __name__)

_PUBLISH_FIELDS = {"type", "data", "headers"}


def read_publish_body() -> tuple[str, Any, tuple[tuple[str, str], ...]]:
    """The ``(type, data, headers)`` of a publish request, or an ApiError naming what is wrong."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the event as Content-Type: application/json")
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: werkzeug raises 413
    try:
        body = parse_json(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", 'the body must be a JSON object like {"type": "message", "data": ...}')
    unknown = set(body) - _PUBLISH_FIELDS
    if unknown:
        hint = " (the server sets the sender)" if "sender" in unknown else ""
        raise ApiError(400, "bad_body", f"unknown field(s): {', '.join(sorted(unknown))}{hint}")
    if "data" not in body:
        raise ApiError(400, "bad_body", 'the body needs a "data" field')
    headers = body.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise ApiError(400, "bad_headers", 'headers must be an object of strings, like {"x-trace": "abc"}')
    try:
        return body.get("type", "message"), body["data"], check_headers(headers)
    except InvalidHeaders as exc:
        raise ApiError(400, "bad_headers", str(exc)) from None


@bp.post("/api/topics/<topic>/events")
def publish(topic: str) -> tuple[Response, int]:
    """Publish one event; the sender is the caller's session, never the body."""
    check_topic(topic)
    identity = authorize("publish", topic, "http")
    type_, data, headers = read_publish_body()
    event = services().hub.publish(topic, data, type=type_, sender=identity.sender, headers=headers)
    text = event.json()  # built once for every transport (and the history's byte count)
    if text.isascii():  # then it is byte for byte what jsonify writes (ensure_ascii, compact)
        response = Response(text + "\n", mimetype="application/json")
    else:
        response = jsonify(event.to_dict())
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.get("/api/topics/<topic>/presence")
def presence(topic: str) -> Response:
    """Tell who is in the topic now: each user once, however many connections they hold."""
    check_topic(topic)
    authorize("subscribe", topic, "http")
    hub = services().hub
    if not hub.presence.tracked(topic):
        raise ApiError(404, "no_presence", f"topic {topic!r} has no presence (SWITCHBOARD_PRESENCE_TOPICS)")
    members = hub.presence.members(topic)
    response = jsonify(topic=topic, count=len(members), members=members)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/whoami")
def whoami() -> Response:
    """Tell the page who it is: its sender name and, with a token, its subject and permissions."""
    identity = request_identity()
    left = identity.seconds_left()
    response = jsonify(
        sender=identity.sender,
        sub=identity.sub,
        via=identity.via,
        expires_in=None if left is None else max(0, int(left)),
        subscribe=list(identity.subscribe.patterns),
        publish=list(identity.publish.patterns),
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Liveness, the backend's state, and the server clock (pages measure their offset to it)."""
    hub = services().hub
    status = hub.status()
    body = {
        "status": "ok" if status["healthy"] else "degraded",
        "backend": status["backend"],
        "backend_healthy": status["healthy"],
        "epoch": status["epoch"],
        "subscribers": hub.subscriber_count(),
        "time": time.time(),
    }
    if "details" in status:  # Redis: mode, routing, each shard's connection, resubscribes, failovers
        body["redis"] = status["details"]
    if request.args.get("greenlets") == "1":
        # On request only (a heap walk): the live greenlets of this worker, for capacity tests.
        body["greenlets"] = sum(1 for obj in gc.get_objects() if isinstance(obj, Greenlet) and not obj.dead)
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text metrics (every worker's, under gunicorn)."""
    expected = services().settings.metrics_token
    if expected is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return error_response(
                401,
                "unauthorized",
                "/metrics needs SWITCHBOARD_METRICS_TOKEN as a Bearer token",
                {"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    hub = services().hub
    registry = services().metrics
    status = hub.status()
    registry.backend_up.labels(status["backend"]).set(1 if status["healthy"] else 0)
    if "details" in status:
        registry.redis_status(status["details"])
    try:
        topics = hub.topic_count()
    except BackendUnavailable:  # backend_up already says so; the last count stays
        topics = None
    if topics is not None:
        registry.topics.set(topics)
    try:
        registry.show_queues(hub.queue_stats())
    except BackendUnavailable:  # as above: the last reading stays
        pass
    body, content_type = registry.render()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
