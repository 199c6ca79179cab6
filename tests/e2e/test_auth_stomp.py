"""Access control on STOMP over WebSocket (``/stomp``) against a real gunicorn.

CONNECT proves who the client is (a token as ``passcode`` or ``Authorization: Bearer``,
the handshake's cookie or ticket, or the shared login), every SUBSCRIBE and SEND to a
topic is authorized, ``/app/chat`` asks for ``chat``, and the token's expiry ends the
session. Refusals are ERROR frames (the spec's only answer), then the close; a failing
handshake credential is refused before the 101. Raw frames come from the Wire client of
test_stomp_ws.py; stomp.py and @stomp/stompjs 7 (Node) check that real clients can log in.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.e2e.test_stomp_interop import JS_DIR, NODE, NodeStomp, PyStomp
from tests.e2e.test_stomp_ws import Wire
from tests.support.auth import auth_env, bad_tokens, bearer, history, mint, publish, refusals
from tests.support.servers import Gunicorn
from tests.support.timing import scaled
from tests.support.wsclients import HandshakeFailed, RawWebSocket, ws_url

STOMP_PROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
SHARED = {"login": "guest", "passcode": "shared-pass:word"}
ALICE = {"subscribe": ["news", "room.*"], "publish": ["news", "chat"]}
ADMIN = {"subscribe": ["**"], "publish": ["**"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = auth_env(SWITCHBOARD_STOMP_LOGIN=SHARED["login"], SWITCHBOARD_STOMP_PASSCODE=SHARED["passcode"])
    with Gunicorn(tmp_path_factory.mktemp("auth-stomp"), env=env) as running:
        yield running


@pytest.fixture
def wires(server):
    """Factory: ``wires(cookie=None, path="/stomp")`` opens a raw STOMP client; all closed after."""
    made: list[Wire] = []

    def make(cookie: str | None = None, path: str = "/stomp", target=None) -> Wire:
        wire = Wire(target or server, cookie=cookie, path=path)
        made.append(wire)
        return wire

    yield make
    for wire in made:
        wire.close()


def connected_as(wires, token: str | None = None, **headers) -> Wire:
    """A session CONNECTed with ``token`` as its passcode (or just ``headers``)."""
    wire = wires()
    if token is not None:
        headers.setdefault("passcode", token)
    wire.connect(**headers)
    return wire


def listener(wires, destination: str) -> Wire:
    """An allowed subscriber: what it receives is what was really published."""
    wire = connected_as(wires, mint("watcher", **ADMIN))
    wire.subscribe(destination, sub_id="watch")
    return wire


def refused_connect(wire: Wire, headers: dict, message: str) -> str:
    """CONNECT with ``headers``: an ERROR with ``message`` and a body, then close 1008.
    Returns the ERROR's message header."""
    wire.send_frame("CONNECT", {"accept-version": "1.2", "host": "localhost", **headers})
    error = wire.expect_error(message)
    assert error.body, "the ERROR body says why"
    assert wire.expect_close() == 1008
    return error.get("message")


def receives(server, wire: Wire, topic: str) -> bool:
    """True when an event published to ``topic`` reaches ``wire`` (subscribed to it as "0")."""
    event = publish(server.url, topic, "to the subscriber")
    (message,) = wire.messages(1)
    return message.get("event-id") == event["id"]


def stomp_errors(base: str, kind: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=scaled(10)).text
    wanted = f'switchboard_stomp_errors_total{{kind="{kind}"}}'
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)), 0.0)


# ------------------------------------------------------------------------ handshake


