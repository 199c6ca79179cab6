"""The access-control error family. Each transport turns these into its own answer in one
place: HTTP in ``app/errors.py``, ``/ws`` error ops, STOMP ``ERROR`` frames."""

from __future__ import annotations

__all__ = ["AccessError", "AuthUnavailable", "CrossOrigin", "Forbidden", "TokenInUrl", "Unauthorized"]

THREE_WAYS = (
    "send it as 'Authorization: Bearer <token>', or POST it to /api/session for an HttpOnly "
    "cookie, or exchange it at POST /api/tickets for a single-use ?ticket="
)


class AccessError(Exception):
    """A request refused by access control.

    Attributes:
        status: the HTTP status that answers it.
        code: the stable error code (``error`` in JSON, the ``/ws`` error op).
        message: human text; never contains a token.
    """

    status = 400
    code = "bad_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unauthorized(AccessError):
    """Who the client is is unknown: no token, or one that fails (RFC 6750 §3).

    Attributes:
        invalid_token: a token was presented and failed (bad signature, expired, wrong
            audience, malformed): ``WWW-Authenticate`` then carries ``error="invalid_token"``.
        expired: the token failed only because its ``exp`` has passed.
    """

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, invalid_token: bool = False, expired: bool = False):
        super().__init__(message)
        self.invalid_token = invalid_token
        self.expired = expired

    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header value (RFC 6750 §3)."""
        if self.invalid_token:
            return 'Bearer realm="switchboard", error="invalid_token"'
        return 'Bearer realm="switchboard"'


class Forbidden(AccessError):
    """A known identity asked for a topic it may not use."""

    status = 403
    code = "forbidden"

    def __init__(self, action: str, topic: str):
        super().__init__(f"you may not {action} to topic {topic!r}")
        self.action = action
        self.topic = topic


class CrossOrigin(AccessError):
    """A cookie-authenticated state change from another origin (CSRF)."""

    status = 403
    code = "cross_origin"


class TokenInUrl(AccessError):
    """A token in a URL query: it would end up in access logs and browser history."""

    status = 400
    code = "token_in_url"

    def __init__(self, name: str):
        super().__init__(f"a token in the URL (?{name}=) is refused, since URLs end up in logs; {THREE_WAYS}")


class AuthUnavailable(AccessError):
    """The decision hook or the key source could not answer: fail closed."""

    status = 503
    code = "auth_unavailable"
