"""Access control on ``/ws`` against a real gunicorn: the handshake (cookie, ticket,
Authorization; 401/400 before the 101), op ``auth``, per-op decisions, and expiry.

Tokens are minted here with PyJWT (tests/support/auth.py); the server verifies them with
the same HS256 secret and checks the audience. What must not be published or delivered is
checked with a second, allowed subscriber or in history read with an all-topics token.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.auth import auth_env, bad_tokens, bearer, history, mint, publish, refusals
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until
from tests.support.wsclients import ConnectionEnded, HandshakeFailed, JsonClient, RawWebSocket, ws_url

GRACE = 3.0  # SWITCHBOARD_AUTH_REFRESH_GRACE of the module's server (scaled)
NEWS = {"subscribe": ["news", "room.*"], "publish": ["news"]}  # what "alice" may do


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = auth_env(SWITCHBOARD_AUTH_REFRESH_GRACE=str(scaled(GRACE)))
    with Gunicorn(tmp_path_factory.mktemp("auth-ws"), env=env) as running:
        yield running


@pytest.fixture
def connect(server):
    """Factory: ``connect(token=None, path="/ws", **options)``, the token as the handshake's cookie."""
    clients: list[JsonClient] = []

    def open_client(token: str | None = None, path: str = "/ws", **options) -> JsonClient:
        if token is not None:
            options["cookie"] = f"switchboard_token={token}"
        client = JsonClient(ws_url(server.url, path), **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def refused_handshake(server, path: str = "/ws", **headers: str) -> HandshakeFailed:
    with pytest.raises(HandshakeFailed) as refused:
        RawWebSocket.connect(ws_url(server.url, path), headers=headers, timeout=scaled(5))
    return refused.value


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def listener(connect, topic: str) -> JsonClient:
    """An allowed subscriber of ``topic``: what it receives is what was really published."""
    client = connect(mint("watcher", subscribe=["**"]))
    assert client.request("subscribe", topic=topic)["op"] == "ok"
    return client


# ------------------------------------------------------------------------ handshake


class TestHandshake:
    @pytest.mark.parametrize("what", list(bad_tokens()))
    def test_a_failing_cookie_is_401_before_the_101(self, server, what):
        before = refusals(server.url, "unauthorized", "websocket")
        refused = refused_handshake(server, Cookie=f"switchboard_token={bad_tokens()[what]}")
        assert refused.status == 401
        assert header(refused.head, "WWW-Authenticate") == 'Bearer realm="switchboard", error="invalid_token"'
        assert header(refused.head, "Content-Type") == "application/json"
        assert refusals(server.url, "unauthorized", "websocket") == before + 1

    def test_a_failing_authorization_header_is_401_before_the_101(self, server):
        refused = refused_handshake(server, Authorization=f"Bearer {bad_tokens()['bad signature']}")
        assert refused.status == 401 and 'error="invalid_token"' in header(refused.head, "WWW-Authenticate")

    @pytest.mark.parametrize("query", ["token=abc", "access_token=abc", "ticket=x&token=abc"])
    def test_a_token_in_the_url_is_400_before_the_101(self, server, query):
        refused = refused_handshake(server, f"/ws?{query}")
        assert refused.status == 400

    def test_a_ticket_works_once(self, server, connect):
        res = requests.post(f"{server.url}/api/tickets", headers=bearer(mint(**NEWS)), timeout=scaled(5))
        assert res.status_code == 200, res.text
        ticket = res.json()["ticket"]
        client = connect(path=f"/ws?ticket={ticket}")
        assert client.request("subscribe", topic="news")["op"] == "ok"  # the ticket's identity
        again = refused_handshake(server, f"/ws?ticket={ticket}")
        assert again.status == 401 and 'error="invalid_token"' in header(again.head, "WWW-Authenticate")
        assert client.request("ping")["op"] == "ok", "the first connection is unaffected"

    def test_the_session_cookie_from_api_session_identifies_the_socket(self, server, connect):
        with requests.Session() as browser:
            token = mint("alice", name="Alice", **NEWS)
            res = browser.post(f"{server.url}/api/session", headers=bearer(token), timeout=scaled(5))
            assert res.status_code == 204, res.text
            client = JsonClient(ws_url(server.url), session=browser)  # the jar's HttpOnly cookie
        try:
            assert client.request("subscribe", topic="news")["op"] == "ok"
            assert client.request("publish", topic="news", data={"text": "hi"})["op"] == "ok"
            assert client.next_event()["sender"] == "Alice"
        finally:
            client.close()


# ------------------------------------------------------------------------------ ops


class TestDecisions:
    def test_no_token_is_anonymous_and_every_topic_op_is_unauthorized(self, server, connect):
        watch = listener(connect, "news")
        client = connect()
        assert client.request("ping")["op"] == "ok"
        for op, fields in (("subscribe", {}), ("publish", {"data": "sneaky"})):
            reply = client.request(op, topic="news", **fields)
            assert reply["op"] == "error" and reply["error"] == "unauthorized" and reply["topic"] == "news", reply
        assert client.request("ping")["op"] == "ok", "the connection stays"
        marker = publish(server.url, "news", "marker")
        assert watch.next_event()["id"] == marker["id"], "nothing was published before the marker"
        assert "sneaky" not in [event["data"] for event in history(server.url, "news")]

    def test_allowed_topics_work_and_the_sender_is_the_token_s(self, server, connect):
        client = connect(mint("alice", **NEWS))
        assert client.request("subscribe", topic="room.1")["op"] == "ok"  # a pattern covers it
        assert client.request("subscribe", topic="news")["op"] == "ok"
        reply = client.request("publish", topic="news", data={"text": "hello"})
        assert reply["op"] == "ok"
        event = client.next_event()
        assert event["id"] == reply["id"] and event["sender"] == "alice"

    def test_a_forbidden_topic_is_an_error_op_and_the_rest_stays(self, server, connect):
        watch = listener(connect, "secret")
        client = connect(mint("alice", **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        before = refusals(server.url, "forbidden", "websocket")
        reply = client.request("subscribe", topic="secret")
        assert (reply["op"], reply["error"], reply["topic"]) == ("error", "forbidden", "secret"), reply
        reply = client.request("publish", topic="secret", data="leak")
        assert (reply["op"], reply["error"], reply["topic"]) == ("error", "forbidden", "secret"), reply
        assert refusals(server.url, "forbidden", "websocket") == before + 2
        # Its other subscription still delivers; the refused ones neither delivered nor published.
        news = publish(server.url, "news", "still here")
        secret = publish(server.url, "secret", "not for alice")
        assert client.next_event()["id"] == news["id"]
        assert watch.next_event()["id"] == secret["id"], "the refused publish never reached the topic"
        client.assert_silent()
        assert "leak" not in [event["data"] for event in history(server.url, "secret")]

    def test_other_clients_keep_working_after_a_refusal(self, server, connect):
        refused_handshake(server, Cookie=f"switchboard_token={bad_tokens()['expired']}")
        intruder = connect()
        assert intruder.request("publish", topic="news", data="x")["error"] == "unauthorized"
        client = connect(mint("bob", **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        event = publish(server.url, "news", "for bob")
        assert client.next_event()["id"] == event["id"]


class TestAuthOp:
    def test_auth_as_the_first_op_signs_in(self, server, connect):
        client = connect()
        reply = client.request("auth", token=mint("carol", **NEWS))
        assert reply["op"] == "ok" and reply["sub"] == "carol" and reply["sender"] == "carol"
        assert 0 < reply["expires_in"] <= 300
        assert client.request("subscribe", topic="news")["op"] == "ok"
        assert client.request("subscribe", topic="secret")["error"] == "forbidden"

    @pytest.mark.parametrize("what", list(bad_tokens()))
    def test_a_failing_token_is_an_error_op_and_changes_nothing(self, server, connect, what):
        client = connect()
        reply = client.request("auth", token=bad_tokens()[what])
        assert reply["op"] == "error" and reply["error"] == "unauthorized", reply
        assert client.request("subscribe", topic="news")["error"] == "unauthorized", "still anonymous"
        # A failed sign-in is not an op: the client may try again... but only before any other op.
        assert client.request("auth", token=mint("carol", **NEWS))["error"] == "auth_refused"

    def test_a_failed_sign_in_may_be_retried_as_the_first_op(self, server, connect):
        client = connect()
        assert client.request("auth", token=bad_tokens()["expired"])["error"] == "unauthorized"
        assert client.request("auth", token=mint("carol", **NEWS))["op"] == "ok"
        assert client.request("subscribe", topic="news")["op"] == "ok"

    def test_auth_after_another_op_is_refused(self, server, connect):
        client = connect()
        assert client.request("ping")["op"] == "ok"
        reply = client.request("auth", token=mint("carol", **NEWS))
        assert reply["op"] == "error" and reply["error"] == "auth_refused", reply
        assert client.request("subscribe", topic="news")["error"] == "unauthorized"

    def test_a_refresh_must_keep_the_sub(self, server, connect):
        client = connect(mint("alice", **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        assert client.request("auth", token=mint("mallory", **NEWS))["error"] == "auth_refused"
        reply = client.request("auth", token=mint("alice", lifetime=600, **NEWS))
        assert reply["op"] == "ok" and reply["expires_in"] > 300
        event = publish(server.url, "news", "after the refresh")
        assert client.next_event()["id"] == event["id"]

    def test_a_refresh_that_covers_less_ends_that_subscription_only(self, server, connect):
        client = connect(mint("alice", **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        assert client.request("subscribe", topic="room.1")["op"] == "ok"
        assert client.request("auth", token=mint("alice", subscribe=["news"]))["op"] == "ok"
        ended = client.next_message()
        assert (ended["op"], ended["error"], ended["topic"], ended["ref"]) == ("error", "forbidden", "room.1", None)
        room = publish(server.url, "room.1", "gone")
        news = publish(server.url, "news", "kept")
        assert client.next_event()["id"] == news["id"], "room.1 no longer delivers; news does"
        assert room["id"]


# ------------------------------------------------------------------------- expiry


class TestExpiry:
    def test_expired_then_refreshed_keeps_every_subscription_and_loses_nothing(self, server, connect):
        client = connect(mint("dave", lifetime=scaled(2), **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        assert client.request("subscribe", topic="room.7")["op"] == "ok"
        first = publish(server.url, "news", 1)
        assert client.next_event(timeout=5)["id"] == first["id"]
        assert client.next_message(timeout=5)["op"] == "expired"
        # The stream does not outlive its token: these wait until the refresh.
        during = [publish(server.url, "news", 2), publish(server.url, "room.7", 3), publish(server.url, "news", 4)]
        assert client.request("ping")["op"] == "ok"
        assert client.request("publish", topic="news", data="x")["error"] == "unauthorized"
        client.assert_silent(0.5)
        reply = client.request("auth", token=mint("dave", lifetime=300, **NEWS))
        assert reply["op"] == "ok" and reply["sub"] == "dave"
        after = publish(server.url, "news", 5)
        got = client.events(4, timeout=5)
        by_topic = {topic: [e["id"] for e in got if e["topic"] == topic] for topic in ("news", "room.7")}
        assert by_topic == {"news": [during[0]["id"], during[2]["id"], after["id"]], "room.7": [during[1]["id"]]}
        assert all(e["op"] == "event" for e in got), "no gap: nothing was lost"

    def test_no_refresh_within_the_grace_closes_with_4001(self, server, connect):
        before = refusals(server.url, "unauthorized", "websocket")
        client = connect(mint("erin", lifetime=scaled(2), **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        expired = client.next_message(timeout=5)
        assert expired["op"] == "expired" and expired["grace"] == pytest.approx(scaled(GRACE))
        noticed = time.monotonic()
        publish(server.url, "news", "after expiry")  # never delivered: the close comes first
        with pytest.raises(ConnectionEnded) as ended:
            client.next_message(timeout=GRACE + 5)
        assert ended.value.code == 4001 and ended.value.reason == "token expired"
        assert time.monotonic() - noticed >= scaled(GRACE) - 0.5, "the grace was given"
        wait_until(
            lambda: refusals(server.url, "unauthorized", "websocket") >= before + 1,
            timeout=5,
            message="the 4001 counted as a refusal",
        )

    def test_a_ticket_identity_expires_with_its_token(self, server, connect):
        token = mint("frank", lifetime=scaled(2), **NEWS)
        res = requests.post(f"{server.url}/api/tickets", headers=bearer(token), timeout=scaled(5))
        assert res.status_code == 200, res.text
        client = connect(path=f"/ws?ticket={res.json()['ticket']}")
        assert client.request("subscribe", topic="news")["op"] == "ok"
        assert client.next_message(timeout=5)["op"] == "expired"

    def test_unsubscribe_while_expired_is_answered_and_sticks(self, server, connect):
        client = connect(mint("gina", lifetime=scaled(2), **NEWS))
        assert client.request("subscribe", topic="news")["op"] == "ok"
        assert client.request("subscribe", topic="room.2")["op"] == "ok"
        assert client.next_message(timeout=5)["op"] == "expired"
        gone = publish(server.url, "news", "queued for a paused forwarder")
        assert client.request("unsubscribe", topic="news") == {"op": "ok", "ref": "r3", "topic": "news"}
        assert client.request("auth", token=mint("gina", **NEWS))["op"] == "ok"
        kept = publish(server.url, "room.2", "kept")
        assert client.next_event()["id"] == kept["id"], f"{gone['id']} was not delivered after the unsubscribe"
