"""The decision hook (``SWITCHBOARD_AUTH_HOOK_URL``) against a real gunicorn and a hook
server run by the test, which records every request it gets.

The hook is asked only about what a token's claims do not grant. It allows on 2xx,
refuses on 4xx (403 documented), and fails closed on 5xx, a refused connection or an
answer slower than ``SWITCHBOARD_AUTH_HOOK_TIMEOUT``: 503 ``auth_unavailable`` with
``Retry-After``, and nothing is published. Answers are cached per (sub, action, topic)
for ``SWITCHBOARD_AUTH_HOOK_TTL`` seconds.

Measured hook cache hit rate (``test_a_simulated_chat_asks_once_per_user_and_action``):
5 users each send 100 messages and poll after each one, concurrently: 1,000 decisions,
10 hook calls (one per user and action), a hit rate of 99.0%. Without the cache it would
be 1,000 calls. The first requests of one user arriving together (a page that opens its
stream and publishes at once) share one call (``test_concurrent_first_requests_share_one_call``).
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_stomp_ws import Wire
from tests.support.auth_helpers import LocalServer, claims
from tests.support.servers import Gunicorn, free_port
from tests.support.timing import scaled
from tests.support.wsclients import JsonClient, ws_url

SECRET = secrets.token_urlsafe(40)
HOOK_TIMEOUT = scaled(0.5)
BASE_ENV = {
    "SWITCHBOARD_TICKS": "0",
    "SWITCHBOARD_PUBLISH_RATE": "0",
    "SWITCHBOARD_AUTH_SECRET": SECRET,
    "SWITCHBOARD_AUTH_HOOK_TIMEOUT": str(HOOK_TIMEOUT),
}


class Hook:
    """The application's decision endpoint. It decides by topic prefix:
    ``allow-`` 204, ``deny-`` 403, ``slow-`` answers 200 after 3 hook timeouts,
    ``err-`` 500, ``lag-`` 200 after 0.2 s, ``drip-`` a 200 whose headers take 5 timeouts
    to arrive, ``redir-`` 302 to a sign-in page that answers
    200 (an SSO proxy in front of the hook); anything else 403."""

    def __init__(self):
        self.server = LocalServer(self.respond)

    def respond(self, request):
        if request.path == "/login":
            return 200, {"Content-Type": "text/html"}, b"<form>sign in</form>"
        topic = request.json().get("topic", "")
        if topic.startswith("redir-"):
            return 302, {"Location": "/login"}, b""
        if topic.startswith("drip-"):
            return self.drip
        if topic.startswith("allow-"):
            return 204, {}, b""
        if topic.startswith("lag-"):
            time.sleep(0.2)
            return 200, {}, b"{}"
        if topic.startswith("slow-"):
            time.sleep(HOOK_TIMEOUT * 3)
            return 200, {}, b"{}"
        if topic.startswith("err-"):
            return 500, {}, b"oops"
        return 403, {}, b""

    @staticmethod
    def drip(wfile) -> None:
        """A 200 whose headers arrive one every 0.6 timeouts: no single read times out."""
        wfile.write(b"HTTP/1.1 200 OK\r\n")
        wfile.flush()
        for _ in range(8):
            time.sleep(HOOK_TIMEOUT * 0.6)
            wfile.write(b"X-Drip: 1\r\n")
            wfile.flush()
        wfile.write(b"Content-Length: 0\r\n\r\n")
        wfile.flush()

    def calls(self, topic: str | None = None, sub: str | None = None) -> list[dict]:
        bodies = [r.json() for r in list(self.server.requests) if r.path == "/decide"]
        return [b for b in bodies if (topic is None or b["topic"] == topic) and (sub is None or b["sub"] == sub)]


@pytest.fixture(scope="module")
def hook():
    running = Hook()
    running.server.start()
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, hook):
    with Gunicorn(
        tmp_path_factory.mktemp("hook"),
        env={**BASE_ENV, "SWITCHBOARD_AUTH_HOOK_URL": hook.server.url + "/decide", "SWITCHBOARD_AUTH_HOOK_TTL": "60"},
    ) as running:
        yield running


def token(sub: str, subscribe=("mine.*",), publish=("mine.*",)) -> str:
    """A token whose own grants cover only ``mine.*``: everything else goes to the hook."""
    return jwt.encode(claims(sub=sub, subscribe=subscribe, publish=publish), SECRET, algorithm="HS256")


def publish(server, bearer: str | None, topic: str, data="x") -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return requests.post(
        f"{server.url}/api/topics/{topic}/events", json={"data": data}, headers=headers, timeout=scaled(10)
    )


def poll(server, bearer: str, topic: str, path: str = "events", **params) -> requests.Response:
    return requests.get(
        f"{server.url}/api/topics/{topic}/{path}",
        params=params,
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=scaled(10),
    )


def hook_decisions(server) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=scaled(10)).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "switchboard_auth_hook_decisions_total":
                found[sample.labels["result"]] = sample.value
    return found


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


class TestAnswers:
    def test_allow(self, server, hook):
        topic, sub = unique("allow-"), unique("u")
        res = publish(server, token(sub), topic, "hello")
        assert res.status_code == 201, res.text
        assert res.json()["sender"] == sub and res.json()["data"] == "hello"
        assert hook.calls(topic) == [{"action": "publish", "topic": topic, "sub": sub, "transport": "http"}]

    def test_the_request_the_hook_gets(self, server, hook):
        topic, sub = unique("allow-"), unique("u")
        assert publish(server, token(sub), topic).status_code == 201
        request = next(r for r in list(hook.server.requests) if r.json().get("topic") == topic)
        assert request.method == "POST" and request.path == "/decide"
        assert request.headers["Content-Type"] == "application/json"
        assert set(request.json()) == {"action", "topic", "sub", "transport"}

    @pytest.mark.parametrize(
        "path, transport, params", [("events", "polling", {}), ("long-poll", "long-polling", {"timeout": 0.1})]
    )
    def test_subscribe_actions_name_their_transport(self, server, hook, path, transport, params):
        topic, sub = unique("allow-"), unique("u")
        res = poll(server, token(sub), topic, path, **params)
        assert res.status_code in (200, 204), res.text
        assert hook.calls(topic) == [{"action": "subscribe", "topic": topic, "sub": sub, "transport": transport}]

    def test_deny(self, server, hook):
        topic, sub = unique("deny-"), unique("u")
        res = publish(server, token(sub), topic)
        assert res.status_code == 403 and res.json()["error"] == "forbidden"
        assert len(hook.calls(topic)) == 1
        assert poll(server, token(sub), topic).status_code == 403

    def test_claims_that_grant_do_not_ask(self, server, hook):
        topic, sub = unique("mine."), unique("u")
        assert publish(server, token(sub), topic).status_code == 201
        assert poll(server, token(sub), topic).status_code == 200
        assert hook.calls(sub=sub) == []

    def test_anonymous_clients_are_not_asked_about(self, server, hook):
        topic = unique("allow-")
        res = publish(server, None, topic)
        assert res.status_code == 401
        assert hook.calls(topic) == []

    def test_an_error_status_fails_closed(self, server, hook):
        topic, sub = unique("err-"), unique("u")
        assert_unavailable(publish(server, token(sub), topic))
        assert_unavailable(publish(server, token(sub), topic))
        assert len(hook.calls(topic)) == 2  # failures are not cached
        assert poll(server, token(sub, subscribe=["**"]), topic).json()["events"] == []


def assert_unavailable(res: requests.Response) -> None:
    assert res.status_code == 503, res.text
    assert res.json()["error"] == "auth_unavailable"
    assert int(res.headers["Retry-After"]) >= 1
    assert "WWW-Authenticate" not in res.headers


class TestFailsClosed:
    def test_a_redirect_is_not_an_answer(self, server, hook):
        """A sign-in page behind a redirect answers 200: following it would allow everything."""
        topic, sub = unique("redir-"), unique("u")
        assert_unavailable(publish(server, token(sub), topic))
        assert len(hook.calls(topic)) == 1
        assert not [r for r in list(hook.server.requests) if r.path == "/login"]

    def test_slow(self, server, hook):
        topic, sub = unique("slow-"), unique("u")
        started = time.monotonic()
        res = publish(server, token(sub), topic)
        took = time.monotonic() - started
        assert_unavailable(res)
        assert HOOK_TIMEOUT * 0.9 <= took < HOOK_TIMEOUT + scaled(1.5), took
        assert poll(server, token(sub, subscribe=["**"]), topic).json()["events"] == []

    def test_slow_in_small_drips(self, server, hook):
        """The timeout bounds the whole answer, not each read of it."""
        topic, sub = unique("drip-"), unique("u")
        started = time.monotonic()
        assert_unavailable(publish(server, token(sub), topic))
        assert time.monotonic() - started < HOOK_TIMEOUT + scaled(1.5)

    def test_slow_with_requests_waiting_on_the_same_call(self, server, hook):
        topic, sub = unique("slow-"), unique("u")
        bearer = token(sub)
        started = time.monotonic()
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda n: publish(server, bearer, topic, n), range(5)))
        for res in answers:
            assert_unavailable(res)
        assert time.monotonic() - started < HOOK_TIMEOUT + scaled(2.5)
        # One shared call (two if a request came in only after the first call failed), not five.
        assert len(hook.calls(topic)) <= 2

    def test_slow_on_a_long_poll_and_polling(self, server, hook):
        topic, sub = unique("slow-"), unique("u")
        for path in ("events", "long-poll"):
            started = time.monotonic()
            assert_unavailable(poll(server, token(sub), topic, path, timeout=5))
            assert time.monotonic() - started < HOOK_TIMEOUT + scaled(1.5)

    def test_down(self, tmp_path_factory):
        url = f"http://127.0.0.1:{free_port()}/decide"  # nothing listens there
        with Gunicorn(tmp_path_factory.mktemp("hook-down"), env={**BASE_ENV, "SWITCHBOARD_AUTH_HOOK_URL": url}) as down:
            topic, sub = unique("allow-"), unique("u")
            started = time.monotonic()
            assert_unavailable(publish(down, token(sub), topic))
            assert time.monotonic() - started < scaled(5)
            assert_unavailable(poll(down, token(sub), topic))
            assert poll(down, token(sub, subscribe=["**"]), topic).json()["events"] == []
            assert hook_decisions(down).get("error") == 2
            # Claims that grant need no hook: the service still works for them.
            assert publish(down, token(sub), "mine.a").status_code == 201


class TestCache:
    def test_fifty_publishes_ask_once(self, server, hook):
        topic, sub = unique("allow-"), unique("u")
        bearer = token(sub)
        before = hook_decisions(server)
        for n in range(50):
            assert publish(server, bearer, topic, n).status_code == 201
        assert len(hook.calls(topic)) == 1
        after = hook_decisions(server)
        assert after["allow"] - before.get("allow", 0) == 1
        assert after["cached"] - before.get("cached", 0) == 49

    def test_denials_are_cached_too(self, server, hook):
        topic, sub = unique("deny-"), unique("u")
        for _ in range(10):
            assert publish(server, token(sub), topic).status_code == 403
        assert len(hook.calls(topic)) == 1

    def test_per_sub_action_and_topic(self, server, hook):
        topic = unique("allow-")
        alice, bob = unique("alice"), unique("bob")
        for _ in range(3):
            assert publish(server, token(alice), topic).status_code == 201
            assert publish(server, token(bob), topic).status_code == 201
            assert poll(server, token(alice), topic).status_code == 200
        assert sorted((c["sub"], c["action"]) for c in hook.calls(topic)) == sorted(
            [(alice, "publish"), (bob, "publish"), (alice, "subscribe")]
        )

    def test_after_the_ttl_the_hook_is_asked_again(self, tmp_path_factory, hook):
        ttl = scaled(1.5)
        with Gunicorn(
            tmp_path_factory.mktemp("hook-ttl"),
            env={
                **BASE_ENV,
                "SWITCHBOARD_AUTH_HOOK_URL": hook.server.url + "/decide",
                "SWITCHBOARD_AUTH_HOOK_TTL": str(ttl),
            },
        ) as short:
            topic, sub = unique("allow-"), unique("u")
            bearer = token(sub)
            started = time.monotonic()
            assert publish(short, bearer, topic).status_code == 201
            for _ in range(20):
                assert publish(short, bearer, topic).status_code == 201
            assert time.monotonic() - started < ttl, "the publishes took longer than the TTL: scale the test time"
            assert len(hook.calls(topic)) == 1
            time.sleep(ttl + 0.1 - (time.monotonic() - started))
            assert publish(short, bearer, topic).status_code == 201
            assert publish(short, bearer, topic).status_code == 201
            assert len(hook.calls(topic)) == 2

    def test_concurrent_first_requests_share_one_call(self, server, hook):
        """A page that opens its stream and publishes at once: one call, not one per request."""
        topic, sub = unique("lag-"), unique("u")
        bearer = token(sub)
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda n: publish(server, bearer, topic, n).status_code, range(20)))
        assert codes == [201] * 20
        assert len(hook.calls(topic)) == 1

    def test_a_simulated_chat_asks_once_per_user_and_action(self, server, hook):
        """5 users x 100 messages, each followed by a poll, all users at once: the hit rate."""
        room, users, messages = unique("allow-room"), [unique(f"user{n}-") for n in range(5)], 100
        before = hook_decisions(server)
        failures: list[str] = []

        def chat(user: str) -> None:
            bearer = token(user)
            with requests.Session() as http:
                http.headers["Authorization"] = f"Bearer {bearer}"
                for n in range(messages):
                    res = http.post(
                        f"{server.url}/api/topics/{room}/events", json={"data": {"text": f"m{n}"}}, timeout=scaled(10)
                    )
                    if res.status_code != 201:
                        failures.append(res.text)
                    if http.get(f"{server.url}/api/topics/{room}/events", timeout=scaled(10)).status_code != 200:
                        failures.append("poll")

        threads = [threading.Thread(target=chat, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(120))
        assert failures == []
        after = hook_decisions(server)
        decisions = sum(after.values()) - sum(before.values())
        calls = len(hook.calls(room))
        assert decisions == len(users) * messages * 2
        assert calls == len(users) * 2, calls
        hit_rate = 1 - calls / decisions
        print(f"hook cache: {calls} calls for {decisions} decisions, hit rate {hit_rate:.1%}")
        assert hit_rate >= 0.99


class TestWebSocketTransports:
    """The hook decides for /ws and STOMP too, and fails closed there in their own form."""

    def test_ws_subscribe_asks_the_hook_and_an_outage_is_an_error_op(self, server, hook):
        with JsonClient(ws_url(server.url), header=[f"Authorization: Bearer {token('wsuser')}"]) as client:
            allowed, failing = unique("allow-"), unique("err-")
            assert client.request("subscribe", topic=allowed)["op"] == "ok"
            assert [call["transport"] for call in hook.calls(allowed)] == ["websocket"]
            reply = client.request("subscribe", topic=failing)
            assert (reply["op"], reply["error"]) == ("error", "auth_unavailable"), reply
            reply = client.request("publish", topic=unique("deny-"), data="x")
            assert (reply["op"], reply["error"]) == ("error", "forbidden"), reply
            event = publish(server, token("wsuser", publish=("**",)), allowed, "after the refusals")
            assert event.status_code == 201
            assert client.next_event()["id"] == event.json()["id"], "the connection stays, its subscription too"

    def test_stomp_subscribe_with_the_hook_down_is_an_error_frame(self, server, hook):
        wire = Wire(server)
        try:
            wire.connect(Authorization=f"Bearer {token('stompuser')}")
            wire.subscribe(f"/topic/{unique('allow-')}", "1")
            failing = unique("err-")
            wire.send_frame("SUBSCRIBE", {"id": "2", "destination": f"/topic/{failing}"})
            error = wire.expect_error("authorization unavailable")
            assert error.get("destination") == f"/topic/{failing}"
            wire.expect_close()
        finally:
            wire.close()
