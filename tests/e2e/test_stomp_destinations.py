"""Wildcard topic subscriptions and per-user destinations over STOMP (issue #16), on real gunicorn.

* ``/topic/chat.*`` (one word) and ``/topic/chat.#`` (zero or more), as RabbitMQ's STOMP
  plugin; each MESSAGE names the concrete topic; no ``last-event-id``.
* ``/user/queue/<name>`` (SUBSCRIBE, one's own) and ``/user/<sub>/queue/<name>`` (SEND), as
  Spring's ``/user`` prefix: every session of that user, no one else's.
* Access control for both: a wildcard needs subscribe patterns covering every topic it can
  match; a SEND to ``/user/<sub>/...`` needs publish on ``user.<sub>`` or to be ``<sub>``.
"""

from __future__ import annotations

import pytest
import requests

from tests.e2e.test_stomp_ws import Wire
from tests.support.auth import auth_env, mint
from tests.support.servers import Gunicorn
from tests.support.timing import scaled


@pytest.fixture
def clients(server):
    made: list[Wire] = []

    def make(target=None, cookie=None, **connect) -> Wire:
        client = Wire(target or server, cookie=cookie)
        made.append(client)
        client.connect(**connect)
        return client

    yield make
    for client in made:
        client.close()


def publish(base, topic, data, headers=None, token=None) -> requests.Response:
    return requests.post(
        f"{base}/api/topics/{topic}/events",
        json={"data": data},
        headers=headers or ({"Authorization": f"Bearer {token}"} if token else {}),
        timeout=scaled(10),
    )


def cookie_of(base) -> tuple[str, str]:
    with requests.Session() as http:
        sender = http.get(f"{base}/api/whoami", timeout=scaled(5)).json()["sender"]
        return "; ".join(f"{c.name}={c.value}" for c in http.cookies), sender


class TestWildcards:
    def test_star_is_one_word_and_hash_is_zero_or_more(self, server, clients):
        star, hash_ = clients(), clients()
        star.subscribe("/topic/wc.*", sub_id="star")
        hash_.subscribe("/topic/wc.#", sub_id="hash")
        for topic in ("wc", "wc.a", "wc.b", "wc.a.b", "wcx.a", "other"):
            assert publish(server.url, topic, topic).status_code == 201
        assert [(m.get("destination"), m.body) for m in star.messages(2)] == [
            ("/topic/wc.a", b"wc.a"),
            ("/topic/wc.b", b"wc.b"),
        ]
        assert [m.get("destination") for m in hash_.messages(4)] == [
            "/topic/wc",
            "/topic/wc.a",
            "/topic/wc.b",
            "/topic/wc.a.b",
        ]
        star.nothing_for()
        hash_.nothing_for()

    def test_star_in_the_middle_and_every_message_names_its_topic(self, server, clients):
        client = clients()
        client.subscribe("/topic/room.*.news", sub_id="w", ack="client-individual")
        publish(server.url, "room.a.news", 1)
        publish(server.url, "room.a.sports", 2)
        publish(server.url, "room.b.news", 3)
        first, second = client.messages(2)
        assert (first.get("destination"), second.get("destination")) == ("/topic/room.a.news", "/topic/room.b.news")
        assert first.get("subscription") == "w" and first.get("ack")
        client.send_frame("ACK", {"id": first.get("ack"), "receipt": "a"})
        client.expect_receipt("a")

    def test_a_wildcard_takes_no_last_event_id(self, clients):
        client = clients()
        client.send_frame(
            "SUBSCRIBE", {"id": "0", "destination": "/topic/wc.*", "last-event-id": "abc-1", "receipt": "r"}
        )
        error = client.expect_error("a wildcard subscription takes no last-event-id")
        assert error.get("receipt-id") == "r" and b"several topics" in error.body
        assert client.expect_close() == 1008

    @pytest.mark.parametrize("destination", ["/topic/wc.*", "/topic/wc.#"])
    def test_no_send_to_a_wildcard(self, clients, destination):
        client = clients()
        client.send_frame("SEND", {"destination": destination}, "x")
        assert b"SUBSCRIBE only" in client.expect_error("invalid destination").body

    @pytest.mark.parametrize("destination", ["/topic/a.#.b", "/topic/a.b*", "/topic/#.x", "/topic/a..*"])
    def test_bad_wildcards(self, clients, destination):
        client = clients()
        client.send_frame("SUBSCRIBE", {"id": "0", "destination": destination})
        assert client.expect_error().get("message") == "invalid destination"


