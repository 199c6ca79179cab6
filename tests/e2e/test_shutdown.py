"""Graceful shutdown (DESIGN.md §8): what each client is told when a worker stops, and
that clients which resume with their cursors lose nothing (Redis) or learn of the gap
(memory, whose history dies with the process).

Real gunicorn with the real worker class; real redis-server. The many-client runs use
tests.support.wsclients.start_resume (a gevent subprocess, so pytest is never the
bottleneck): clients of all five transports stay connected while events flow, and come
back with their cursors whenever the server ends their session.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest
import requests

from app.events import Cursor
from app.transports import wsio
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until
from tests.support.wsclients import (
    ConnectionEnded,
    JsonClient,
    RawWebSocket,
    parse_stomp,
    start_resume,
    stomp_frame,
    ws_url,
)

JSON = {"Content-Type": "application/json"}
SSE_RETRY_MS = 300
CLIENTS = {"polling": 40, "long-polling": 40, "sse": 40, "ws": 40, "stomp": 40}  # 200 in all


def health(base: str) -> dict:
    return requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=scaled(5)).json()


def publish(base: str, topic: str, data) -> dict:
    res = requests.post(
        f"{base}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers={**JSON, "Connection": "close"},
        timeout=scaled(5),
    )
    assert res.status_code == 201, res.text
    return res.json()


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    sock.settimeout(scaled(timeout))
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def open_http(server: Gunicorn, path: str, until: bytes) -> tuple[socket.socket, bytes]:
    """A raw HTTP/1.1 GET; returns the socket and what arrived up to ``until``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(5))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {until!r}: {data!r}"
        data += chunk
    return sock, data


def stomp_session(server: Gunicorn, topic: str | None) -> RawWebSocket:
    ws = RawWebSocket.connect(ws_url(server.url, "/stomp"), protocols=("v12.stomp",), timeout=scaled(5))
    ws.sock.settimeout(scaled(10))
    ws.send_text(
        stomp_frame(
            "CONNECT", [("accept-version", "1.2"), ("host", "localhost"), ("heart-beat", "0,0")], escape=False
        ).decode()
    )
    frames = []
    if topic is not None:
        ws.send_text(
            stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", f"/topic/{topic}"), ("receipt", "r")]).decode()
        )
    while not any(f.command == ("RECEIPT" if topic else "CONNECTED") for f in frames):
        frames += [parse_stomp(payload) for _op, payload in ws.read_messages()]
    return ws


def stomp_until_closed(ws: RawWebSocket) -> list:
    frames = []
    while (messages := ws.read_messages()) is not None:
        frames += [f for f in (parse_stomp(payload) for _op, payload in messages) if f is not None]
    return frames


