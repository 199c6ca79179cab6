"""The access-control core without a server: token verification, tickets, decisions."""

from __future__ import annotations

import time

import jwt
import pytest

from app.auth import Access, Forbidden, TokenVerifier, Unauthorized
from app.auth.tickets import TicketBook
from app.config import ConfigError, Settings
from app.hub.memory import MemoryBackend
from tests.support.auth import AUDIENCE, SECRET, mint
from tests.support.auth_helpers import rsa_key, write_public_pem


def settings(**overrides) -> Settings:
    return Settings.load(environ={}, overrides={"auth_secret": SECRET, "auth_audience": AUDIENCE, **overrides})


def access(**overrides) -> Access:
    return Access(settings(**overrides), "ticket-signing-key", MemoryBackend(10, 60).claim_once)


class TestTokenVerifier:
    verifier = TokenVerifier(secret=SECRET, audience=AUDIENCE)

    def test_a_valid_token_gives_its_identity(self):
        identity = self.verifier.verify(
            mint("alice", subscribe=["user.{sub}"], publish=["chat"], name="Alice"), "bearer"
        )
        assert (identity.sub, identity.sender, identity.via) == ("alice", "Alice", "bearer")
        assert identity.may("subscribe", "user.alice") and not identity.may("subscribe", "user.bob")
        assert identity.may("publish", "chat") and not identity.may("subscribe", "chat")
        assert 290 < identity.seconds_left() <= 300

    # Tokens are minted when the test runs, not when it is collected: a suite that takes
    # longer than a token's lifetime must not turn "bad pattern" into "expired".
    @pytest.mark.parametrize(
        "make, expired",
        [
            (lambda: mint("alice", lifetime=-1), True),
            (lambda: mint("alice", secret="x" * 40), False),
            (lambda: mint("alice", audience="other"), False),
            (lambda: mint("alice", audience=None), False),
            (lambda: jwt.encode({"exp": int(time.time()) + 60, "aud": AUDIENCE}, SECRET, algorithm="HS256"), False),
            (lambda: jwt.encode({"sub": "a", "aud": AUDIENCE}, SECRET, algorithm="HS256"), False),
            (
                lambda: jwt.encode({"sub": "a", "exp": int(time.time()) + 60, "aud": AUDIENCE}, None, algorithm="none"),
                False,
            ),
            (lambda: mint("alice", switchboard={"subscribe": "chat"}), False),
            (lambda: mint("alice", switchboard={"subscribe": ["a..b"]}), False),
            (lambda: mint("alice", switchboard=["chat"]), False),
            (lambda: "not.a.jwt", False),
            (lambda: "x" * 9000, False),
        ],
        ids=[
            "expired",
            "bad signature",
            "other audience",
            "no audience",
            "no sub",
            "no exp",
            "alg none",
            "permissions not a list",
            "bad pattern",
            "permissions not an object",
            "not a jwt",
            "oversized",
        ],
    )
    def test_a_failing_token_is_unauthorized_with_invalid_token(self, make, expired):
        with pytest.raises(Unauthorized) as caught:
            self.verifier.verify(make(), "bearer")
        assert caught.value.invalid_token and caught.value.expired is expired

    def test_only_an_hs256_secret_mints(self):
        token = self.verifier.mint({"sub": "a", "exp": int(time.time()) + 60, "aud": AUDIENCE})
        assert self.verifier.verify(token, "bearer").sub == "a"


