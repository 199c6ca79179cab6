"""Idle streams whose request greenlet has ended (issue 15: idle memory per connection).

An SSE stream's request greenlet ends once the stream is set up: the server detaches the
response (``RawResponse.detach``) and the worker's one keeper (app/transports/sse_keeper.py)
sends its heartbeats, ends it when its token expires, and finishes it (last chunk, close,
access log line). A /ws socket and a STOMP session are read by callbacks
(app/server/reader.py): a reader greenlet exists only while there is something to read; a
STOMP session's deadlines (heart-beats) are an event-loop timer, not a greenlet. These tests check that what the greenlets did is still done, and count
the greenlets through ``/healthz?greenlets=1``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import requests

from tests.e2e.test_sse import parse_sse, stream
from tests.support.timing import scaled, wait_until
from tests.support.wsclients import RawWebSocket, parse_stomp, stomp_frame, ws_url

COUNT = 20  # idle connections of each kind: enough that one greenlet each would show


def health(server) -> dict:
    return requests.get(server.url + "/healthz?greenlets=1", headers={"Connection": "close"}, timeout=scaled(10)).json()


def publish(server, topic: str, data) -> dict:
    res = requests.post(f"{server.url}/api/topics/{topic}/events", json={"data": data}, timeout=scaled(10))
    assert res.status_code == 201, res.text
    return res.json()


def settled_greenlets(server, expected_subscribers: int) -> int:
    """The worker's live greenlets once the hub counts ``expected_subscribers`` (a new
    connection's greenlets have started or ended by then)."""
    wait_until(lambda: health(server)["subscribers"] == expected_subscribers, timeout=10, message="subscribers")
    return health(server)["greenlets"]


@pytest.fixture
def server(start_server, tmp_path):
    access_log = tmp_path / "access.log"
    running = start_server(
        {
            "SWITCHBOARD_SSE_HEARTBEAT": "0.3",
            "SWITCHBOARD_TICKS": "0",
            "SWITCHBOARD_ACCESS_LOG": str(access_log),
        }
    )
    running.access_log = access_log
    return running


class TestSse:
    def test_idle_streams_hold_no_greenlet_and_still_get_heartbeats_and_events(self, server):
        base = settled_greenlets(server, 0)
        streams = [stream(server.url, "quiet") for _ in range(COUNT)]
        try:
            count = settled_greenlets(server, COUNT)
            # The keeper is one greenlet for all of them (and may just have started).
            assert count - base <= 2, f"{count - base} greenlets for {COUNT} idle SSE streams"
            for raw in streams:  # a heartbeat comment reaches every one
                raw.read_until(lambda _events, raw=raw: b": ping" in raw.body, timeout=5)
            event = publish(server, "quiet", {"n": 1})
            for raw in streams:
                events = raw.read_events(1)
                assert [e["id"] for e in events] == [event["id"]]
                assert json.loads(events[0]["data"])["data"] == {"n": 1}
        finally:
            for raw in streams:
                raw.close()

    def test_a_gone_client_is_released_by_a_heartbeat_and_logged_when_its_stream_ends(self, server):
        raw = stream(server.url, "leaving")
        assert health(server)["subscribers"] == 1
        raw.close()
        # The next heartbeat finds the client gone: subscription released, access log written.
        wait_until(lambda: health(server)["subscribers"] == 0, timeout=5, message="subscription released")
        wait_until(
            lambda: server.access_log.exists() and "/api/topics/leaving/stream" in server.access_log.read_text(),
            timeout=5,
            message="the stream's access log line",
        )
        line = next(line for line in server.access_log.read_text().splitlines() if "/topics/leaving/stream" in line)
        assert '" 200 ' in line, line

    def test_last_event_id_resume_on_a_detached_stream(self, server):
        first = publish(server, "resume", "a")
        second = publish(server, "resume", "b")
        with stream(server.url, "resume", headers={"Last-Event-ID": first["id"]}) as raw:
            events = raw.read_events(1)
            assert [e["id"] for e in events] == [second["id"]]
            third = publish(server, "resume", "c")
            events = raw.read_events(2)
            assert [e["id"] for e in events] == [second["id"], third["id"]]

    def test_sigterm_ends_every_detached_stream_with_a_retry_and_the_last_chunk(self, server):
        streams = [stream(server.url, "stopping") for _ in range(5)]
        try:
            settled_greenlets(server, 5)
            (worker,) = server.worker_pids()
            os.kill(worker, signal.SIGTERM)
            for raw in streams:
                deadline = time.monotonic() + scaled(10)
                while raw.read_chunk(timeout=max(0.1, deadline - time.monotonic())) is not None:
                    pass
                assert raw.ended, "the chunked body ends with its last chunk"
                _, comments, retry = parse_sse(raw.body)
                assert retry is not None and retry >= 1000, raw.body[-200:]
                assert any("server shutting down" in comment for comment in comments), comments
                raw.sock.settimeout(scaled(5))
                assert raw.sock.recv(1) == b"", "the connection closes after the stream"
        finally:
            for raw in streams:
                raw.close()