class TestHandshake:
    @pytest.mark.parametrize("what", ["bad signature", "expired"])
    def test_a_failing_cookie_is_401_before_the_101(self, server, what):
        before = refusals(server.url, "unauthorized", "stomp")
        with pytest.raises(HandshakeFailed) as refused:
            RawWebSocket.connect(
                ws_url(server.url, "/stomp"),
                protocols=STOMP_PROTOCOLS,
                timeout=scaled(5),
                headers={"Cookie": f"switchboard_token={bad_tokens()[what]}"},
            )
        assert refused.value.status == 401
        assert b'WWW-Authenticate: Bearer realm="switchboard", error="invalid_token"' in refused.value.head
        assert refusals(server.url, "unauthorized", "stomp") == before + 1

    @pytest.mark.parametrize("query", ["token=abc", "access_token=abc"])
    def test_a_token_in_the_url_is_400_before_the_101(self, server, query):
        with pytest.raises(HandshakeFailed) as refused:
            RawWebSocket.connect(ws_url(server.url, f"/stomp?{query}"), protocols=STOMP_PROTOCOLS, timeout=scaled(5))
        assert refused.value.status == 400

    def test_a_ticket_identifies_the_session_once(self, server, wires):
        res = requests.post(f"{server.url}/api/tickets", headers=bearer(mint("alice", **ALICE)), timeout=scaled(5))
        assert res.status_code == 200, res.text
        ticket = res.json()["ticket"]
        wire = wires(path=f"/stomp?ticket={ticket}")
        wire.connect()  # no credentials in CONNECT: the ticket's identity
        wire.subscribe("/topic/news")
        with pytest.raises(HandshakeFailed) as again:
            RawWebSocket.connect(
                ws_url(server.url, f"/stomp?ticket={ticket}"), protocols=STOMP_PROTOCOLS, timeout=scaled(5)
            )
        assert again.value.status == 401

    def test_the_cookie_identifies_the_session_and_stamps_the_sender(self, server, wires):
        watch = listener(wires, "/topic/news")
        wire = wires(cookie=f"switchboard_token={mint('alice', name='Alice', **ALICE)}")
        wire.connect()
        wire.send_frame("SEND", {"destination": "/topic/news", "content-type": "text/plain", "receipt": "s"}, "hi")
        wire.expect_receipt("s")
        (message,) = watch.messages(1)
        assert message.body == b"hi" and message.get("sender") == "Alice"


# -------------------------------------------------------------------------- CONNECT


class TestConnect:
    @pytest.mark.parametrize("carrier", ["passcode", "authorization"])
    @pytest.mark.parametrize("what", list(bad_tokens()))
    def test_a_failing_token_is_an_error_then_the_close(self, server, wires, what, carrier):
        before = (refusals(server.url, "unauthorized", "stomp"), stomp_errors(server.url, "auth"))
        token = bad_tokens()[what]
        headers = {"passcode": token} if carrier == "passcode" else {"Authorization": f"Bearer {token}"}
        refused_connect(wires(), headers, "token expired" if what == "expired" else "authentication failed")
        assert (refusals(server.url, "unauthorized", "stomp"), stomp_errors(server.url, "auth")) == (
            before[0] + 1,
            before[1] + 1,
        )

    def test_no_credentials_is_an_error_then_the_close(self, wires):
        assert refused_connect(wires(), {}, "authentication failed") == "authentication failed"

    def test_a_login_that_is_not_the_token_s_sub_is_refused(self, wires):
        assert (
            refused_connect(wires(), {"login": "bob", "passcode": mint("alice", **ALICE)}, "authentication failed")
            == "authentication failed"
        )

    @pytest.mark.parametrize("login", [None, "", "alice"])
    def test_the_login_may_be_absent_or_the_sub(self, server, wires, login):
        headers = {} if login is None else {"login": login}
        wire = connected_as(wires, mint("alice", **ALICE), **headers)
        wire.subscribe("/topic/news")
        assert receives(server, wire, "news")

    def test_an_authorization_header_in_connect(self, server, wires):
        wire = connected_as(wires, Authorization=f"Bearer {mint('alice', **ALICE)}")
        wire.subscribe("/topic/news")
        assert receives(server, wire, "news")

    def test_the_shared_login_still_works_and_gives_an_anonymous_session(self, wires):
        wire = connected_as(wires, **SHARED)
        wire.send_frame("SUBSCRIBE", {"id": "0", "destination": "/topic/news", "receipt": "r"})
        error = wire.expect_error("unauthorized: /topic/news")
        assert error.get("destination") == "/topic/news" and error.get("receipt-id") == "r"
        assert wire.expect_close() == 1008
        refused_connect(wires(), {"login": SHARED["login"], "passcode": "wrong"}, "authentication failed")

    def test_the_shared_login_with_a_cookie_is_the_cookie_s_identity(self, server, wires):
        wire = wires(cookie=f"switchboard_token={mint('alice', **ALICE)}")
        wire.connect(**SHARED)
        wire.subscribe("/topic/news")
        assert receives(server, wire, "news"), "alice's cookie may follow news; an anonymous session may not"


