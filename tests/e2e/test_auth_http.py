"""Access control on the HTTP transports (publish, polling, long polling, SSE) against a
real gunicorn: every kind of credential, the documented refusal for each, nothing
published or delivered that should not be, and streams that end with their token."""

from __future__ import annotations

import json
import time
from http.cookies import SimpleCookie

import jwt
import pytest
import requests

from tests.e2e.test_sse import RawStream, parse_sse
from tests.support.auth import SECRET, auth_env, bearer, mint
from tests.support.servers import Gunicorn
from tests.support.timing import scaled

JSON = {"Content-Type": "application/json", "Connection": "close"}

ALICE = dict(subscribe=["room.*", "user.{sub}"], publish=["room.*"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = auth_env(SWITCHBOARD_ANONYMOUS_SUBSCRIBE="open.*", SWITCHBOARD_PUBLISH_RATE="0")
    with Gunicorn(tmp_path_factory.mktemp("auth-http"), env=env) as running:
        yield running


def publish(base: str, topic: str, data, headers=None) -> requests.Response:
    return requests.post(
        f"{base}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers={**JSON, **(headers or {})},
        timeout=scaled(10),
    )


def history(base: str, topic: str) -> list:
    """Every event of ``topic``, read with a token that may read everything."""
    res = requests.get(
        f"{base}/api/topics/{topic}/events", headers=bearer(mint("auditor", subscribe=["**"])), timeout=scaled(10)
    )
    assert res.status_code == 200, res.text
    return [event["data"] for event in res.json()["events"]]


# (credentials, the status, the error code, whether WWW-Authenticate says invalid_token)
BAD = {
    "no token": ({}, 401, "unauthorized", False),
    "bad signature": (
        bearer(mint("alice", **ALICE, secret="another-secret-of-at-least-32-bytes!!")),
        401,
        "unauthorized",
        True,
    ),
    "expired": (bearer(mint("alice", **ALICE, lifetime=-5)), 401, "unauthorized", True),
    "wrong audience": (bearer(mint("alice", **ALICE, audience="someone-else")), 401, "unauthorized", True),
    "not a bearer": ({"Authorization": "Basic YWxpY2U6cHc="}, 401, "unauthorized", True),
    "forbidden topic": (bearer(mint("bob", **ALICE)), 403, "forbidden", None),
}


def check_refusal(res, status, code, invalid_token):
    assert res.status_code == status, res.text
    assert res.headers["Content-Type"] == "application/json"
    assert res.json()["error"] == code
    if status == 401:
        expected = 'Bearer realm="switchboard"' + (', error="invalid_token"' if invalid_token else "")
        assert res.headers["WWW-Authenticate"] == expected
    else:
        assert "WWW-Authenticate" not in res.headers


@pytest.mark.parametrize("case", sorted(BAD))
class TestEveryTransportRefuses:
    """Each HTTP transport x each bad credential: the documented answer, and no effect."""

    def topic(self, case: str) -> str:
        # "forbidden topic" is bob asking for alice's private topic; the others ask for an
        # allowed one with a credential that fails.
        return "user.alice" if case == "forbidden topic" else "room.a"

    def test_publish(self, server, case):
        headers, status, code, invalid = BAD[case]
        before = history(server.url, self.topic(case))
        check_refusal(publish(server.url, self.topic(case), f"refused-{case}", headers), status, code, invalid)
        assert history(server.url, self.topic(case)) == before, "a refused publish stored nothing"

    def test_polling(self, server, case):
        headers, status, code, invalid = BAD[case]
        res = requests.get(f"{server.url}/api/topics/{self.topic(case)}/events", headers=headers, timeout=scaled(10))
        check_refusal(res, status, code, invalid)

    def test_long_poll(self, server, case):
        headers, status, code, invalid = BAD[case]
        started = time.monotonic()
        res = requests.get(
            f"{server.url}/api/topics/{self.topic(case)}/long-poll?timeout=20", headers=headers, timeout=scaled(10)
        )
        check_refusal(res, status, code, invalid)
        assert time.monotonic() - started < scaled(5), "refused at once, not after parking"

    def test_sse(self, server, case):
        headers, status, code, invalid = BAD[case]
        with RawStream(server.url, f"/api/topics/{self.topic(case)}/stream", headers) as raw:
            raw.read_head()
            assert raw.status == status
            assert raw.headers["content-type"] == "application/json"
            if status == 401:
                assert raw.headers["www-authenticate"].startswith('Bearer realm="switchboard"')


class TestAllowed:
    def test_every_transport_serves_an_allowed_topic_and_stamps_the_token_sender(self, server):
        token = mint("alice", **ALICE, name="Alice A.")
        with RawStream(server.url, "/api/topics/room.allowed/stream", bearer(token)) as raw:
            _, comments, _ = parse_sse(raw.read_head().read_chunk())
            assert raw.status == 200 and "you are Alice A. (bearer" in comments[0]
            res = publish(server.url, "room.allowed", "hello", bearer(token))
            assert res.status_code == 201, res.text
            assert res.json()["sender"] == "Alice A.", "the sender is the token's name claim"
            (event,) = raw.read_events(1)
            assert json.loads(event["data"])["data"] == "hello"
        res = requests.get(f"{server.url}/api/topics/room.allowed/events", headers=bearer(token), timeout=scaled(10))
        assert res.status_code == 200 and [e["data"] for e in res.json()["events"]] == ["hello"]
        res = requests.get(
            f"{server.url}/api/topics/room.allowed/long-poll",
            params={"since": res.json()["cursor"], "timeout": "0.2"},
            headers=bearer(token),
            timeout=scaled(10),
        )
        assert res.status_code == 204
        res = publish(server.url, "user.alice", "to myself", bearer(token))
        assert res.status_code == 403, "user.{sub} is in alice's subscribe list, not her publish list"

    def test_the_sender_is_sub_without_a_name_claim(self, server):
        res = publish(server.url, "room.b", "x", bearer(mint("carol", **ALICE)))
        assert res.status_code == 201 and res.json()["sender"] == "carol"

    def test_anonymous_patterns_open_what_they_name_and_nothing_else(self, server):
        res = requests.get(f"{server.url}/api/topics/open.news/events", timeout=scaled(10))
        assert res.status_code == 200
        check_refusal(
            requests.get(f"{server.url}/api/topics/room.a/events", timeout=scaled(10)), 401, "unauthorized", False
        )
        check_refusal(publish(server.url, "open.news", "anonymous"), 401, "unauthorized", False)

    def test_whoami_describes_the_identity(self, server):
        res = requests.get(
            f"{server.url}/api/whoami", headers=bearer(mint("alice", **ALICE, lifetime=120)), timeout=scaled(10)
        )
        body = res.json()
        assert body["sub"] == "alice" and body["via"] == "bearer" and 100 < body["expires_in"] <= 120
        assert body["subscribe"] == ALICE["subscribe"] and body["publish"] == ALICE["publish"]
        anonymous = requests.get(f"{server.url}/api/whoami", timeout=scaled(10)).json()
        assert anonymous["sub"] is None and anonymous["via"] == "anonymous"
        assert anonymous["subscribe"] == ["open.*"] and anonymous["publish"] == []


class TestSessionCookie:
    def test_post_session_sets_an_httponly_strict_cookie_no_longer_than_the_token(self, server):
        token = mint("alice", **ALICE, lifetime=90)
        with requests.Session() as browser:
            res = browser.post(f"{server.url}/api/session", headers=bearer(token), timeout=scaled(10))
            assert res.status_code == 204
            cookie = SimpleCookie(res.headers["Set-Cookie"])["switchboard_token"]
            assert cookie.value == token
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
            assert not cookie["secure"], "plain http: no Secure flag (it would never be sent back)"
            assert 80 <= int(cookie["max-age"]) <= 90
            res = browser.get(f"{server.url}/api/whoami", timeout=scaled(10))
            assert res.json()["via"] == "cookie" and res.json()["sub"] == "alice"
            with RawStream(
                server.url, "/api/topics/user.alice/stream", {"Cookie": f"switchboard_token={token}"}
            ) as raw:
                assert raw.read_head().status == 200, "an EventSource-style request carries the cookie"
            assert (
                browser.post(
                    f"{server.url}/api/topics/room.c/events",
                    json={"data": "same origin"},
                    headers={"Origin": server.url},
                    timeout=scaled(10),
                ).status_code
                == 201
            )
            res = browser.delete(f"{server.url}/api/session", timeout=scaled(10))
            assert res.status_code == 204
            assert SimpleCookie(res.headers["Set-Cookie"])["switchboard_token"]["max-age"] == "0"
            assert browser.get(f"{server.url}/api/whoami", timeout=scaled(10)).json()["via"] == "anonymous"

    def test_post_session_takes_a_json_body_and_refuses_a_bad_token(self, server):
        res = requests.post(f"{server.url}/api/session", json={"token": mint("alice", **ALICE)}, timeout=scaled(10))
        assert res.status_code == 204 and "switchboard_token=" in res.headers["Set-Cookie"]
        res = requests.post(
            f"{server.url}/api/session", json={"token": mint("alice", **ALICE, lifetime=-1)}, timeout=scaled(10)
        )
        check_refusal(res, 401, "unauthorized", True)
        assert "Set-Cookie" not in res.headers
        res = requests.post(f"{server.url}/api/session", json={}, timeout=scaled(10))
        check_refusal(res, 401, "unauthorized", False)

    @pytest.mark.parametrize(
        "headers",
        [
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-site"},
        ],
    )
    def test_a_cookie_authenticated_change_from_another_origin_is_refused(self, server, headers):
        token = mint("alice", **ALICE)
        cookie = {"Cookie": f"switchboard_token={token}"}
        before = history(server.url, "room.csrf")
        res = publish(server.url, "room.csrf", "forged", {**cookie, **headers})
        assert res.status_code == 403 and res.json()["error"] == "cross_origin"
        assert history(server.url, "room.csrf") == before, "nothing published"
        res = requests.post(f"{server.url}/api/session", headers={**bearer(token), **headers}, timeout=scaled(10))
        assert res.status_code == 403 and res.json()["error"] == "cross_origin"
        res = requests.delete(f"{server.url}/api/session", headers={**cookie, **headers}, timeout=scaled(10))
        assert res.status_code == 403 and res.json()["error"] == "cross_origin"
        # A Bearer token is not sent by a browser on its own: no CSRF, so any origin may use it.
        res = publish(server.url, "room.csrf", "bearer from elsewhere", {**bearer(token), **headers})
        assert res.status_code == 201


class TestExpiry:
    def test_an_sse_stream_ends_with_event_expired_and_the_reconnect_gets_401(self, start_server):
        server = start_server(auth_env(SWITCHBOARD_SSE_HEARTBEAT="0.5"))
        token = mint("alice", **ALICE, lifetime=2)
        headers = bearer(token)
        with RawStream(server.url, "/api/topics/room.exp/stream", headers) as raw:
            assert raw.read_head().status == 200
            assert publish(server.url, "room.exp", "before", headers).status_code == 201
            events = raw.read_until(lambda events: any(e["type"] == "expired" for e in events), timeout=8)
            assert [e["type"] for e in events] == ["message", "expired"]
            assert json.loads(events[1]["data"])["error"] == "unauthorized"
            assert raw.read_chunk(timeout=5) is None, "the stream ends after event: expired"
        with RawStream(server.url, "/api/topics/room.exp/stream", {**headers, "Last-Event-ID": events[0]["id"]}) as raw:
            assert raw.read_head().status == 401, "EventSource's reconnect is refused, so it stops"

    def test_a_parked_long_poll_answers_401_at_exp(self, start_server):
        server = start_server(auth_env(SWITCHBOARD_LONGPOLL_TIMEOUT="30"))
        token = mint("alice", **ALICE, lifetime=2)
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        res = requests.get(
            f"{server.url}/api/topics/room.lp/long-poll?timeout=30", headers=bearer(token), timeout=scaled(20)
        )
        check_refusal(res, 401, "unauthorized", True)
        assert time.time() < exp + scaled(3), "answered at exp, not at the poll's timeout"


def test_open_mode_ignores_tokens_and_keeps_everything_open(start_server):
    server = start_server({})
    res = publish(server.url, "anything", "open", bearer(mint("alice", secret=SECRET + "x")))
    assert res.status_code == 201 and res.json()["sender"].startswith("guest-")
