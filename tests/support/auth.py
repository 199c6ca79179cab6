"""Tokens for tests of access control: HS256 JWTs minted with PyJWT, as an identity
provider would, and the server settings that verify them."""

from __future__ import annotations

import json
import time

import jwt
import requests

from .timing import scaled

SECRET = "switchboard-test-secret-0123456789abcdef"  # SWITCHBOARD_AUTH_SECRET needs 32+ characters
AUDIENCE = "switchboard-tests"
OTHER_SECRET = "some-other-identity-provider-0123456789"


def auth_env(**extra: str) -> dict[str, str]:
    """Settings of a server with access control on (key and audience)."""
    return {"SWITCHBOARD_AUTH_SECRET": SECRET, "SWITCHBOARD_AUTH_AUDIENCE": AUDIENCE, **extra}


def mint(
    sub: str = "alice",
    *,
    subscribe=(),
    publish=(),
    lifetime: float = 300.0,
    secret: str = SECRET,
    audience: str | None = AUDIENCE,
    name: str | None = None,
    **claims,
) -> str:
    """A token for ``sub`` that may follow ``subscribe`` and publish to ``publish`` (topic
    patterns), valid for ``lifetime`` seconds (negative: already expired); ``claims`` are
    added last (they may replace any of the others)."""
    if "ttl" in claims:
        raise TypeError("mint() takes the token's lifetime as lifetime=, not ttl=")
    extra = claims
    now = time.time()
    claims = {
        "sub": sub,
        "iat": int(now),
        "exp": now + lifetime,
        "switchboard": {"subscribe": list(subscribe), "publish": list(publish)},
    }
    if audience is not None:
        claims["aud"] = audience
    if name is not None:
        claims["name"] = name
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")


def bad_tokens() -> dict[str, str]:
    """Tokens that must be refused, by what is wrong with them (each would allow everything)."""
    return {
        "bad signature": mint(subscribe=["**"], publish=["**"], secret=OTHER_SECRET),
        "expired": mint(subscribe=["**"], publish=["**"], lifetime=-60),
        "wrong audience": mint(subscribe=["**"], publish=["**"], audience="someone-else"),
        "malformed": "not.a-jwt",
    }


ADMIN = {"sub": "auditor", "subscribe": ["**"], "publish": ["**"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def history(base: str, topic: str) -> list[dict]:
    """Every event of ``topic`` in history, read over HTTP with an all-topics token."""
    res = requests.get(f"{base}/api/topics/{topic}/events", headers=bearer(mint(**ADMIN)), timeout=scaled(10))
    assert res.status_code == 200, res.text
    return res.json()["events"]


def publish(base: str, topic: str, data, token: str | None = None) -> dict:
    """Publish over HTTP with a Bearer token (an all-topics one by default); the stored event."""
    res = requests.post(
        f"{base}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers={"Content-Type": "application/json", **bearer(token or mint(**ADMIN))},
        timeout=scaled(10),
    )
    assert res.status_code == 201, res.text
    return res.json()


def refusals(base: str, code: str, transport: str) -> float:
    """``switchboard_auth_refusals_total{code, transport}`` as /metrics shows it now."""
    res = requests.get(f"{base}/metrics", timeout=scaled(10))
    assert res.status_code == 200
    wanted = f'switchboard_auth_refusals_total{{code="{code}",transport="{transport}"}}'
    for line in res.text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
