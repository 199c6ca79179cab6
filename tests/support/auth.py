"""Tokens for access-control tests: signed with PyJWT, as an identity provider would."""

from __future__ import annotations

import time

import jwt

SECRET = "test-secret-of-at-least-32-bytes-0123456789"
AUDIENCE = "switchboard-tests"


def mint(sub: str, *, subscribe=(), publish=(), ttl: float = 300, secret: str = SECRET,
         audience: str | None = AUDIENCE, algorithm: str = "HS256", **claims) -> str:
    """A token for ``sub`` with these permission patterns, valid for ``ttl`` seconds
    (negative: already expired)."""
    payload = {"sub": sub, "exp": int(time.time() + ttl),
               "switchboard": {"subscribe": list(subscribe), "publish": list(publish)}, **claims}
    if audience is not None:
        payload["aud"] = audience
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_env(**extra: str) -> dict[str, str]:
    """Server settings with access control on (HS256, audience checked)."""
    return {"SWITCHBOARD_AUTH_SECRET": SECRET, "SWITCHBOARD_AUTH_AUDIENCE": AUDIENCE, **extra}
