"""Access control over HTTP: the identity of a Flask request, the session cookie and
ticket endpoints, and the refusal of tokens in URLs.

``POST /api/session`` turns a token into the HttpOnly cookie that EventSource and
WebSocket carry (they cannot send headers); ``DELETE /api/session`` clears it;
``POST /api/tickets`` trades a token for a single-use ``?ticket=`` for another origin.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, jsonify, request

from ..errors import ApiError, error_response
from ..events import parse_json
from ..identity import current_sender
from ..services import services
from .access import COOKIE_NAME, URL_TOKEN_PARAMS
from .errors import AccessError, TokenInUrl, Unauthorized
from .tokens import Identity

bp = Blueprint("auth", __name__)


def request_identity() -> Identity:
    """Who the current request is: its credentials' identity, else an anonymous guest.

    Raises:
        AccessError: a credential was presented and fails, or a token is in the URL.
    """
    identity = g.get("switchboard_identity")
    if identity is None:
        access = services().access
        identity = access.credentials(request.environ) or access.anonymous(current_sender())
        g.switchboard_identity = identity
    return identity


def authorize(action: str, topic: str, transport: str) -> Identity:
    """The request's identity, if it may ``action`` on ``topic``; refusals raise.

    A cookie-authenticated publish must also come from this origin (CSRF).
    """
    identity = request_identity()
    services().access.authorize(identity, action, topic, transport)
    if action == "publish" and identity.via == "cookie":
        services().access.check_same_origin(request.environ)
    return identity


def _token_from_request() -> str:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", invalid_token=True)
    if request.mimetype == "application/json":
        try:
            body = parse_json(request.get_data(cache=False))
        except ValueError as exc:
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
        if isinstance(body, dict) and isinstance(body.get("token"), str):
            return body["token"]
    raise Unauthorized('send the token as "Authorization: Bearer <token>" or as JSON {"token": "..."}')


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def set_token_cookie(response: Response, token: str, identity: Identity) -> None:
    """Put ``token`` in the HttpOnly cookie, for no longer than the token lives."""
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=services().access.cookie_max_age(identity),
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


@bp.post("/api/session")
def open_session() -> Response:
    """Verify a token and keep it in an HttpOnly cookie for EventSource and WebSocket."""
    services().access.check_same_origin(request.environ)
    token = _token_from_request()
    identity = services().access.verify(token, "cookie")
    response = _no_store(Response(status=204))
    set_token_cookie(response, token, identity)
    return response


@bp.delete("/api/session")
def close_session() -> Response:
    """Forget the token cookie."""
    services().access.check_same_origin(request.environ)
    response = _no_store(Response(status=204))
    response.delete_cookie(COOKIE_NAME, path="/", secure=request.is_secure, httponly=True, samesite="Strict")
    return response


@bp.post("/api/tickets")
def issue_ticket() -> Response:
    """Trade a Bearer token for a single-use ticket (``?ticket=`` on a stream's URL)."""
    identity = request_identity()
    if identity.via != "bearer":
        raise Unauthorized("a ticket is issued for a token sent as 'Authorization: Bearer <token>'")
    ticket, expires_in = services().access.tickets.issue(identity)
    return _no_store(jsonify(ticket=ticket, expires_in=expires_in))


def refusal(exc: AccessError, metrics) -> tuple[int, dict, tuple[tuple[str, str], ...]]:
    """An HTTP refusal: its status, JSON body and headers (``WWW-Authenticate`` on a 401,
    ``Retry-After`` on a 503), counted in ``switchboard_auth_refusals_total``. For the error
    handler, and for an answer given outside the request (a parked long poll's 401 at exp)."""
    metrics.auth_refusals.labels(exc.code, "http").inc()
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, Unauthorized):
        headers = (("WWW-Authenticate", exc.www_authenticate()),)
    elif exc.status == 503:
        headers = (("Retry-After", "1"),)
    return exc.status, {"error": exc.code, "message": exc.message}, headers


def init_app(app: Flask, metrics) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def refuse_tokens_in_urls() -> None:
        # Before any view, so that no route (a page, a 404) takes a token from a URL.
        for name in URL_TOKEN_PARAMS:
            if name in request.args:
                raise TokenInUrl(name)

    @app.errorhandler(AccessError)
    def refused(exc: AccessError):
        status, body, headers = refusal(exc, metrics)
        return error_response(status, body["error"], body["message"], dict(headers))
