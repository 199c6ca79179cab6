"""Tests for the STOMP session's access hooks (app.stomp.access), sans-I/O: an
authenticator that names a principal and an expiry, an authorizer per SUBSCRIBE and
SEND destination, and the session's end when the credentials expire."""

from __future__ import annotations

import pytest

from app.stomp import (
    TOKEN_EXPIRED,
    AccessDenied,
    AuthError,
    Connect,
    Credentials,
    Login,
    Send,
    StompSession,
    Subscribe,
)
from tests.unit.test_stomp_session import Client


class Gate:
    """A fake transport gate: principals by passcode, topics by principal."""

    def __init__(self, expires_in: float | None = None) -> None:
        self.expires_in = expires_in
        self.seen: list[Credentials] = []
        self.asked: list[tuple] = []

    def authenticate(self, credentials: Credentials) -> Login:
        self.seen.append(credentials)
        if credentials.passcode != "good":
            raise AuthError("authentication failed", "bad passcode")
        return Login(principal={"name": credentials.login or "anon"}, expires_in=self.expires_in)

    def authorize(self, principal, action: str, destination: str) -> None:
        self.asked.append((principal["name"], action, destination))
        if destination.endswith("/secret"):
            raise AccessDenied(f"forbidden: {destination}", "not yours", headers=[("destination", destination)])


def gated(gate: Gate, now: float = 0.0) -> Client:
    client = Client(now=now)
    client.session = StompSession(now=now, session_id="s1", authenticate=gate.authenticate, authorize=gate.authorize)
    return client


class TestAuthenticator:
    def test_the_principal_reaches_the_broker_and_the_session(self):
        gate = Gate()
        client = gated(gate)
        client.connect(login="alice", passcode="good", Authorization="Bearer x")
        (connect,) = client.requests()
        assert isinstance(connect, Connect) and connect.principal == {"name": "alice"}
        assert client.session.principal == {"name": "alice"}
        (credentials,) = gate.seen
        assert (credentials.login, credentials.passcode) == ("alice", "good")
        assert credentials.get("authorization") == "Bearer x", "headers are looked up case-insensitively"

    def test_a_refusal_is_an_auth_error_and_no_connect(self):
        client = gated(Gate())
        client.send("CONNECT", {"accept-version": "1.2", "passcode": "bad"})
        assert client.expect_error("authentication failed", "auth").body == b"bad passcode"
        assert client.session.principal is None and client.session.version is None

    @pytest.mark.parametrize("answer, accepted", [(True, True), (False, False), (Login("p"), True)])
    def test_plain_answers(self, answer, accepted):
        client = Client()
        client.session = StompSession(now=0.0, authenticate=lambda credentials: answer)
        client.send("CONNECT", {"accept-version": "1.2"})
        if accepted:
            assert client.frames()[0].command == "CONNECTED"
        else:
            assert client.error() == ("authentication failed", "auth")


class TestAuthorizer:
    def test_allowed_destinations_pass_with_the_principal(self):
        gate = Gate()
        client = gated(gate)
        client.connect(login="alice", passcode="good")
        client.requests()
        client.subscribe("0", "/topic/news")
        client.send("SEND", {"destination": "/topic/news"}, b"hi")
        assert isinstance(client.requests()[0], Send)
        assert gate.asked == [("alice", "subscribe", "/topic/news"), ("alice", "publish", "/topic/news")]

    @pytest.mark.parametrize("command", ["SUBSCRIBE", "SEND"])
    def test_a_refused_destination_is_an_error_naming_it(self, command):
        client = gated(Gate())
        client.connect(passcode="good")
        client.requests()
        client.send(command, {"id": "1", "destination": "/topic/secret", "receipt": "r"})
        error = client.expect_error("forbidden: /topic/secret", "forbidden")
        assert error.get("destination") == "/topic/secret" and error.get("receipt-id") == "r"
        assert not any(isinstance(r, (Subscribe, Send)) for r in client.session.requests())
        assert not any(f.command == "RECEIPT" for f in client.frames())

    def test_a_send_in_a_transaction_is_checked_when_it_arrives(self):
        client = gated(Gate())
        client.connect(passcode="good")
        client.requests()
        client.send("BEGIN", {"transaction": "t"})
        client.send("SEND", {"destination": "/topic/secret", "transaction": "t"}, b"x")
        assert client.error() == ("forbidden: /topic/secret", "forbidden")


class TestExpiry:
    def test_the_session_ends_with_token_expired_at_the_deadline(self):
        client = gated(Gate(expires_in=30.0), now=100.0)
        client.connect(passcode="good")
        client.requests()
        assert client.session.next_deadline() == 130.0
        client.session.tick(129.9)
        assert not client.session.closed
        client.session.tick(130.0)
        assert client.error() == (TOKEN_EXPIRED, "auth")
        assert client.session.next_deadline() is None

    def test_heart_beats_and_expiry_share_the_deadline(self):
        client = gated(Gate(expires_in=0.5))
        client.connect(passcode="good", heart_beat="0,1000")
        assert client.session.next_deadline() == 0.5  # earlier than the 1 s heart-beat

    def test_no_expiry_without_one(self):
        client = gated(Gate())
        client.connect(passcode="good")
        assert client.session.next_deadline() is None