# ---------------------------------------------------------------------- destinations


class TestDestinations:
    def test_allowed_subscribe_and_send(self, server, wires):
        watch = listener(wires, "/topic/news")
        wire = connected_as(wires, mint("alice", **ALICE))
        wire.subscribe("/topic/room.1")
        wire.subscribe("/topic/news", sub_id="1")
        wire.send_frame("SEND", {"destination": "/topic/news", "content-type": "text/plain", "receipt": "s"}, "hey")
        wire.expect_receipt("s")
        (mine,) = wire.messages(1)
        (theirs,) = watch.messages(1)
        assert mine.get("sender") == theirs.get("sender") == "alice" and theirs.body == b"hey"

    def test_a_forbidden_subscribe_is_an_error_naming_the_destination(self, server, wires):
        watch = listener(wires, "/topic/secret")
        before = (refusals(server.url, "forbidden", "stomp"), stomp_errors(server.url, "forbidden"))
        wire = connected_as(wires, mint("alice", **ALICE))
        wire.subscribe("/topic/news")
        wire.send_frame("SUBSCRIBE", {"id": "1", "destination": "/topic/secret", "receipt": "r"})
        error = wire.expect_error("forbidden: /topic/secret")
        assert error.get("destination") == "/topic/secret" and error.get("receipt-id") == "r"
        assert b"secret" in error.body
        assert wire.expect_close() == 1008
        assert (refusals(server.url, "forbidden", "stomp"), stomp_errors(server.url, "forbidden")) == (
            before[0] + 1,
            before[1] + 1,
        )
        event = publish(server.url, "secret", "for the watcher only")
        (message,) = watch.messages(1)
        assert message.get("event-id") == event["id"], "other sessions keep working"

    def test_a_forbidden_send_publishes_nothing(self, server, wires):
        watch = listener(wires, "/topic/secret")
        wire = connected_as(wires, mint("alice", **ALICE))
        wire.send_frame("SEND", {"destination": "/topic/secret", "receipt": "s"}, "leak")
        assert wire.expect_error("forbidden: /topic/secret").get("receipt-id") == "s"
        assert wire.expect_close() == 1008
        marker = publish(server.url, "secret", "marker")
        (message,) = watch.messages(1)
        assert message.get("event-id") == marker["id"], "the refused SEND never reached the topic"
        assert "leak" not in [event["data"] for event in history(server.url, "secret")]

    def test_a_forbidden_send_in_a_transaction_is_refused_at_once(self, server, wires):
        wire = connected_as(wires, mint("alice", **ALICE))
        wire.send_frame("BEGIN", {"transaction": "t"})
        wire.send_frame("SEND", {"destination": "/topic/secret", "transaction": "t"}, "tx-leak")
        wire.expect_error("forbidden: /topic/secret")
        assert "tx-leak" not in [event["data"] for event in history(server.url, "secret")]

    def test_app_chat_asks_whether_the_sender_may_publish_to_chat(self, server, wires):
        watch = listener(wires, "/topic/chat")
        reader = connected_as(wires, mint("reader", subscribe=["chat"]))
        reader.send_frame(
            "SEND",
            {"destination": "/app/chat", "content-type": "application/json", "receipt": "c"},
            json.dumps({"text": "not allowed"}),
        )
        error = reader.expect_error("forbidden: /app/chat")
        assert error.get("receipt-id") == "c" and b"chat" in error.body
        assert reader.expect_close() == 1008
        writer = connected_as(wires, mint("alice", **ALICE))
        writer.send_frame(
            "SEND",
            {"destination": "/app/chat", "content-type": "application/json", "receipt": "c"},
            json.dumps({"text": "hello"}),
        )
        writer.expect_receipt("c")
        (message,) = watch.messages(1)
        assert json.loads(message.body) == {"text": "hello"} and message.get("sender") == "alice"
        assert "not allowed" not in [e["data"].get("text") for e in history(server.url, "chat")]


