"""Capacity: one gunicorn worker holds 2,000 parked long polls and 2,000 open SSE streams.

The clients are raw non-blocking sockets multiplexed with ``selectors`` in this
process (one small buffer per connection, no thread each), so the test process is
not the bottleneck: the worker is. What is measured is printed (``pytest -s``):
connection time, the worker's memory per held connection, publish latency under load,
fan-out time to all 4,000, and how fast the subscriptions go once the clients leave.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.support.timing import scaled, wait_until

LONG_POLLS = 2000
STREAMS = 2000
BATCH = 250  # connections opened before waiting for them: stays below gunicorn's listen backlog
HEARTBEAT = 2.0
ONE_SHOT = {"Connection": "close"}


class Conn:
    __slots__ = ("sock", "request", "buf", "closed")

    def __init__(self, sock: socket.socket, request: bytes):
        self.sock = sock
        self.request = request
        self.buf = bytearray()
        self.closed = False


class Swarm:
    """Many HTTP requests held open at once on non-blocking sockets."""

    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []

    def open(self, path: str) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(self.addr)
        request = f"GET {path} HTTP/1.1\r\nHost: {self.addr[0]}:{self.addr[1]}\r\n\r\n".encode()
        conn = Conn(sock, request)
        self.selector.register(sock, selectors.EVENT_WRITE, conn)
        self.conns.append(conn)
        return conn

    def pump(self, done, timeout: float, what: str) -> float:
        """Serve the sockets until ``done()``; return the seconds it took."""
        started = time.monotonic()
        deadline = started + scaled(timeout)
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {scaled(timeout):.0f}s waiting for {what}")
            for key, mask in self.selector.select(0.05):
                conn: Conn = key.data
                if mask & selectors.EVENT_WRITE:
                    conn.sock.send(conn.request)  # ~100 bytes: fits any fresh send buffer
                    self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    conn.closed = True
                    self.selector.unregister(conn.sock)
                else:
                    conn.buf += data
        return time.monotonic() - started

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for conn in self.conns:
            conn.sock.close()
        self.conns = []
        self.selector.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def health(base: str) -> dict:
    return requests.get(base + "/healthz", headers=ONE_SHOT, timeout=scaled(10)).json()


@pytest.fixture
def many_files():
    """Enough file descriptors for 4,000 sockets here and in the server started after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = LONG_POLLS + STREAMS + 1000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn) to run this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_one_worker_holds_2000_long_polls_and_2000_streams(many_files, start_server):
    srv = start_server({"SWITCHBOARD_LONGPOLL_TIMEOUT": "120", "SWITCHBOARD_SSE_HEARTBEAT": str(HEARTBEAT)})
    (worker,) = srv.worker_pids()
    host, port = srv.url.removeprefix("http://").split(":")
    swarm = Swarm(host, int(port))
    marker = "capacity-marker-7f3a"
    try:
        rss_before = rss_kib(worker)
        started = time.monotonic()
        streams, polls = [], []
        for first in range(0, STREAMS, BATCH):
            batch = [swarm.open("/api/topics/capacity/stream") for _ in range(min(BATCH, STREAMS - first))]
            streams += batch
            swarm.pump(lambda: all(b"retry: " in c.buf for c in batch), 30, "SSE openings")
        rss_streams = rss_kib(worker)
        for first in range(0, LONG_POLLS, BATCH):
            polls += [swarm.open("/api/topics/capacity/long-poll") for _ in range(min(BATCH, LONG_POLLS - first))]
            expected = STREAMS + len(polls)
            swarm.pump(lambda: health(srv.url)["subscribers"] >= expected, 30, "parked long polls")
        connect_s = time.monotonic() - started
        assert health(srv.url)["subscribers"] == STREAMS + LONG_POLLS
        assert not any(c.closed for c in swarm.conns), "every connection still open"
        rss_after = rss_kib(worker)

        # A publish is answered promptly with 4,000 held connections in the same worker.
        sent = time.monotonic()
        res = requests.post(
            f"{srv.url}/api/topics/capacity/events",
            data=json.dumps({"data": marker}),
            headers={"Content-Type": "application/json", **ONE_SHOT},
            timeout=scaled(10),
        )
        publish_s = time.monotonic() - sent
        assert res.status_code == 201
        assert publish_s < scaled(2.0), f"publish took {publish_s:.2f}s"
        event_id = res.json()["id"].encode()
        token = marker.encode()
        fanout_s = swarm.pump(lambda: all(token in c.buf for c in swarm.conns), 60, "the event on every connection")
        fanout_s += publish_s
        for conn in streams:
            assert b"id: " + event_id + b"\nevent: message\n" in conn.buf
        for conn in polls:
            assert conn.buf.startswith(b"HTTP/1.1 200 ") and b'"gap":false' in conn.buf

        # The long polls were answered (released); the streams go once their clients do.
        assert health(srv.url)["subscribers"] == STREAMS
        swarm.close()
        left = time.monotonic()
        wait_until(
            lambda: health(srv.url)["subscribers"] == 0,
            timeout=2 * HEARTBEAT + 10,
            interval=0.2,
            message="every subscription to be released",
        )
        release_s = time.monotonic() - left

        per_stream = (rss_streams - rss_before) / STREAMS
        per_poll = (rss_after - rss_streams) / LONG_POLLS
        print(
            f"\ncapacity: {STREAMS} streams + {LONG_POLLS} long polls opened in {connect_s:.1f}s; "
            f"worker RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB "
            f"({per_stream:.1f} KiB per stream, {per_poll:.1f} KiB per parked poll); "
            f"publish answered in {publish_s * 1000:.0f} ms; on all {STREAMS + LONG_POLLS} in {fanout_s:.2f}s; "
            f"released {release_s:.1f}s after the clients left (heartbeat {HEARTBEAT:g}s)"
        )
    finally:
        swarm.close()