class TestTickets:
    def book(self, ttl=30.0) -> TicketBook:
        return TicketBook("ticket-signing-key", MemoryBackend(10, 60).claim_once, ttl)

    def test_a_ticket_works_once_and_carries_the_permissions_and_expiry(self):
        identity = TokenVerifier(secret=SECRET, audience=AUDIENCE).verify(
            mint("alice", subscribe=["user.{sub}"], lifetime=100), "bearer"
        )
        book = self.book()
        ticket, expires_in = book.issue(identity)
        assert expires_in == 30
        redeemed = book.redeem(ticket)
        assert (redeemed.sub, redeemed.via, redeemed.expires_at) == ("alice", "ticket", identity.expires_at)
        assert redeemed.may("subscribe", "user.alice") and not redeemed.may("subscribe", "user.bob")
        with pytest.raises(Unauthorized, match="already used"):
            book.redeem(ticket)

    def test_a_ticket_never_outlives_its_token(self):
        identity = TokenVerifier(secret=SECRET, audience=AUDIENCE).verify(mint("alice", lifetime=5), "bearer")
        assert self.book().issue(identity)[1] <= 5

    def test_forged_and_foreign_tickets_are_refused(self):
        identity = access().anonymous("guest")
        ticket, _ = self.book().issue(identity)
        other = TicketBook("another-signing-key", MemoryBackend(10, 60).claim_once)
        for bad in (ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB"), "", "x" * 20000):
            with pytest.raises(Unauthorized):
                self.book().redeem(bad)
        with pytest.raises(Unauthorized):
            other.redeem(ticket)


class TestDecisions:
    def test_open_mode_allows_everything_and_reads_no_credentials(self):
        control = Access(Settings.load(environ={}), "k", MemoryBackend(10, 60).claim_once)
        guest = control.anonymous("guest-1")
        control.authorize(guest, "publish", "anything", "http")
        assert control.credentials({"HTTP_AUTHORIZATION": "Bearer garbage"}) is None

    def test_anonymous_is_refused_with_401_and_a_token_with_403(self):
        control = access(anonymous_subscribe=("open.*",))
        guest = control.anonymous("guest-1")
        control.authorize(guest, "subscribe", "open.news", "sse")
        with pytest.raises(Unauthorized):
            control.authorize(guest, "subscribe", "closed", "sse")
        alice = control.credentials({"HTTP_AUTHORIZATION": f"Bearer {mint('alice', subscribe=['chat'])}"})
        control.authorize(alice, "subscribe", "chat", "sse")
        with pytest.raises(Forbidden):
            control.authorize(alice, "subscribe", "closed", "sse")

    def test_an_identity_whose_token_expired_is_refused(self):
        control = access()
        alice = control.credentials({"HTTP_AUTHORIZATION": f"Bearer {mint('alice', subscribe=['chat'], lifetime=1)}"})
        later = type(alice)(alice.sender, alice.sub, alice.subscribe, alice.publish, time.time() - 1, alice.via)
        with pytest.raises(Unauthorized) as caught:
            control.authorize(later, "subscribe", "chat", "sse")
        assert caught.value.expired

    def test_a_verified_token_is_not_verified_again_until_it_expires(self):
        control = access()
        token = mint("alice", subscribe=["chat"], lifetime=60)
        first = control.verify(token, "bearer")
        assert control.verify(token, "cookie").via == "cookie" and control.verify(token, "bearer") is first
        with pytest.raises(Unauthorized):
            control.verify(token + "x", "bearer")  # another string: verified on its own
        expired = type(first)(first.sender, first.sub, first.subscribe, first.publish, time.time() - 1, first.via)
        control._verified[token] = expired
        with pytest.raises(Unauthorized):  # an expired cache entry is no shortcut
            control.verify(mint("alice", lifetime=-1), "bearer")
        assert control.verify(token, "bearer").seconds_left() > 0, "re-verified, not the stale entry"

    def test_credentials_are_read_once_per_request(self):
        control = access()
        environ = {"HTTP_AUTHORIZATION": f"Bearer {mint('alice')}"}
        first = control.credentials(environ)
        environ["HTTP_AUTHORIZATION"] = "Bearer now-garbage"
        assert control.credentials(environ) is first


class TestSettings:
    def test_only_one_key_source(self, tmp_path):
        pem = write_public_pem(rsa_key(), tmp_path / "key.pem")
        with pytest.raises(ConfigError, match="only one"):
            Settings.load(environ={"SWITCHBOARD_AUTH_SECRET": SECRET, "SWITCHBOARD_AUTH_PUBLIC_KEY": str(pem)})

    @pytest.mark.parametrize(
        "name, value",
        [
            ("SWITCHBOARD_AUTH_SECRET", "short"),
            ("SWITCHBOARD_AUTH_PUBLIC_KEY", "/nonexistent.pem"),
            ("SWITCHBOARD_AUTH_JWKS_URL", "ftp://x"),
            ("SWITCHBOARD_ANONYMOUS_SUBSCRIBE", "ok,a..b"),
            ("SWITCHBOARD_DEMO_USERS", "Alice!"),
        ],
    )
    def test_bad_values_name_the_variable(self, name, value):
        with pytest.raises(ConfigError, match=name):
            Settings.load(environ={name: value})

    def test_demo_users_need_an_hs256_secret(self):
        with pytest.raises(ConfigError, match="SWITCHBOARD_DEMO_USERS needs SWITCHBOARD_AUTH_SECRET"):
            Settings.load(environ={"SWITCHBOARD_DEMO_USERS": "alice"})