def in_thread(function, *args) -> dict:
    """Run ``function`` in a thread; the returned box gets ``result`` or ``error``."""
    box: dict = {}

    def run():
        try:
            box["result"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    box["thread"] = threading.Thread(target=run, daemon=True)
    box["thread"].start()
    return box


def result(box: dict, timeout: float = 15):
    box["thread"].join(scaled(timeout))
    assert not box["thread"].is_alive(), "client still waiting"
    if "error" in box:
        raise box["error"]
    return box["result"]


# ----------------------------------------------------------------- what clients are told


def test_sigterm_tells_every_transport_its_own_way_and_exits_quickly(start_server):
    server = start_server({"SWITCHBOARD_SSE_RETRY_MS": str(SSE_RETRY_MS)})
    topic = "bye"
    sse, _ = open_http(server, f"/api/topics/{topic}/stream", b"retry: ")
    poll, _ = open_http(server, f"/api/topics/{topic}/long-poll?timeout=60", b"")
    ws = JsonClient(ws_url(server.url), timeout=10)
    assert ws.request("subscribe", topic=topic)["op"] == "ok"
    stomp_subscribed = stomp_session(server, topic)
    stomp_idle = stomp_session(server, None)  # no subscription: the hub alone would not reach it
    idle = [requests.Session() for _ in range(5)]  # keep-alive connections, idle after one request
    for session in idle:
        assert session.get(f"{server.url}/healthz", timeout=scaled(5)).status_code == 200
    wait_until(lambda: health(server.url)["subscribers"] == 4, timeout=10, message="all four subscribed")

    def ws_until_closed():
        messages = []
        while True:
            try:
                messages.append(ws.recv(timeout=10))
            except ConnectionEnded as ended:
                return messages, ended.code

    boxes = {
        "sse": in_thread(read_until_closed, sse, 10),
        "poll": in_thread(read_until_closed, poll, 10),
        "ws": in_thread(ws_until_closed),
        "stomp": in_thread(stomp_until_closed, stomp_subscribed),
        "stomp-idle": in_thread(stomp_until_closed, stomp_idle),
    }
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(scaled(9))
        stopped = time.monotonic() - started
        # SSE: a last retry: within [retry, retry + jitter], then the end of the chunked body.
        tail = result(boxes["sse"])
        retries = [int(ms) for ms in re.findall(rb"retry: (\d+)\n", tail)]
        assert retries and SSE_RETRY_MS <= retries[-1] <= SSE_RETRY_MS + 2000 + 100, tail
        assert b"server shutting down" in tail and tail.endswith(b"0\r\n\r\n"), tail
        # Long poll: answered 204 at once, and the connection closes after it.
        answer = result(boxes["poll"])
        assert answer.startswith(b"HTTP/1.1 204 "), answer
        assert b"connection: close" in answer.lower(), answer
        # /ws: the subscription's end, then 1001.
        messages, code = result(boxes["ws"])
        assert code == 1001
        assert [m.get("error") for m in messages] == ["shutting_down"], messages
        # STOMP, with and without a subscription: an ERROR with a reconnect hint, then 1001.
        for name, client in (("stomp", stomp_subscribed), ("stomp-idle", stomp_idle)):
            frames = result(boxes[name])
            assert [f.command for f in frames] == ["ERROR"], frames
            assert frames[0].get("message") == "server shutting down"
            assert b"last-event-id" in frames[0].body
            assert client.close_code == 1001, name
        # Nothing waited for the graceful timeout (10 s): idle keep-alives were closed.
        assert stopped < scaled(5), f"the worker took {stopped:.1f}s to stop"
        print(f"\nSIGTERM with 5 streams and 5 idle keep-alive connections: stopped in {stopped:.2f}s")
    finally:
        for sock in (sse, poll):
            sock.close()
        ws.close()
        for client in (stomp_subscribed, stomp_idle):
            client.close()
        for session in idle:
            session.close()


def test_a_stop_with_only_idle_keepalive_connections_is_quick(start_server):
    server = start_server()
    sessions = [requests.Session() for _ in range(20)]
    for session in sessions:
        assert session.get(f"{server.url}/healthz", timeout=scaled(5)).status_code == 200
    silent = socket.create_connection(("127.0.0.1", server.port))  # connected, never says anything
    try:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(scaled(9))
        stopped = time.monotonic() - started
        assert stopped < scaled(3.5), f"stop took {stopped:.1f}s (graceful timeout is 10 s)"
        assert read_until_closed(silent, 2) == b""
        print(f"\nSIGTERM with 21 idle connections: stopped in {stopped:.2f}s")
    finally:
        silent.close()
        for session in sessions:
            session.close()


def test_a_response_while_stopping_says_connection_close(start_server):
    server = start_server()
    sock, _ = open_http(server, "/api/topics/closing/long-poll?timeout=60", b"")
    wait_until(lambda: health(server.url)["subscribers"] == 1, timeout=10, message="the long poll parked")
    server.proc.send_signal(signal.SIGTERM)
    try:
        answer = read_until_closed(sock, 10)
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 204") and b"connection: close" in head, answer
    finally:
        sock.close()
        server.proc.wait(scaled(9))


def test_no_data_frame_after_our_close_frame():
    """RFC 6455 5.5.1: a sender that waited for the send lock while close() took it
    (a forwarder mid fan-out when shutdown sends 1001) must not write after the Close."""
    ours, theirs = gevent.socket.socketpair()
    try:
        handler = SimpleNamespace(socket=ours, rfile=ours.makefile("rb"), environ={}, server=None)
        ws = wsio.WebSocket({}, handler)
        ws._send_lock.acquire()  # another send is in progress
        outcome = []

        def late_sender():
            try:
                ws.send("late")
                outcome.append("sent")
            except wsio.WebSocketError as exc:
                outcome.append(type(exc).__name__)

        sender = gevent.spawn(late_sender)
        gevent.sleep(0.01)  # it checked the state (open) and waits for the lock
        ws._send_lock.release()
        ws.close(1001, "bye")  # takes the lock before the waiting sender wakes up
        sender.join(timeout=2)
        theirs.settimeout(0.5)
        wire = b""
        try:
            while chunk := theirs.recv(65536):
                wire += chunk
        except (TimeoutError, OSError):
            pass
        assert wire == b"\x88\x05\x03\xe9bye", wire  # our Close frame and nothing after it
        assert outcome == ["ConnectionClosed"]
    finally:
        ours.close()
        theirs.close()


# ----------------------------------------------------------------- resume under load


def worker_with_most_sockets(server: Gunicorn) -> int:
    def sockets(pid: int) -> int:
        try:
            return sum(
                1 for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            )
        except OSError:
            return 0

    return max(server.worker_pids(), key=sockets)


def check_complete(report: dict) -> None:
    assert report["done"] and not report["publish_errors"], report["publish_errors"]
    for transport, figures in report["transports"].items():
        summary = {k: v for k, v in figures.items() if k != "after_gap"}
        assert figures["errors"] == [], (transport, summary)
        assert figures["lost"] == 0 and figures["duplicated"] == 0, (transport, summary)
        assert figures["gaps"] == 0, (transport, summary)
        assert figures["complete"] == figures["clients"], (transport, summary)


def describe(report: dict) -> str:
    lines = []
    for transport, f in report["transports"].items():
        lines.append(
            f"  {transport:13} {f['complete']}/{f['clients']} complete, {f['resumed']} resumed, "
            f"{f['sessions']} sessions, gaps {f['gaps']}; ended by {f['signals']}"
        )
    return "\n".join(lines)


@pytest.mark.soak
@pytest.mark.redis
@pytest.mark.parametrize("how", ["sigterm-one-worker", "hup-reload"])
def test_clients_resume_through_a_stopping_worker_and_miss_nothing(how, start_server, tmp_path):
    from tests.support.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as redis_server:
        server = start_server(
            {
                "SWITCHBOARD_REDIS_URL": redis_server.url,
                "WEB_CONCURRENCY": "3",
                "SWITCHBOARD_SSE_RETRY_MS": str(SSE_RETRY_MS),
                "SWITCHBOARD_TICKS": "0",
            }
        )
        wait_until(lambda: len(server.worker_pids()) == 3, timeout=20, message="three workers")
        count, rate = 300, 50.0
        resume = start_resume(server.url, f"resume-{how}", CLIENTS, count=count, rate=rate, timeout=90)
        try:
            ready = resume.wait_ready(scaled(60))
            assert ready["ready"] == sum(CLIENTS.values()), ready
            resume.start_publishing()
            time.sleep(scaled(1.5))  # mid-stream: events keep flowing while the worker stops
            before = set(server.worker_pids())
            if how == "sigterm-one-worker":
                victim = worker_with_most_sockets(server)
                os.kill(victim, signal.SIGTERM)
                gone = {victim}
            else:  # a reload: new workers start, every old one gets SIGTERM
                server.proc.send_signal(signal.SIGHUP)
                gone = before
            wait_until(
                lambda: not (gone & set(server.worker_pids())) and len(server.worker_pids()) == 3,
                timeout=30,
                interval=0.1,
                message="the stopped worker(s) replaced",
            )
            report = resume.wait_done(scaled(90))
        finally:
            resume.stop()
        print(
            f"\n{how}: {count} events at {rate:g}/s to {sum(CLIENTS.values())} clients, "
            f"{report['publish_retries']} publish retries, {report['seconds']}s\n{describe(report)}"
        )
        check_complete(report)
        resumed = sum(f["resumed"] for f in report["transports"].values())
        assert resumed > 0, "no client was on the stopped worker(s)"
        if how == "hup-reload":  # every stream was on an old worker: each was told, and came back
            for transport in ("sse", "ws", "stomp"):
                figures = report["transports"][transport]
                assert figures["resumed"] == figures["clients"], (transport, figures["signals"])
            signals = {transport: f["signals"] for transport, f in report["transports"].items()}
            assert signals["sse"].get("sse:retry-end"), signals
            assert signals["ws"].get("ws:1001") and signals["ws"].get("ws:error-shutting_down"), signals
            assert signals["stomp"].get("stomp:ERROR server shutting down+1001"), signals


@pytest.mark.soak
def test_memory_restart_tells_every_client_of_the_gap(start_server, tmp_path):
    env = {"SWITCHBOARD_SSE_RETRY_MS": str(SSE_RETRY_MS), "SWITCHBOARD_TICKS": "0"}
    server = start_server(env)
    count, rate = 300, 50.0
    resume = start_resume(server.url, "restart", CLIENTS, count=count, rate=rate, timeout=90)
    try:
        ready = resume.wait_ready(scaled(60))
        assert ready["ready"] == sum(CLIENTS.values()), ready
        resume.start_publishing()
        time.sleep(scaled(2))
        old_epoch = health(server.url)["epoch"]
        assert server.stop() == 0  # SIGTERM to the master: a clean stop
        restarted = start_server(env, port=server.port)
        assert health(restarted.url)["epoch"] != old_epoch
        report = resume.wait_done(scaled(90))
    finally:
        resume.stop()
    print(
        f"\nmemory restart: {count} events, {report['publish_retries']} publish retries, "
        f"{report['seconds']}s\n{describe(report)}"
    )
    assert report["done"] and not report["publish_errors"], report["publish_errors"]
    ids = {int(n): event_id for n, event_id in report["ids"].items()}
    new_epoch = Cursor.parse(ids[count - 1]).epoch
    published_after = [n for n in sorted(ids) if n >= 0 and Cursor.parse(ids[n]).epoch == new_epoch]
    assert 0 < len(published_after) < count, "events on both sides of the restart"
    for transport, figures in report["transports"].items():
        assert figures["errors"] == [], (transport, figures["errors"])
        # Every client learnt of the gap (its cursor is of the old epoch), then got every
        # event of the new one, once and in order: nothing was skipped silently.
        assert figures["gapped"] == figures["clients"], (transport, figures["gapped"])
        for after in figures["after_gap"]:
            assert after == published_after, (transport, after[:10], published_after[:10])