# -------------------------------------------------------------------------- expiry


class TestExpiry:
    def test_the_session_ends_with_token_expired(self, server, wires):
        before = refusals(server.url, "unauthorized", "stomp")
        wire = connected_as(wires, mint("dave", lifetime=scaled(2), **ALICE))
        wire.subscribe("/topic/news")
        event = publish(server.url, "news", "before expiry")
        (message,) = wire.messages(1)
        assert message.get("event-id") == event["id"]
        error = wire.frame(timeout=5)
        assert error.command == "ERROR" and error.get("message") == "token expired", error
        publish(server.url, "news", "after expiry")
        assert wire.expect_close() == 1008, "nothing after the ERROR but the close"
        assert refusals(server.url, "unauthorized", "stomp") == before + 1

    def test_a_cookie_session_expires_with_its_token(self, wires):
        wire = wires(cookie=f"switchboard_token={mint('erin', lifetime=scaled(2), **ALICE)}")
        wire.connect()
        wire.subscribe("/topic/news")
        wire.expect_error("token expired")
        assert wire.expect_close() == 1008


# ------------------------------------------------------------------------ real clients


class TestRealClients:
    def test_stomp_py_with_an_authorization_header(self, server):
        url = ws_url(server.url, "/stomp")
        client = PyStomp(url, heartbeats=(0, 0), Authorization=f"Bearer {mint('alice', **ALICE)}")
        try:
            client.expect("connected")
            client.command("subscribe", destination="/topic/news", id="n", receipt="s")
            client.expect("receipt", lambda r: r["id"] == "s")
            event = publish(server.url, "news", {"text": "to stomp.py"})
            assert client.expect("message")["headers"]["event-id"] == event["id"]
        finally:
            client.close()

    @pytest.fixture
    def stompjs(self, server):
        if NODE is None or not (JS_DIR / "node_modules" / "@stomp" / "stompjs").is_dir():
            pytest.fail("Node and tests/js/node_modules are required: run `make node-deps`")
        started: list[NodeStomp] = []

        def start(*args: str) -> NodeStomp:
            client = NodeStomp("stomp_client_v7.js", ws_url(server.url, "/stomp"), "--heartbeat", "0,0", *args)
            started.append(client)
            return client

        yield start
        for client in started:
            client.close()

    def test_stompjs_with_the_token_as_passcode(self, server, stompjs):
        client = stompjs("--passcode", mint("alice", **ALICE))
        client.expect("connected")
        client.command("subscribe", destination="/topic/news", id="n", receipt="s")
        client.expect("receipt", lambda r: r["id"] == "s")
        event = publish(server.url, "news", "to stompjs")
        assert client.expect("message")["headers"]["event-id"] == event["id"]

    def test_stompjs_with_a_bad_token_gets_the_error_and_the_close(self, stompjs):
        client = stompjs("--passcode", bad_tokens()["bad signature"])
        error = client.expect("error")
        assert error["headers"]["message"] == "authentication failed"
        assert client.expect("close")["code"] == 1008
