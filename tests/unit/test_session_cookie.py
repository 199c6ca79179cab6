"""The guest's signed session cookie with its verification and signing cached
(app/session_cookie.py): the cache changes what a request costs, never what it is told."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from app import create_app
from app.session_cookie import SessionCookies

COOKIE = "switchboard_session"


@pytest.fixture
def app():
    app = create_app({"ticks": False})
    app.config["TESTING"] = True
    return app


def sender(app, cookie: str | None) -> tuple[str, str | None]:
    """The sender /api/whoami names for ``cookie`` (a raw value; None sends none), and the
    cookie value it answers with."""
    client = app.test_client(use_cookies=False)
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
    res = client.get("/api/whoami", headers=headers)
    assert res.status_code == 200
    value = None
    for header in res.headers.getlist("Set-Cookie"):
        if header.startswith(f"{COOKIE}="):
            value = header.split(";", 1)[0].split("=", 1)[1]
    return res.get_json()["sender"], value


def signed(app, data: dict, age: int = 0) -> str:
    """A cookie value as Flask signs it, ``age`` seconds ago."""

    class Then(URLSafeTimedSerializer):
        def make_signer(self, salt=None):
            signer = super().make_signer(salt)
            signer.get_timestamp = lambda: int(time.time()) - age  # type: ignore[method-assign]
            return signer

    stock = SecureCookieSessionInterface().get_signing_serializer(app)
    assert stock is not None
    then = Then(app.secret_key, salt=stock.salt, serializer=stock.serializer, signer_kwargs=stock.signer_kwargs)
    return then.dumps(data)


def test_the_app_uses_the_cached_interface(app):
    assert isinstance(app.session_interface, SessionCookies)


def test_a_cookie_keeps_its_name_and_is_signed_as_flask_signs_it(app):
    name, cookie = sender(app, None)
    assert name.startswith("guest-") and cookie
    for _ in range(3):  # the second and later requests come from the cache
        again, rewritten = sender(app, cookie)
        assert again == name
        assert rewritten is not None
        stock = SecureCookieSessionInterface().get_signing_serializer(app)
        assert stock is not None
        assert stock.loads(rewritten, max_age=3600)["sid"][:6] == name.removeprefix("guest-")


def test_a_tampered_cookie_is_refused_after_the_genuine_one_was_cached(app):
    name, cookie = sender(app, None)
    assert cookie is not None
    assert sender(app, cookie)[0] == name  # cached now
    payload, stamp, signature = cookie.rsplit(".", 2)
    forged_sid = signed(app, {"sid": "aaaaaaaaaaaa", "_permanent": True}).split(".")[0]
    for tampered in (
        # Another signature: its first character changed (the last one's low bits are base64
        # padding, so changing it may leave the signature's bytes as they were).
        f"{payload}.{stamp}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}",
        f"{forged_sid}.{stamp}.{signature}",  # another payload under the genuine signature
    ):
        other, _ = sender(app, tampered)
        assert other != name and other != "guest-aaaaaa", tampered


def test_a_changed_name_is_reflected(app):
    first = signed(app, {"sid": "0123456789ab", "_permanent": True})
    second = signed(app, {"sid": "ba9876543210", "_permanent": True})
    assert sender(app, first)[0] == "guest-012345"
    assert sender(app, second)[0] == "guest-ba9876"
    assert sender(app, first)[0] == "guest-012345"


def test_a_cached_cookie_expires_as_flask_would_expire_it(app):
    cookie = signed(app, {"sid": "0123456789ab", "_permanent": True}, age=100)
    assert sender(app, cookie)[0] == "guest-012345"  # 100 s old: within 31 days
    app.permanent_session_lifetime = timedelta(seconds=50)
    name, _ = sender(app, cookie)  # the cached entry is older than the lifetime now
    assert name != "guest-012345"
    app.permanent_session_lifetime = timedelta(days=31)
    future = signed(app, {"sid": "0123456789ab", "_permanent": True}, age=-100)
    assert sender(app, future)[0] != "guest-012345", "signed in the future: itsdangerous refuses it"


def test_a_new_secret_key_refuses_what_the_old_one_signed(app):
    name, cookie = sender(app, None)
    assert sender(app, cookie)[0] == name
    app.secret_key = "another key, " + "x" * 40
    assert sender(app, cookie)[0] != name


def test_the_cache_is_bounded_and_keeps_only_scalar_sessions(app):
    sessions = SessionCookies(size=2)
    app.session_interface = sessions
    for sid in ("000000000001", "000000000002", "000000000003"):
        assert sender(app, signed(app, {"sid": sid, "_permanent": True}))[0] == f"guest-{sid[:6]}"
        assert len(sessions._verified) <= 2
    listed = signed(app, {"sid": "0123456789ab", "seen": ["a"], "_permanent": True})
    assert sender(app, listed)[0] == "guest-012345"
    assert f"{COOKIE}={listed}" not in sessions._verified, "a list would be shared between requests"
