"""SockJS through the repo's nginx.conf: every transport, unbuffered streams, HTTP/1.0, and
sticky sessions across two gunicorns (one worker each) sharing a Redis hub.

Sticky sessions: SockJS's HTTP transports spread one session over many requests, and the
session lives in the worker that made it. nginx.conf hashes the upstream on the session
id from the URL; the last test shows what happens without that line (sends reach a
server that does not hold the session: 404).
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from tests.support.nginx import Nginx, replace_once
from tests.support.node_clients import NodeClient
from tests.support.rawhttp import RawHttp
from tests.support.redis_server import RedisServer
from tests.support.servers import Gunicorn
from tests.support.timing import scaled

pytestmark = pytest.mark.nginx
JSON = {"Content-Type": "application/json"}
TRANSPORTS = ("websocket", "xhr-streaming", "xhr-polling", "eventsource")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("sockjs-nginx-app"), env={"SWITCHBOARD_BEHIND_PROXY": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(app_server):
    nginx = Nginx(app_server.port).start()
    yield nginx
    nginx.stop()


def publish(base, topic, data):
    res = requests.post(
        f"{base}/api/topics/{topic}/events", data=json.dumps({"data": data}), headers=JSON, timeout=scaled(10)
    )
    assert res.status_code == 201, res.text
    return res.json()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stomp_over_each_transport_through_nginx(proxy, transport):
    topic = f"sjs-nginx-{transport}"
    clients = [
        NodeClient(
            "sockjs_stomp_client.js",
            proxy.url + "/stomp-sockjs",
            "--lib",
            "v7",
            "--transport",
            transport,
            "--heartbeat",
            "0,0",
        ),
        NodeClient(
            "sockjs_stomp_client.js",
            proxy.url + "/websocket/stomp",
            "--lib",
            "v2",
            "--transport",
            transport,
            "--heartbeat",
            "0,0",
        ),
    ]
    try:
        v7, seed = clients
        assert v7.expect("open")["transport"] == transport
        v7.expect("connected", timeout=15)
        seed.expect("connected", timeout=15)
        v7.command("subscribe", destination=f"/topic/{topic}", id="s", receipt="r")
        v7.expect("receipt", lambda r: r["id"] == "r")
        seed.command("subscribe", destination="/sub/chat", id="c", receipt="r")
        seed.expect("receipt", lambda r: r["id"] == "r")
        sent = time.monotonic()
        publish(proxy.url, topic, "through nginx")
        assert v7.expect("message")["body"] == "through nginx"
        assert time.monotonic() - sent < scaled(3), "held back by a buffer"
        v7.command(
            "send",
            destination="/app/chat",
            body=json.dumps({"text": f"v7 via nginx {transport}"}),
            headers={"content-type": "application/json"},
            receipt="s1",
        )
        v7.expect("receipt", lambda r: r["id"] == "s1")
        body = json.loads(seed.expect("message", lambda r: "v7 via nginx" in r["body"])["body"])
        assert body["message"] == f"v7 via nginx {transport}" and body["sender"].startswith("guest-")
    finally:
        for client in clients:
            client.close()


def test_streaming_transports_are_not_buffered(proxy):
    for transport, method, first in (
        ("xhr_streaming", "POST", "h" * 2048 + "\n"),
        ("eventsource", "GET", "\r\n"),
        ("htmlfile?c=cb", "GET", None),
    ):
        url = f"{proxy.url}/ws-sockjs/000/{uuid.uuid4().hex}/{transport}"
        conn = RawHttp(url)
        response = conn.request(method, url)
        assert response.status == 200 and response["transfer-encoding"] == "chunked"
        received = response.read_chunk()
        while "o" not in received.lstrip("h\r\n")[:200]:  # the open frame, at once (nginx may join chunks)
            received += response.read_chunk()
        assert first is None or received.startswith(first)
        url2 = url.rsplit("/", 1)[0] + "/xhr_send"
        assert (
            requests.post(url2, data=json.dumps([json.dumps({"op": "ping", "ref": 7})]), timeout=scaled(10)).status_code
            == 204
        )
        sent = time.monotonic()
        while '\\"ref\\":7' not in received and "ref" not in received.split("o", 1)[-1]:
            received += response.read_chunk()
        assert time.monotonic() - sent < scaled(3), f"{transport} held back by a buffer"
        conn.close()


def test_polling_and_jsonp_through_nginx_and_http_10(proxy):
    url = f"{proxy.url}/ws-sockjs/000/{uuid.uuid4().hex}"
    assert requests.get(url + "/jsonp?c=cb", timeout=scaled(10)).text == 'cb("o");\r\n'
    r = requests.post(
        url + "/jsonp_send",
        data="d=" + requests.utils.quote(json.dumps([json.dumps({"op": "ping", "ref": 1})])),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=scaled(10),
    )
    assert r.text == "ok"
    reply = requests.get(url + "/jsonp?c=cb", timeout=scaled(10)).text
    assert reply.startswith('cb("a[') and '\\\\\\"op\\\\\\":\\\\\\"ok\\\\\\"' in reply
    # A client speaking HTTP/1.0 to nginx: the stream ends when the session closes, with no chunking.
    url = f"{proxy.url}/ws-sockjs/000/{uuid.uuid4().hex}"
    conn = RawHttp(url)
    response = conn.request("POST", url + "/xhr_streaming", http="1.0")
    assert response.status == 200 and not response["transfer-encoding"]
    assert conn.recv_some().startswith(b"h")
    conn.close()
    r = requests.get(proxy.url + "/websocket/stomp/info", timeout=scaled(10))
    assert r.json()["websocket"] is True


@pytest.fixture(scope="module")
def two_gunicorns(tmp_path_factory):
    redis = RedisServer(tmp_path_factory.mktemp("sockjs-redis")).start()
    env = {"SWITCHBOARD_BEHIND_PROXY": "1", "SWITCHBOARD_REDIS_URL": redis.url, "WEB_CONCURRENCY": "1"}
    servers = [Gunicorn(tmp_path_factory.mktemp(f"sockjs-sticky-{n}"), env=env).start() for n in range(2)]
    yield servers
    for server in servers:
        server.stop()
    redis.stop()


def two_upstreams(second_port: int, sticky: bool = True):
    def edit(config: str) -> str:
        config = re.sub(
            r"(        server 127\.0\.0\.1:\d+;[^\n]*\n)",
            r"\1" + f"        server 127.0.0.1:{second_port};\n",
            config,
            count=1,
        )
        if not sticky:
            config = replace_once(config, "        hash $sockjs_session;", "        # hash removed:")
        return config

    return edit


def xhr_session(base: str, messages: list[str]) -> list[int]:
    """Open an xhr-polling session, send, poll: the statuses of each request."""
    url = f"{base}/ws-sockjs/000/{uuid.uuid4().hex}"
    statuses = [requests.post(url + "/xhr", timeout=scaled(10)).status_code]
    for message in messages:
        statuses.append(requests.post(url + "/xhr_send", data=json.dumps([message]), timeout=scaled(10)).status_code)
    return statuses


def test_sticky_sessions_across_two_gunicorns(two_gunicorns):
    first, second = two_gunicorns
    nginx = Nginx(first.port, edit=two_upstreams(second.port)).start()
    try:
        # Twenty sessions, each over several requests: every request of a session reaches its server.
        for n in range(20):
            assert xhr_session(nginx.url, [json.dumps({"op": "ping", "ref": k}) for k in range(3)]) == [
                200,
                204,
                204,
                204,
            ], n
        # Sessions on both servers share the hub through Redis: a chat message reaches all.
        clients = [
            NodeClient(
                "sockjs_stomp_client.js",
                nginx.url + "/websocket/stomp",
                "--lib",
                "v2",
                "--transport",
                transport,
                "--heartbeat",
                "0,0",
            )
            for transport in ("xhr-polling", "xhr-streaming")
        ]
        try:
            for client in clients:
                client.expect("connected", timeout=15)
                client.command("subscribe", destination="/sub/chat", id="c", receipt="r")
                client.expect("receipt", lambda r: r["id"] == "r")
            clients[0].command("send", destination="/pub/chat", body="across workers")
            for client in clients:
                assert (
                    json.loads(client.expect("message", lambda r: "across" in r["body"])["body"])["message"]
                    == "across workers"
                )
        finally:
            for client in clients:
                client.close()
    finally:
        nginx.stop()


def test_without_the_hash_sessions_break(two_gunicorns):
    first, second = two_gunicorns
    nginx = Nginx(first.port, edit=two_upstreams(second.port, sticky=False)).start()
    try:
        results = [xhr_session(nginx.url, ["{}", "{}"]) for _ in range(10)]
        assert any(404 in statuses for statuses in results), results  # a send reached the other server
    finally:
        nginx.stop()
