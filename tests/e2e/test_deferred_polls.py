"""Parked long polls whose request greenlet has ended (issue 15: idle memory per connection).

A parked poll's answer is deferred (app/server/deferred.py): the request's greenlet ends,
the poll waits as a wake-up signal and a loop timer (app/transports/parked_poll.py), and the
greenlet that answers then serves the connection's next requests. These tests speak raw
HTTP/1.x on one socket, so keep-alive after a deferred answer is seen as a client sees it.
"""

from __future__ import annotations

import json
import os
import socket
import time

from tests.e2e.test_detached_streams import health, publish, server, settled_greenlets  # noqa: F401  (fixture)
from tests.support.timing import scaled, wait_until

COUNT = 20  # parked polls: enough that one greenlet each would show


class Http:
    """One client connection, one request at a time (raw HTTP/1.x)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=scaled(10))
        self.buf = b""

    def send(self, path: str, method: str = "GET", version: str = "HTTP/1.1", headers: dict | None = None) -> None:
        lines = [f"{method} {path} {version}", "Host: test"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body."""
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ", 2)[1])
        length = 0 if head_only or status in (204, 304) else int(headers["content-length"])
        while len(self.buf) < length:
            self._read()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        self.sock.settimeout(scaled(5))
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _read(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"the server closed the connection; had {self.buf[:200]!r}"
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def test_parked_polls_hold_no_greenlet_and_their_connections_serve_the_next_requests(server):
    base = settled_greenlets(server, 0)
    agent = f"deferred-{os.getpid()}-{time.monotonic_ns()}"
    clients = [Http(server.url) for _ in range(COUNT)]
    try:
        for client in clients:
            client.send("/api/topics/parked/long-poll?timeout=30", headers={"User-Agent": agent})
        count = settled_greenlets(server, COUNT)
        assert count - base <= 2, f"{count - base} greenlets for {COUNT} parked long polls"
        event = publish(server, "parked", {"n": 1})
        for client in clients:
            status, headers, body = client.response()
            assert status == 200, (status, body)
            assert headers["content-type"] == "application/json"
            assert headers["cache-control"] == "no-store"
            assert headers["x-content-type-options"] == "nosniff", "the app's after_request headers are kept"
            assert "connection" not in headers, "HTTP/1.1 keep-alive by default"
            page = json.loads(body)
            assert [e["id"] for e in page["events"]] == [event["id"]] and page["cursor"] == event["id"]
            assert page["gap"] is False
        wait_until(lambda: health(server)["subscribers"] == 0, timeout=5, message="the polls' subscriptions released")
        # The same connections, again: a poll that times out (204), then a plain request.
        for client in clients:
            client.send(f"/api/topics/parked/long-poll?since={event['id']}&timeout=0.5", headers={"User-Agent": agent})
        for client in clients:
            status, headers, body = client.response()
            assert (status, body) == (204, b"")
            assert "content-type" not in headers and "content-length" not in headers
        for client in clients:
            client.send("/healthz", headers={"User-Agent": agent})
            status, _, body = client.response()
            assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        for client in clients:
            client.close()

    def lines() -> list[str]:
        text = server.access_log.read_text() if server.access_log.exists() else ""
        return [line for line in text.splitlines() if line.endswith(f'"{agent}"')]

    wait_until(lambda: len(lines()) == 3 * COUNT, timeout=5, message="an access log line per request")
    assert sum('/long-poll?timeout=30 HTTP/1.1" 200 ' in line for line in lines()) == COUNT, lines()[:3]
    assert sum('&timeout=0.5 HTTP/1.1" 204 ' in line for line in lines()) == COUNT, lines()[:3]


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(server):
    for version, headers, said in (
        ("HTTP/1.0", {}, "close"),
        ("HTTP/1.1", {"Connection": "close"}, "close"),
    ):
        client = Http(server.url)
        try:
            client.send("/api/topics/closing/long-poll?timeout=0.3", version=version, headers=headers)
            status, answer_headers, _ = client.response()
            assert status == 204
            assert answer_headers.get("connection") == said, (version, answer_headers)
            assert client.closed_by_server(), f"{version} {headers}: the connection closes after the answer"
        finally:
            client.close()


def test_http_1_0_keep_alive_is_kept(server):
    client = Http(server.url)
    try:
        client.send("/api/topics/kept/long-poll?timeout=0.3", version="HTTP/1.0", headers={"Connection": "keep-alive"})
        status, headers, _ = client.response()
        assert (status, headers.get("connection")) == (204, "keep-alive")
        client.send("/healthz", version="HTTP/1.0", headers={"Connection": "keep-alive"})
        assert client.response()[0] == 200, "the next request on the same connection"
    finally:
        client.close()


def test_a_head_poll_answers_headers_only_and_the_connection_goes_on(server):
    client = Http(server.url)
    try:
        client.send("/api/topics/headed/long-poll?timeout=30", method="HEAD")
        wait_until(lambda: health(server)["subscribers"] == 1, timeout=5, message="the poll to park")
        publish(server, "headed", "x")
        status, headers, body = client.response(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        client.send("/healthz")
        status, _, body = client.response()
        assert status == 200 and json.loads(body)["status"] == "ok", "no body bytes left on the connection"
    finally:
        client.close()


def test_a_client_gone_while_parked_is_released_at_the_timeout(server):
    client = Http(server.url)
    client.send("/api/topics/gone/long-poll?timeout=1")
    wait_until(lambda: health(server)["subscribers"] == 1, timeout=5, message="the poll to park")
    client.close()
    wait_until(lambda: health(server)["subscribers"] == 0, timeout=5, message="the subscription released")
    assert health(server)["status"] == "ok"
