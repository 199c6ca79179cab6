"""The one place where failures become HTTP answers: JSON ``{"error", "message"}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .events import InvalidCursor, InvalidEventType, InvalidTopic
from .hub import BackendUnavailable

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """A client-facing error with its status, a stable code and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def unavailable_answer(exc: BackendUnavailable) -> tuple[int, dict, tuple[tuple[str, str], ...]]:
    """The answer to a failed read or write of the event store: status, JSON body, headers
    (for the error handler, and for an answer given outside the request)."""
    return (
        503,
        {"error": "backend_unavailable", "message": f"the event store is unavailable: {exc}"},
        (("Retry-After", "1"),),
    )


INTERNAL_ERROR = (500, {"error": "internal", "message": "the server failed to handle this request"}, ())


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(InvalidTopic)
    def bad_topic(exc):
        return error_response(400, "bad_topic", str(exc))

    @app.errorhandler(InvalidCursor)
    def bad_cursor(exc):
        return error_response(400, "bad_cursor", str(exc))

    @app.errorhandler(InvalidEventType)
    def bad_type(exc):
        return error_response(400, "bad_type", str(exc))

    @app.errorhandler(BackendUnavailable)
    def unavailable(exc):
        status, body, headers = unavailable_answer(exc)
        return error_response(status, body["error"], body["message"], dict(headers))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = _CODES.get(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"))
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"the body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        response = error_response(exc.code or 500, code, message)
        for name, value in exc.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.error("unhandled error", exc_info=exc)
        status, body, _ = INTERNAL_ERROR
        return error_response(status, body["error"], body["message"])
