"""The demo sign-in: a short-lived HS256 token for a name in ``SWITCHBOARD_DEMO_USERS``.

No password: whoever can reach the index page may be alice. It exists to show access
control on every transport (README "Try access control"), and only when demo users are
configured; never set them in production.

What a demo token allows (``switchboard`` claim):

- subscribe: ``chat``, ``ticks``, ``user.{sub}`` (the user's private topic);
  publish: ``chat``, ``user.{sub}``.
- both, on the demo pages' work queues (:data:`DEMO_QUEUES`: the STOMP page's two consumers
  and the compare page's), as ``queue.<name>``: consume needs subscribe, send needs publish.
- The first demo user (alice in ``make run-auth``) is also the only member of
  :data:`MEMBERS_ROOM`, to follow and to post. So alice and bob see different things: each
  is refused the other's private topic (403), and bob is refused the members room (403).
"""

from __future__ import annotations

import time
from typing import Sequence

from flask import Blueprint, Flask, Response, jsonify, request

from ..errors import ApiError
from ..events import parse_json
from ..services import services
from . import web

__all__ = ["DEMO_QUEUES", "DEMO_TOKEN_SECONDS", "MEMBERS_ROOM", "demo_claims", "demo_topics", "init_app"]

DEMO_TOKEN_SECONDS = 15 * 60  # short: a demo token is a bearer of alice's name for its whole life
MEMBERS_ROOM = "room.members"
#: The work queues the demo pages consume from, by page: /stomp's two consumers, /compare's.
DEMO_QUEUES = {"stomp": "jobs", "compare": "compare.jobs"}

bp = Blueprint("auth_demo", __name__)


def demo_claims(
    name: str, users: Sequence[str], now: float, audience: str | None = None, issuer: str | None = None
) -> dict:
    """The claims of ``name``'s demo token (see the module docstring for what they allow)."""
    queues = [f"queue.{name}" for name in DEMO_QUEUES.values()]
    subscribe = ["chat", "ticks", "user.{sub}", *queues]
    publish = ["chat", "user.{sub}", *queues]
    if users and name == users[0]:
        subscribe.append(MEMBERS_ROOM)
        publish.append(MEMBERS_ROOM)
    claims = {
        "sub": name,
        "iat": int(now),
        "exp": int(now) + DEMO_TOKEN_SECONDS,
        "switchboard": {"subscribe": subscribe, "publish": publish},
    }
    # The server checks aud and iss when they are configured: the demo's tokens must pass too.
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return claims


def demo_topics(users: Sequence[str]) -> list[str]:
    """The topics the index page's "what may I see" table tries, one row each."""
    return [MEMBERS_ROOM, *(f"user.{name}" for name in users)]


def _requested_user(users: Sequence[str]) -> str:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", 'send {"user": "<name>"} as Content-Type: application/json')
    try:
        body = parse_json(request.get_data(cache=False))
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    name = body.get("user") if isinstance(body, dict) else None
    if not isinstance(name, str) or name not in users:
        raise ApiError(400, "unknown_user", f'the demo users are {", ".join(users)}; send {{"user": "<one of them>"}}')
    return name


@bp.post("/api/demo/session")
def open_demo_session() -> Response:
    """Sign in as a demo user: mint a short-lived token, keep it in the HttpOnly cookie."""
    access = services().access
    access.check_same_origin(request.environ)  # a cookie-setting POST: refuse other sites (CSRF)
    settings = services().settings
    name = _requested_user(settings.demo_users)
    token = access.verifier.mint(
        demo_claims(name, settings.demo_users, time.time(), settings.auth_audience, settings.auth_issuer)
    )
    identity = access.verify(token, "cookie")
    # The token is in the body too, for the SSE page's fetch() reader (a Bearer header): a
    # demo shortcut. A real page keeps a token out of reach of scripts, in the cookie only.
    response = jsonify(token=token, sub=identity.sub, expires_in=DEMO_TOKEN_SECONDS)
    response.headers["Cache-Control"] = "no-store"
    web.set_token_cookie(response, token, identity)
    return response


def init_app(app: Flask, settings) -> None:
    """Serve ``POST /api/demo/session`` only when ``settings.demo_users`` names someone (else 404)."""
    if settings.demo_users:
        app.register_blueprint(bp)
