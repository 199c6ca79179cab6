"""The shipped nginx.conf in front of real gunicorn: every transport, and every seed note.

Each test starts Debian's nginx with the repo's nginx.conf, changing only the DEPLOY
lines (listen port, upstream address) to free ports.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests
import websocket

from app.config import Settings
from tests.support.nginx import Nginx, shipped_config
from tests.support.timing import scaled

pytestmark = pytest.mark.nginx
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    from tests.support.servers import Gunicorn

    with Gunicorn(tmp_path_factory.mktemp("nginx-app"), env={"SWITCHBOARD_BEHIND_PROXY": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(app_server):
    nginx = Nginx(app_server.port).start()
    yield nginx
    nginx.stop()


def publish(base, topic, data):
    res = requests.post(f"{base}/api/topics/{topic}/events", data=json.dumps({"data": data}), headers=JSON, timeout=10)
    assert res.status_code == 201, res.text
    return res.json()


def open_sse(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=scaled(5))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, within: float, buffer: bytearray) -> float:
    """Read until ``marker`` is in ``buffer``; return the seconds it took. Fail after ``within``."""
    start = time.monotonic()
    deadline = start + within
    while marker not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{marker!r} not received within {within:.1f}s; got {bytes(buffer[-300:])!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {bytes(buffer[-300:])!r}")
        buffer += chunk
    return time.monotonic() - start


class TestStaticAndPolling:
    def test_static_files_come_from_nginx(self, proxy, app_server):
        res = requests.get(proxy.url + "/static/js/common.js", timeout=5)
        assert res.status_code == 200
        assert res.headers["Server"].startswith("nginx")
        assert res.headers["Cache-Control"] == "max-age=3600" and "Expires" in res.headers
        assert res.headers["Content-Type"].startswith("application/javascript")
        # Flask would add its own headers and answer conditional requests differently;
        # nginx's static handler gives an ETag of its own "<mtime>-<size>" shape.
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', res.headers["ETag"])
        flask = requests.get(app_server.url + "/static/js/common.js", timeout=5)
        assert flask.headers.get("ETag") != res.headers["ETag"]

    def test_pages_and_api_are_proxied(self, proxy):
        assert requests.get(proxy.url + "/", timeout=5).status_code == 200
        assert requests.get(proxy.url + "/healthz", timeout=5).json()["status"] == "ok"

    def test_polling_keeps_etag_and_304(self, proxy):
        with requests.Session() as http:
            event = publish(proxy.url, "nginx-poll", 1)
            res = http.get(f"{proxy.url}/api/topics/nginx-poll/events", timeout=5)
            assert res.status_code == 200 and res.headers["ETag"] == f'"{event["id"]}"'
            again = http.get(
                f"{proxy.url}/api/topics/nginx-poll/events",
                params={"since": event["id"]},
                headers={"If-None-Match": res.headers["ETag"]},
                timeout=5,
            )
            assert again.status_code == 304
            assert again.headers["ETag"] == res.headers["ETag"]

    def test_keepalive_to_upstream(self, proxy):
        """Seed note: HTTP/1.0 upstreams close every connection; ours stay open (HTTP/1.1, Connection '')."""
        with requests.Session() as http:
            for _ in range(5):
                res = http.get(proxy.url + "/healthz", timeout=5)
                assert res.status_code == 200
                assert res.headers.get("Connection", "keep-alive").lower() == "keep-alive"

    def test_body_limit_matches_the_app_and_is_json(self, proxy):
        big = json.dumps({"data": "x" * (1024 * 1024 + 10)})
        res = requests.post(f"{proxy.url}/api/topics/t/events", data=big, headers=JSON, timeout=10)
        assert res.status_code == 413 and res.json()["error"] == "too_large"
        limit = re.search(r"client_max_body_size (\d+)m;", shipped_config())
        assert limit and int(limit.group(1)) * 1024 * 1024 == Settings().max_message_bytes

    def test_forwarded_client_address_reaches_the_app(self, proxy):
        publish(proxy.url, "nginx-who", "x")  # the request went through; ProxyFix is on
        res = requests.get(proxy.url + "/healthz", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
        assert res.status_code == 200


class TestTimeouts:
    def location_block(self, pattern: str) -> str:
        config = shipped_config()
        start = config.index(pattern)
        return config[start : config.index("}", start)]

    def read_timeout(self, pattern: str) -> float:
        match = re.search(r"proxy_read_timeout (\d+)s;", self.location_block(pattern))
        assert match, f"no proxy_read_timeout in {pattern}"
        return float(match.group(1))

    def test_read_timeouts_exceed_the_apps_intervals(self):
        defaults = Settings()
        assert self.read_timeout("location ~ ^/api/((topics/[^/]+/)?stream|") > defaults.sse_heartbeat
        assert self.read_timeout("location ~ ^/api/((topics/[^/]+/)?long-poll|") > defaults.longpoll_timeout
        assert self.read_timeout("location ~ ^/(ws|stomp)$") > defaults.ws_ping_interval

    def test_stream_and_long_poll_locations_cover_one_topic_and_several(self):
        config = shipped_config()
        for kind in ("stream", "long-poll"):
            match = next(
                (
                    m
                    for m in re.finditer(r"location ~ (\^/api/\S*\$) \{", config)
                    if re.match(m.group(1), f"/api/topics/chat/{kind}")
                ),
                None,
            )
            assert match, f"no {kind} location"
            assert re.match(match.group(1), f"/api/topics/chat/{kind}"), "one topic"
            assert re.match(match.group(1), f"/api/{kind}"), "several topics (?topic=a&topic=b)"
            assert not re.match(match.group(1), f"/api/topics/{kind}"), "nothing else"

    def test_every_seed_note_is_in_the_config(self):
        config = shipped_config()
        for line in (
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_buffering off;",
            "proxy_set_header Upgrade           $http_upgrade;",
            "proxy_set_header Connection        $connection_upgrade;",
            "map $http_upgrade $connection_upgrade",
        ):
            assert line in config, line


class TestStreamingThroughNginx:
    def test_sse_first_bytes_and_events_arrive_at_once(self, proxy):
        sock = open_sse(proxy.url, "/api/topics/nginx-sse/stream")
        buffer = bytearray()
        try:
            assert read_until(sock, b"retry:", scaled(1.0), buffer) < scaled(1.0)
            head = bytes(buffer).split(b"\r\n\r\n")[0].lower()
            assert b"200 ok" in head and b"text/event-stream" in head
            event = publish(proxy.url, "nginx-sse", {"n": 1})
            assert read_until(sock, event["id"].encode(), scaled(1.0), buffer) < scaled(1.0)
        finally:
            sock.close()

    @staticmethod
    def site_gzip(config: str) -> str:
        """A common site-wide setting: gzip for every text type, SSE included."""
        config = config.replace("            gzip off;\n", "")
        return config.replace(
            "    sendfile on;", "    sendfile on;\n    gzip on; gzip_min_length 0; gzip_types text/event-stream;"
        )

    def first_bytes_after_publish(self, nginx: Nginx, topic: str, within: float, path: str | None = None) -> bytes:
        """Open a gzip-accepting SSE stream (``path``, or the topic's own), publish to
        ``topic``, and return what arrives within ``within`` s."""
        host = f"127.0.0.1:{nginx.port}"
        sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=scaled(5))
        try:
            sock.sendall(
                f"GET {path or f'/api/topics/{topic}/stream'} HTTP/1.1\r\nHost: {host}\r\n"
                "Accept-Encoding: gzip\r\n\r\n".encode()
            )
            publish(nginx.url, topic, {"n": 1})
            received = bytearray()
            deadline = time.monotonic() + within
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                received += chunk
                if b"\r\n\r\n" in received and len(received.split(b"\r\n\r\n", 1)[1]) > 0:
                    break
            return bytes(received)
        finally:
            sock.close()

    def test_buffering_proxy_holds_the_same_event_back(self, app_server):
        """Counter-test. With gzip on site-wide (common), `proxy_buffering off` still streams each
        event at once; the same config with buffering on (X-Accel-Buffering ignored) holds the
        stream back until its buffer fills, so nothing arrives at all."""
        shipped = Nginx(app_server.port, edit=self.site_gzip).start()
        try:
            streamed = self.first_bytes_after_publish(shipped, "nginx-unbuffered", scaled(2.0))
        finally:
            shipped.stop()
        assert b"200 OK" in streamed and streamed.split(b"\r\n\r\n", 1)[1], "unbuffered: event bytes arrive at once"

        def buffered(config: str) -> str:
            return self.site_gzip(config).replace(
                "proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;"
            )

        held = Nginx(app_server.port, edit=buffered).start()
        try:
            assert self.first_bytes_after_publish(held, "nginx-buffered", 2.0) == b"", (
                "buffered: the same event is held back"
            )
        finally:
            held.stop()

    def test_a_multi_topic_stream_is_unbuffered_too(self, app_server):
        """The several-topics stream gets the one-topic stream's location. The app's
        X-Accel-Buffering header is ignored here (as a proxy in between might), so only that
        location's proxy_buffering off can stream it; with the location's old one-topic
        regex, the same stream falls to the buffered default location and nothing arrives."""
        path = "/api/stream?topic=nginx-multi-a&topic=nginx-multi-b"

        def ignore_app_header(config: str) -> str:
            # Site-wide gzip (the location keeps its own gzip off) and no X-Accel-Buffering.
            return config.replace(
                "    sendfile on;",
                "    sendfile on;\n    gzip on; gzip_min_length 0; "
                "gzip_types text/event-stream;\n    proxy_ignore_headers X-Accel-Buffering;",
            )

        shipped = Nginx(app_server.port, edit=ignore_app_header).start()
        try:
            sock = socket.create_connection(("127.0.0.1", shipped.port), timeout=scaled(5))
            buffer = bytearray()
            try:
                sock.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{shipped.port}\r\nAccept-Encoding: gzip\r\n\r\n".encode()
                )
                assert read_until(sock, b"retry:", scaled(2.0), buffer) < scaled(2.0)
                event = publish(shipped.url, "nginx-multi-b", {"n": 1})
                assert read_until(sock, event["id"].encode(), scaled(2.0), buffer) < scaled(2.0)
                assert b'"topic":"nginx-multi-b"' in buffer, "plain text: the stream's location has gzip off"
            finally:
                sock.close()
        finally:
            shipped.stop()

        def one_topic_location(config: str) -> str:
            old = ignore_app_header(config).replace(
                "location ~ ^/api/((topics/[^/]+/)?stream|", "location ~ ^/api/(topics/[^/]+/stream|"
            )
            assert old != ignore_app_header(config), "nginx.conf no longer has the stream location"
            return old

        held = Nginx(app_server.port, edit=one_topic_location).start()
        try:
            assert self.first_bytes_after_publish(held, "nginx-multi-b", 2.0, path) == b"", (
                "outside the stream location the same stream is held back"
            )
        finally:
            held.stop()

    def test_long_poll_returns_200_and_204_uncut(self, proxy):
        start = publish(proxy.url, "nginx-lp", 0)["id"]
        url = f"{proxy.url}/api/topics/nginx-lp/long-poll"
        timer = time.monotonic()
        res = requests.get(url, params={"since": start, "timeout": 2}, timeout=scaled(30))
        assert res.status_code == 204 and res.content == b""
        assert time.monotonic() - timer >= 1.5
        later = publish(proxy.url, "nginx-lp", 1)
        res = requests.get(url, params={"since": start, "timeout": 5}, timeout=scaled(30))
        assert res.status_code == 200 and res.json()["events"][0]["id"] == later["id"]

    def test_multi_topic_long_poll_returns_200_and_204_uncut(self, proxy):
        url = f"{proxy.url}/api/long-poll?topic=nginx-mlp-a&topic=nginx-mlp-b"
        start = "~".join(f"{topic}~{publish(proxy.url, topic, 0)['id']}" for topic in ("nginx-mlp-a", "nginx-mlp-b"))
        timer = time.monotonic()
        res = requests.get(url, params={"since": start, "timeout": 2}, timeout=scaled(30))
        assert res.status_code == 204 and res.content == b""
        assert time.monotonic() - timer >= 1.5
        later = publish(proxy.url, "nginx-mlp-b", 1)
        res = requests.get(url, params={"since": start, "timeout": 5}, timeout=scaled(30))
        assert res.status_code == 200 and [e["id"] for e in res.json()["events"]] == [later["id"]]

    def test_websocket_upgrades_and_messages_flow_both_ways(self, proxy):
        origin = proxy.url
        ws = websocket.create_connection(proxy.url.replace("http", "ws") + "/ws", origin=origin, timeout=scaled(5))
        try:
            ws.send(json.dumps({"op": "subscribe", "topic": "nginx-ws", "ref": 1}))
            assert json.loads(ws.recv())["op"] == "ok"
            ws.send(json.dumps({"op": "publish", "topic": "nginx-ws", "data": {"text": "hi"}, "ref": 2}))
            seen = [json.loads(ws.recv()) for _ in range(2)]
            assert {m["op"] for m in seen} == {"ok", "event"}
            event = publish(proxy.url, "nginx-ws", "from http")
            assert json.loads(ws.recv())["id"] == event["id"]
        finally:
            ws.close()

    def test_hostile_origin_is_refused_through_nginx(self, proxy):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(
                proxy.url.replace("http", "ws") + "/ws", origin="https://evil.example", timeout=scaled(5)
            )
        assert info.value.status_code == 403

    def test_stomp_subprotocol_survives(self, proxy):
        ws = websocket.create_connection(
            proxy.url.replace("http", "ws") + "/stomp",
            origin=proxy.url,
            subprotocols=["v10.stomp", "v12.stomp", "v11.stomp"],
            timeout=scaled(5),
        )
        try:
            assert ws.getsubprotocol() == "v12.stomp"
            ws.send("CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\x00")
            assert ws.recv().startswith("CONNECTED\n")
            ws.send("SUBSCRIBE\nid:0\ndestination:/topic/nginx-stomp\nreceipt:r1\n\n\x00")
            assert ws.recv().startswith("RECEIPT\n")
            event = publish(proxy.url, "nginx-stomp", "over stomp")
            frame = ws.recv()
            assert frame.startswith("MESSAGE\n") and f"event-id:{event['id']}" in frame
        finally:
            ws.close()
