"""Presence end to end: real gunicorn, one worker in memory and two on a real redis-server.

A user is a browser session (its cookie; with access control, its token): however many tabs
and transports it holds, it joins a topic once and leaves once. Clients here are plain
sockets that behave like the pages: SSE streams over http.client (so the worker that holds
one can be read from /proc), ``/ws`` JSON clients, polls. A *watcher* (another user on
``/ws``) records the presence events as every page receives them; "nothing else happened"
is checked with a marker event that must come next.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time

import pytest
import requests
import websocket

from tests.e2e.test_redis_scaleout import worker_of
from tests.support.auth import auth_env, bearer, mint
from tests.support.redis_server import RedisServer
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until
from tests.support.wsclients import JsonClient, cookie_header, parse_stomp, stomp_frame, ws_url

TTL = 2.0
ENV = {
    "SWITCHBOARD_PRESENCE_TOPICS": "here.*",
    "SWITCHBOARD_PRESENCE_TTL": str(TTL),
    "SWITCHBOARD_SSE_HEARTBEAT": "0.5",
    "SWITCHBOARD_WS_PING_INTERVAL": "0",
    "SWITCHBOARD_TICKS": "0",
}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("presence-memory"), env=ENV) as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("presence-redis")) as server:
        yield server


def redis_env(redis: RedisServer) -> dict[str, str]:
    return {**ENV, "WEB_CONCURRENCY": "2", "SWITCHBOARD_REDIS_URL": redis.url}


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    """gunicorn with two workers on one Redis."""
    with Gunicorn(tmp_path_factory.mktemp("presence-cluster"), env=redis_env(redis_server)) as server:
        yield server


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def any_server(request):
    return request.getfixturevalue("memory_server" if request.param == "memory" else "cluster")


_topics = iter(range(1_000_000))


@pytest.fixture
def topic():
    return f"here.t{os.getpid()}-{next(_topics)}-{time.monotonic_ns() % 100_000}"


# -- clients ------------------------------------------------------------------------------


class SseTab:
    """One open SSE stream (a tab), on a connection of its own or the one given."""

    def __init__(
        self, server: Gunicorn, topic: str, headers: dict[str, str], conn: http.client.HTTPConnection | None = None
    ):
        self.conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(10))
        self.conn.request("GET", f"/api/topics/{topic}/stream", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.readline().startswith(b"retry:")  # the opening is written at once
        self.worker = worker_of(server, self.conn.sock.getsockname()[1])

    def close(self) -> None:
        """Go away as a closed tab does (the server notices at its next heartbeat)."""
        sock = self.conn.sock
        if sock is None:
            return  # closed already
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.response.close()
        self.conn.close()


class User:
    """One browser: its session cookie is who it is (or a Bearer token, when given)."""

    def __init__(self, server: Gunicorn, token: str | None = None):
        self.server = server
        self.session = requests.Session()
        self.headers = bearer(token) if token else {}
        res = self.session.get(f"{server.url}/api/whoami", headers=self.headers, timeout=scaled(10))
        assert res.status_code == 200, res.text
        self.name = res.json()["sender"]
        self.tabs: list = []

    @property
    def stream_headers(self) -> dict[str, str]:
        cookie = cookie_header(self.session)
        return {**self.headers, **({"Cookie": cookie} if cookie else {})}

    def sse(self, topic: str, conn: http.client.HTTPConnection | None = None) -> SseTab:
        tab = SseTab(self.server, topic, self.stream_headers, conn)
        self.tabs.append(tab)
        return tab

    def ws(self, topic: str) -> JsonClient:
        client = JsonClient(
            ws_url(self.server.url), self.session, header=[f"{k}: {v}" for k, v in self.headers.items()]
        )
        reply = client.request("subscribe", topic=topic)
        assert reply["op"] == "ok", reply
        self.tabs.append(client)
        return client

    def poll(self, topic: str) -> None:
        res = self.session.get(f"{self.server.url}/api/topics/{topic}/events", headers=self.headers, timeout=scaled(10))
        assert res.status_code == 200, res.text

    def close(self) -> None:
        for tab in self.tabs:
            tab.close()
        self.session.close()


class Watcher(User):
    """A user on ``/ws`` who records the presence events of one topic (its own excepted)."""

    def __init__(self, server: Gunicorn, topic: str):
        super().__init__(server)
        self.topic = topic
        self.client = self.ws(topic)

    def reconnect(self) -> None:
        """A new ``/ws`` connection of the same user (its own join and leave are not recorded)."""
        self.tabs.remove(self.client)
        self.client.close()
        self.client = self.ws(self.topic)

    def worker(self) -> int:
        return worker_of(self.server, self.client.ws.sock.getsockname()[1])

    def changes(self, n: int, timeout: float = 10) -> list[tuple[str, str]]:
        """The next ``n`` presence events of others, as ``(action, sender)``."""
        out = []
        deadline = time.monotonic() + scaled(timeout)
        while len(out) < n:
            event = self.client.next_event(max(0.01, deadline - time.monotonic()) / scaled(1))
            assert event["op"] == "event" and event["type"] == "presence", f"expected a presence event: {event}"
            assert event["sender"] == event["data"]["sender"], event
            if event["sender"] != self.name:
                out.append((event["data"]["action"], event["sender"]))
        return out

    def nothing_else(self) -> None:
        """Publish a marker: it must be the next event (presence events of our own aside)."""
        marker = publish(self.server, self.topic, "marker")
        while True:
            event = self.client.next_event()
            if event.get("type") == "presence" and event.get("sender") == self.name:
                continue
            assert event.get("id") == marker["id"], f"expected only the marker, got {event}"
            return


def publish(server: Gunicorn, topic: str, data, type_: str | None = None, headers=None) -> dict:
    body = {"data": data, **({"type": type_} if type_ else {})}
    res = requests.post(
        f"{server.url}/api/topics/{topic}/events",
        data=json.dumps(body),
        headers={**JSON, **(headers or {})},
        timeout=scaled(10),
    )
    assert res.status_code == 201, res.text
    return res.json()


def presence(server: Gunicorn, topic: str, headers=None) -> requests.Response:
    return requests.get(f"{server.url}/api/topics/{topic}/presence", headers=headers or {}, timeout=scaled(10))


def members(server: Gunicorn, topic: str) -> list[str]:
    res = presence(server, topic)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["topic"] == topic and body["count"] == len(body["members"]), body
    return sorted(member["sender"] for member in body["members"])


def metric(server: Gunicorn, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=scaled(10)).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def sse_streams(server: Gunicorn) -> float:
    return metric(server, 'switchboard_open_connections{transport="sse"}')


# -- one user, many tabs --------------------------------------------------------------------


def test_tabs_of_one_user_join_once_and_leave_once(any_server, topic):
    watcher = Watcher(any_server, topic)
    alice = User(any_server)
    try:
        streams_before = sse_streams(any_server)
        first = alice.sse(topic)
        assert watcher.changes(1) == [("join", alice.name)]
        second, socket_tab = alice.sse(topic), alice.ws(topic)
        assert members(any_server, topic) == sorted([alice.name, watcher.name])
        first.close()
        second.close()
        wait_until(lambda: sse_streams(any_server) == streams_before, timeout=10, message="the streams' end noticed")
        watcher.nothing_else()  # two tabs closed, one left: no leave
        assert alice.name in members(any_server, topic)
        socket_tab.close()
        assert watcher.changes(1) == [("leave", alice.name)]
        assert members(any_server, topic) == [watcher.name]
        watcher.nothing_else()
        assert metric(any_server, 'switchboard_presence_events_total{action="join"}') >= 2
    finally:
        alice.close()
        watcher.close()


def test_two_users(any_server, topic):
    watcher = Watcher(any_server, topic)
    alice, bob = User(any_server), User(any_server)
    try:
        alice.sse(topic)
        assert watcher.changes(1) == [("join", alice.name)]
        bob_tab = bob.ws(topic)
        assert watcher.changes(1) == [("join", bob.name)]
        body = presence(any_server, topic).json()
        assert body["count"] == 3 and [m["sender"] for m in body["members"]][-2:] == [alice.name, bob.name], body
        assert all(isinstance(m["since"], (int, float)) for m in body["members"])
        bob_tab.close()
        assert watcher.changes(1) == [("leave", bob.name)]
        assert members(any_server, topic) == sorted([alice.name, watcher.name])
    finally:
        alice.close()
        bob.close()
        watcher.close()


@pytest.mark.redis
def test_the_same_user_on_sse_and_ws_on_two_workers_counts_once(cluster, topic):
    watcher = Watcher(cluster, topic)
    alice = User(cluster)
    try:
        stream = alice.sse(topic)
        assert watcher.changes(1) == [("join", alice.name)]
        for _ in range(40):  # until the socket lands on the other worker
            socket_tab = alice.ws(topic)
            if worker_of(cluster, socket_tab.ws.sock.getsockname()[1]) != stream.worker:
                break
            socket_tab.close()
        else:
            pytest.fail("every /ws connection landed on the SSE stream's worker")
        watcher.nothing_else()  # no second join
        socket_tab.close()
        watcher.nothing_else()  # and no leave while the stream is open on the other worker
        assert alice.name in members(cluster, topic)
        stream.close()
        assert watcher.changes(1) == [("leave", alice.name)]
        assert alice.name not in members(cluster, topic)
    finally:
        alice.close()
        watcher.close()


# -- polls -------------------------------------------------------------------------------------


def test_a_poller_is_present_while_it_polls_and_leaves_a_ttl_after(memory_server, topic):
    watcher = Watcher(memory_server, topic)
    poller = User(memory_server)
    try:
        poller.poll(topic)
        assert watcher.changes(1) == [("join", poller.name)]
        for _ in range(int(1.5 * TTL / 0.4)):  # polls every 0.4 s for 1.5 TTL: it stays
            time.sleep(0.4)
            poller.poll(topic)
        watcher.nothing_else()
        last_poll = time.monotonic()
        assert watcher.changes(1, timeout=2 * TTL + 5) == [("leave", poller.name)]
        assert time.monotonic() - last_poll >= TTL - 0.1, "left before its window ended"
        assert time.monotonic() - last_poll <= scaled(1.25 * TTL + 2)
    finally:
        poller.close()
        watcher.close()


def test_a_parked_long_poll_counts_while_parked(memory_server, topic):
    watcher = Watcher(memory_server, topic)
    poller = User(memory_server)
    url = f"{memory_server.url}/api/topics/{topic}/long-poll"
    try:
        # Its own join is news on the topic: the first poll may be answered with it at once.
        first = poller.session.get(url, params={"timeout": "1"}, timeout=scaled(10))
        assert first.status_code in (200, 204)
        assert watcher.changes(1) == [("join", poller.name)]
        # (Read as the poller: a poll by anyone else would be a new guest joining.)
        cursor = poller.session.get(f"{memory_server.url}/api/topics/{topic}/events", timeout=scaled(10)).json()[
            "cursor"
        ]
        started = time.monotonic()
        parked = poller.session.get(url, params={"timeout": str(TTL + 1), "since": cursor}, timeout=scaled(10))
        assert parked.status_code == 204 and time.monotonic() - started >= TTL + 0.9
        watcher.nothing_else()  # parked for longer than a TTL, and still present
        assert poller.name in members(memory_server, topic)
    finally:
        poller.close()
        watcher.close()


# -- a worker dies --------------------------------------------------------------------------------


@pytest.mark.redis
def test_the_users_of_a_killed_worker_leave_within_the_ttl(redis_server, start_server, topic):
    server = start_server(redis_env(redis_server))
    alice, carol = User(server), User(server)
    watcher = None
    try:
        doomed_tab = alice.sse(topic)
        doomed = doomed_tab.worker
        carol.sse(topic, conn=_connection_on(server, doomed))  # carol: one tab on each worker
        watcher = Watcher(server, topic)
        for _ in range(40):  # the watcher must live through the kill
            if watcher.worker() != doomed:
                break
            watcher.reconnect()
        else:
            pytest.fail("every /ws connection landed on the worker to kill")
        carol.sse(topic, conn=_connection_on(server, watcher.worker()))
        wait_until(
            lambda: members(server, topic) == sorted([alice.name, carol.name, watcher.name]),
            timeout=10,
            message="everyone present",
        )

        os.kill(doomed, signal.SIGKILL)
        killed = time.monotonic()
        assert watcher.changes(1, timeout=1.25 * TTL + 5) == [("leave", alice.name)]
        assert time.monotonic() - killed <= scaled(1.25 * TTL + 2), "not within the expiry"
        watcher.nothing_else()  # carol still has a tab on the worker that lives
        assert members(server, topic) == sorted([carol.name, watcher.name]), "the endpoint agrees with the events"
        history = requests.get(f"{server.url}/api/topics/{topic}/events", timeout=scaled(10)).json()["events"]
        alice_events = [e["data"]["action"] for e in history if e["type"] == "presence" and e["sender"] == alice.name]
        assert alice_events == ["join", "leave"]
    finally:
        alice.close()
        carol.close()
        if watcher is not None:
            watcher.close()


def _connection_on(server: Gunicorn, pid: int, attempts: int = 60) -> http.client.HTTPConnection:
    """A keep-alive connection that the worker ``pid`` accepted (its next request goes there)."""
    for _ in range(attempts):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(10))
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        if worker_of(server, conn.sock.getsockname()[1]) == pid:
            return conn
        conn.close()
    pytest.fail(f"no connection landed on worker {pid}")


# -- access control and forgery -----------------------------------------------------------------


def test_the_endpoint_needs_subscribe_on_the_topic(start_server):
    server = start_server({**ENV, **auth_env()})
    topic = "here.private"
    url = f"{server.url}/api/topics/{topic}/presence"
    res = requests.get(url, timeout=scaled(10))
    assert res.status_code == 401 and res.json()["error"] == "unauthorized"
    assert res.headers["WWW-Authenticate"].startswith("Bearer")
    res = requests.get(url, headers=bearer(mint("eve", subscribe=["here.public"])), timeout=scaled(10))
    assert res.status_code == 403 and res.json()["error"] == "forbidden"

    alice = User(server, mint("alice", name="Alice", subscribe=["here.*", "elsewhere"]))
    try:
        assert alice.name == "Alice"
        alice.sse(topic)
        allowed = bearer(mint("bob", subscribe=["here.*"]))
        wait_until(lambda: presence(server, topic, allowed).json()["members"], timeout=10, message="alice present")
        res = presence(server, topic, allowed)
        assert res.status_code == 200 and res.headers["Cache-Control"] == "no-store"
        body = res.json()
        assert body["topic"] == topic and body["count"] == 1 and body["members"][0]["sender"] == "Alice", body
        res = requests.get(f"{server.url}/api/topics/elsewhere/presence", headers=alice.headers, timeout=scaled(10))
        assert res.status_code == 404 and res.json()["error"] == "no_presence", "a topic without presence"
        res = requests.get(f"{server.url}/api/topics/no%20such/presence", headers=alice.headers, timeout=scaled(10))
        assert res.status_code == 400 and res.json()["error"] == "bad_topic"
    finally:
        alice.close()


def test_a_client_cannot_publish_a_presence_event(memory_server, topic):
    topic = topic.replace("here.", "plain-")  # no presence: the final read joins no one
    forged = {"action": "join", "sender": "mallory"}
    res = requests.post(
        f"{memory_server.url}/api/topics/{topic}/events",
        data=json.dumps({"type": "presence", "data": forged}),
        headers=JSON,
        timeout=scaled(10),
    )
    assert res.status_code == 400 and res.json()["error"] == "bad_type", res.text

    with JsonClient(ws_url(memory_server.url)) as client:
        reply = client.request("publish", topic=topic, type="presence", data=forged)
        assert reply["op"] == "error" and reply["error"] == "bad_type", reply

    stomp = websocket.create_connection(
        ws_url(memory_server.url, "/stomp"), subprotocols=["v12.stomp"], timeout=scaled(10)
    )
    try:
        stomp.send(stomp_frame("CONNECT", {"accept-version": "1.2", "host": "localhost"}).decode())
        assert parse_stomp(_text(stomp)).command == "CONNECTED"
        stomp.send(
            stomp_frame(
                "SEND",
                {"destination": f"/topic/{topic}", "event-type": "presence", "content-type": "application/json"},
                json.dumps(forged),
            ).decode()
        )
        error = parse_stomp(_text(stomp))
        assert error.command == "ERROR" and "event-type" in error.get("message", ""), error
    finally:
        stomp.close()

    history = requests.get(f"{memory_server.url}/api/topics/{topic}/events", timeout=scaled(10)).json()["events"]
    assert history == [], "nothing was published"


def _text(ws: websocket.WebSocket) -> bytes:
    message = ws.recv()
    return message.encode("utf-8") if isinstance(message, str) else message