class TestUserDestinations:
    def test_every_session_of_the_user_and_no_one_elses(self, server, clients):
        cookie, me = cookie_of(server.url)
        other_cookie, _ = cookie_of(server.url)
        mine = [clients(cookie=cookie), clients(cookie=cookie)]
        theirs = clients(cookie=other_cookie)
        for client in (*mine, theirs):
            client.subscribe("/user/queue/inbox")
        sender = clients()
        sender.send_frame(
            "SEND",
            {
                "destination": f"/user/{me}/queue/inbox",
                "content-type": "text/plain",
                "x-note": "for you",
                "receipt": "r",
            },
            "hello you",
        )
        sender.expect_receipt("r")
        for client in mine:
            (message,) = client.messages(1)
            assert message.body == b"hello you" and message.get("destination") == "/user/queue/inbox"
            assert message.get("x-note") == "for you"
        theirs.nothing_for()

    def test_subscribing_to_someone_elses_is_refused(self, clients):
        client = clients()
        client.send_frame("SUBSCRIBE", {"id": "0", "destination": "/user/bob/queue/inbox"})
        assert b"your own" in client.expect_error("cannot subscribe to another user's destination").body


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("stomp-dest-auth"), env=auth_env()) as running:
        yield running


class TestAccess:
    def test_a_wildcard_needs_patterns_covering_every_topic(self, guarded, clients):
        allowed = clients(guarded, passcode=mint("ann", subscribe=["feed.*"]))
        allowed.subscribe("/topic/feed.*")
        publish(guarded.url, "feed.a", "a", token=mint("pub", publish=["**"]))
        assert allowed.messages(1)[0].get("destination") == "/topic/feed.a"
        for wildcard, grants in (
            ("/topic/feed.#", ["feed.*"]),
            ("/topic/feed.*", ["feed.a", "feed.b"]),
            ("/topic/*.a", ["feed.*"]),
        ):
            refused = clients(guarded, passcode=mint("ann", subscribe=grants))
            refused.send_frame("SUBSCRIBE", {"id": "0", "destination": wildcard})
            error = refused.expect_error(f"forbidden: {wildcard}")
            assert error.get("destination") == wildcard
            assert refused.expect_close() == 1008
        both = clients(guarded, passcode=mint("ann", subscribe=["feed", "feed.**"]))
        both.subscribe("/topic/feed.#")

    def test_user_destinations_need_an_identity_and_the_right_to_send(self, guarded, clients):
        alice = clients(guarded, passcode=mint("alice"))
        alice.subscribe("/user/queue/inbox")
        alice.send_frame("SEND", {"destination": "/user/alice/queue/inbox", "receipt": "self"}, "note to self")
        alice.expect_receipt("self")
        assert alice.messages(1)[0].body == b"note to self"
        app = clients(guarded, passcode=mint("app", publish=["user.*"]))
        app.send_frame("SEND", {"destination": "/user/alice/queue/inbox", "receipt": "app"}, "from the app")
        app.expect_receipt("app")
        assert alice.messages(1)[0].body == b"from the app"
        bob = clients(guarded, passcode=mint("bob", publish=["user.bob", "chat"]))
        bob.send_frame("SEND", {"destination": "/user/alice/queue/inbox"}, "sneaky")
        assert bob.expect_error("forbidden: /user/alice/queue/inbox").get("destination") == "/user/alice/queue/inbox"
        alice.nothing_for()
        # Reading alice's destination as a topic needs permissions that cover it.
        eve = clients(guarded, passcode=mint("eve", subscribe=["user.alice"]))
        eve.send_frame("SUBSCRIBE", {"id": "0", "destination": "/topic/user.alice.queue.inbox"})
        eve.expect_error("forbidden: /topic/user.alice.queue.inbox")

    def test_anonymous_clients_have_no_user_destination(self, tmp_path_factory, clients):
        env = auth_env(SWITCHBOARD_ANONYMOUS_SUBSCRIBE="chat")
        with Gunicorn(tmp_path_factory.mktemp("stomp-dest-anon"), env=env) as server:
            anonymous = clients(server)
            anonymous.send_frame("SUBSCRIBE", {"id": "0", "destination": "/user/queue/inbox"})
            assert b"sign in" in anonymous.expect_error("unauthorized: /user/queue/inbox").body
