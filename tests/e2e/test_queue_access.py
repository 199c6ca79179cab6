"""Access control on the issue-16 endpoints that are not STOMP frames, on a real gunicorn:
the ``/ws`` queue ops (``consume``, ``send``; ``ack``/``nack`` of what another connection
holds), ``POST /api/queues/<name>/messages`` and ``POST /api/users/<sub>/queue/<name>/events``.

A queue ``<name>`` is judged as the topic ``queue.<name>`` (consume: ``subscribe``, send:
``publish``); a user destination of ``<sub>`` needs ``publish`` on ``user.<sub>`` unless the
caller is ``<sub>``. Each refusal is checked to have stored and delivered nothing: an allowed
consumer's first message is a marker sent after the refused attempt.
(STOMP's own refusals for queues, wildcards and /user are in test_stomp_queues.py and
test_stomp_destinations.py.)
"""

from __future__ import annotations

import pytest
import requests

from tests.e2e.test_stomp_ws import Wire
from tests.support.auth import auth_env, bearer, mint
from tests.support.servers import Gunicorn
from tests.support.timing import scaled
from tests.support.wsclients import JsonClient, ws_url

WORKER = {"subscribe": ["queue.*"], "publish": ["queue.*"]}  # each test has its own queue


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("queue-access"), env=auth_env()) as running:
        yield running


@pytest.fixture
def connect(server):
    """Factory: a /ws connection whose handshake carries ``token`` as the session cookie."""
    made: list[JsonClient] = []

    def open_client(token: str | None = None) -> JsonClient:
        options = {"cookie": f"switchboard_token={token}"} if token is not None else {}
        client = JsonClient(ws_url(server.url, "/ws"), **options)
        made.append(client)
        return client

    yield open_client
    for client in made:
        client.close()


@pytest.fixture
def stomp(server):
    made: list[Wire] = []

    def open_client(token: str) -> Wire:
        client = Wire(server)
        made.append(client)
        client.connect(passcode=token)
        return client

    yield open_client
    for client in made:
        client.close()


def queue_post(base: str, queue: str, data, token: str | None = None) -> requests.Response:
    return requests.post(
        f"{base}/api/queues/{queue}/messages",
        json={"data": data},
        headers=bearer(token) if token else {},
        timeout=scaled(5),
    )


def user_post(base: str, sub: str, name: str, data, token: str | None = None) -> requests.Response:
    return requests.post(
        f"{base}/api/users/{sub}/queue/{name}/events",
        json={"data": data},
        headers=bearer(token) if token else {},
        timeout=scaled(5),
    )


def next_message(client: JsonClient) -> dict:
    """The next queue ``message`` op (other ops are kept in ``pending``)."""
    while True:
        message = client.recv()
        if message.get("op") == "message":
            return message
        client.pending.append(message)


class TestWsQueueOps:
    def test_an_allowed_worker_consumes_sends_and_acks(self, server, connect):
        worker = connect(mint("worker", **WORKER))
        assert worker.request("consume", queue="jobs-ok", prefetch=1)["op"] == "ok"
        sent = worker.request("send", queue="jobs-ok", data="job-1")
        assert sent["op"] == "ok", sent
        message = next_message(worker)
        assert (message["id"], message["data"], message["sender"]) == (sent["id"], "job-1", "worker")
        assert worker.request("ack", id=message["id"])["op"] == "ok"

    @pytest.mark.parametrize("who", ["anonymous", "forbidden"])
    def test_consume_and_send_are_refused_and_change_nothing(self, server, connect, who):
        expected = "unauthorized" if who == "anonymous" else "forbidden"
        queue = f"jobs-{who}"
        # The topic of the same name and another queue are granted: neither is this queue.
        token = (
            None
            if who == "anonymous"
            else mint("nosy", subscribe=[queue, "queue.other"], publish=[queue, "queue.other"])
        )
        client = connect(token)
        consume = client.request("consume", queue=queue)
        assert (consume["op"], consume["error"]) == ("error", expected), consume
        send = client.request("send", queue=queue, data="sneaky")
        assert (send["op"], send["error"]) == ("error", expected), send
        assert client.request("ping")["op"] == "ok", "the connection stays"
        # Nothing was stored by the refused send, and the refused consume takes nothing.
        marker = queue_post(server.url, queue, "marker", mint("app", publish=["queue.*"]))
        assert marker.status_code == 201, marker.text
        worker = connect(mint("worker", **WORKER))
        assert worker.request("consume", queue=queue, prefetch=5)["op"] == "ok"
        message = next_message(worker)
        assert message["data"] == "marker"
        assert worker.request("ack", id=message["id"])["op"] == "ok"
        client.assert_silent()

    def test_ack_or_nack_of_another_connection_s_message_is_not_held(self, server, connect):
        owner = connect(mint("worker", **WORKER))
        assert owner.request("consume", queue="jobs-owned", prefetch=1)["op"] == "ok"
        assert queue_post(server.url, "jobs-owned", "owned", mint("app", publish=["queue.*"])).status_code == 201
        message = next_message(owner)
        stranger = connect(mint("worker", **WORKER))  # the same user, another connection
        for op in ("ack", "nack"):
            reply = stranger.request(op, id=message["id"])
            assert (reply["op"], reply["error"]) == ("error", "not_held"), reply
        assert owner.request("ack", id=message["id"])["op"] == "ok", "still the owner's to settle"


class TestHttpQueue:
    def test_refused_sends_store_nothing(self, server, connect):
        assert queue_post(server.url, "jobs-http", "anonymous").status_code == 401
        refused = queue_post(server.url, "jobs-http", "forbidden", mint("app", publish=["jobs-http", "queue.other"]))
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        worker = connect(mint("worker", **WORKER))
        assert worker.request("consume", queue="jobs-http", prefetch=5)["op"] == "ok"
        marker = queue_post(server.url, "jobs-http", "marker", mint("app", publish=["queue.jobs-http"]))
        assert marker.status_code == 201, marker.text
        message = next_message(worker)
        assert message["data"] == "marker"
        assert worker.request("ack", id=message["id"])["op"] == "ok"


class TestHttpUserDestination:
    def test_own_and_permitted_sends_arrive(self, server, stomp):
        alice = stomp(mint("alice"))
        alice.subscribe("/user/queue/inbox")
        own = user_post(server.url, "alice", "inbox", "note to self", mint("alice"))
        assert own.status_code == 201, own.text
        assert alice.messages(1)[0].body == b"note to self"
        app = user_post(server.url, "alice", "inbox", "from the app", mint("app", publish=["user.*"]))
        assert app.status_code == 201, app.text
        assert alice.messages(1)[0].body == b"from the app"

    def test_refused_sends_deliver_nothing(self, server, stomp):
        alice = stomp(mint("alice"))
        alice.subscribe("/user/queue/inbox")
        assert user_post(server.url, "alice", "inbox", "anonymous").status_code == 401
        bob = user_post(server.url, "alice", "inbox", "sneaky", mint("bob", publish=["user.bob", "chat"]))
        assert bob.status_code == 403 and bob.json()["error"] == "forbidden"
        assert user_post(server.url, "alice", "inbox", "marker", mint("alice")).status_code == 201
        assert alice.messages(1)[0].body == b"marker", "nothing before the marker"

    @pytest.mark.parametrize("sub, name, code", [("a.b", "inbox", "bad_user"), ("alice", ".x", "bad_queue")])
    def test_bad_names(self, server, sub, name, code):
        res = user_post(server.url, sub, name, "x", mint("app", publish=["**"]))
        assert res.status_code == 400 and res.json()["error"] == code