class TestWebSocket:
    def test_idle_websockets_hold_no_greenlet_and_still_get_events(self, server):
        base = settled_greenlets(server, 0)
        sockets = []
        try:
            for n in range(COUNT):
                ws = RawWebSocket.connect(ws_url(server.url), timeout=scaled(10))
                ws.send_text(json.dumps({"op": "subscribe", "topic": "idle-ws", "ref": n}))
                assert json.loads(ws.read_messages()[0][1])["op"] == "ok"
                sockets.append(ws)
            count = settled_greenlets(server, COUNT)
            # A reader greenlet exists only while there is something to read.
            assert count - base <= 2, f"{count - base} greenlets for {COUNT} idle WebSockets"
            event = publish(server, "idle-ws", "hello")
            for ws in sockets:
                message = json.loads(ws.read_messages()[0][1])
                assert (message["op"], message["id"]) == ("event", event["id"])
        finally:
            for ws in sockets:
                ws.close()
        wait_until(lambda: health(server)["subscribers"] == 0, timeout=10, message="every subscription released")

    def test_a_frame_sent_with_the_handshake_is_read(self, server):
        # Pipelined behind the upgrade request: the handler's buffered reader holds it when
        # the connection is handed over to its reader.
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(10))
        probe = RawWebSocket(sock)
        probe.sock = _Capture()
        probe.send_text(json.dumps({"op": "ping", "ref": "early"}))
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.sendall(request.encode("ascii") + probe.sock.data)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = RawWebSocket(sock, head.split(b"\r\n\r\n", 1)[1])
        try:
            reply = json.loads(ws.read_messages()[0][1])
            assert (reply["op"], reply["ref"]) == ("ok", "early")
        finally:
            ws.close()

    def test_the_access_log_line_is_written_when_the_socket_closes(self, server):
        # gunicorn's line ends with the User-Agent: each request here names its own.
        mine, other = f'"ws-log-{os.getpid()}-{time.monotonic_ns()}"', f'"barrier-{time.monotonic_ns()}"'

        def lines(agent: str) -> list[str]:
            text = server.access_log.read_text() if server.access_log.exists() else ""
            return [line for line in text.splitlines() if line.endswith(agent)]

        ws = RawWebSocket.connect(ws_url(server.url), headers={"User-Agent": mine.strip('"')}, timeout=scaled(10))
        try:
            ws.send_text(json.dumps({"op": "ping", "ref": "up"}))
            reply = json.loads(ws.read_messages()[0][1])
            assert (reply["op"], reply["ref"]) == ("ok", "up"), "the socket is being served"
            # A request made after the upgrade is logged; the open socket's line is not yet
            # (it is written at the end, with the session's length).
            answer = requests.get(f"{server.url}/healthz", headers={"User-Agent": other.strip('"')}, timeout=scaled(10))
            assert answer.status_code == 200
            wait_until(lambda: lines(other), timeout=5, message="the later request's access log line")
            assert lines(mine) == [], "no line for the WebSocket while it is open"
        finally:
            ws.close()
        wait_until(lambda: lines(mine), timeout=5, message="the WebSocket's access log line")
        (line,) = lines(mine)
        assert '"GET /ws HTTP/1.1" 101' in line, line


class TestStomp:
    def test_idle_sessions_hold_no_greenlet_and_heart_beats_still_go_out(self, server):
        base = settled_greenlets(server, 0)
        sessions = []
        try:
            for _ in range(COUNT):
                ws = RawWebSocket.connect(ws_url(server.url, "/stomp"), protocols=("v12.stomp",), timeout=scaled(10))
                ws.send_text(
                    stomp_frame(
                        "CONNECT", [("accept-version", "1.2"), ("host", "x"), ("heart-beat", "0,1000")]
                    ).decode()
                )
                ws.send_text(
                    stomp_frame(
                        "SUBSCRIBE", [("id", "0"), ("destination", "/topic/idle-stomp"), ("receipt", "r")]
                    ).decode()
                )
                frames = []
                while not any(frame.command == "RECEIPT" for frame in frames):
                    frames += [parse_stomp(payload) for _, payload in ws.read_messages()]
                assert frames[0].command == "CONNECTED", frames[0]
                sessions.append(ws)
            count = settled_greenlets(server, COUNT)
            assert count - base <= 2, f"{count - base} greenlets for {COUNT} idle STOMP sessions"
            # The server heart-beats every second (heart-beat 0,1000 asked for them): an EOL
            # arrives on an idle session although no greenlet waits for its deadline.
            for ws in sessions[:3]:
                ws.sock.settimeout(scaled(5))
                assert ws.read_messages() is not None
        finally:
            for ws in sessions:
                ws.close()
        wait_until(lambda: health(server)["subscribers"] == 0, timeout=10, message="every subscription released")


class _Capture:
    """A socket stand-in that keeps what a RawWebSocket sends (to pipeline it by hand)."""

    def __init__(self):
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data
