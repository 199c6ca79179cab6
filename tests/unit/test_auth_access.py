"""Access.credentials on a bare WSGI environ: how a WebSocket handshake is judged before
the 101, where no Flask hook runs (the HTTP views are tested end to end in tests/e2e)."""

from __future__ import annotations

import secrets

import jwt
import pytest

from app.auth import Access, TokenInUrl, Unauthorized
from app.config import Settings

SECRET = secrets.token_urlsafe(40)


@pytest.fixture
def access() -> Access:
    claimed: set[str] = set()

    def claim_once(name: str, ttl: float) -> bool:
        if name in claimed:
            return False
        claimed.add(name)
        return True

    return Access(Settings.load({}, {"auth_secret": SECRET}), "k" * 32, claim_once)


def token(**extra) -> str:
    import time

    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 60, **extra}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "query",
    ["token=x", "access_token=x", "token", "a=1&token=", "%74oken=x", "access%5Ftoken=x", "x=1&%61ccess_token=y"],
)
def test_a_token_in_the_query_is_refused_however_spelt(access, query):
    with pytest.raises(TokenInUrl):
        access.credentials({"QUERY_STRING": query, "HTTP_AUTHORIZATION": f"Bearer {token()}"})


@pytest.mark.parametrize("query", ["tokens=x", "TOKEN=x", "since=1-2", "", "my_token=x"])
def test_other_names_pass(access, query):
    identity = access.credentials({"QUERY_STRING": query, "HTTP_AUTHORIZATION": f"Bearer {token()}"})
    assert identity.sub == "alice"


def test_a_ticket_is_read_whatever_its_name_encoding_and_works_once(access):
    identity = access.credentials({"HTTP_AUTHORIZATION": f"Bearer {token()}"})
    ticket, _ = access.tickets.issue(identity)
    assert access.credentials({"QUERY_STRING": f"%74icket={ticket}"}).sub == "alice"
    with pytest.raises(Unauthorized, match="once"):
        access.credentials({"QUERY_STRING": f"ticket={ticket}"})


def test_computed_once_per_environ(access):
    identity = access.credentials({"HTTP_AUTHORIZATION": f"Bearer {token()}"})
    ticket, _ = access.tickets.issue(identity)
    environ = {"QUERY_STRING": f"ticket={ticket}"}
    assert access.credentials(environ) is access.credentials(environ)  # the ticket is spent once, not twice
