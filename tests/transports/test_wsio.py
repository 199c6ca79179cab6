"""app.transports.wsio: the handshake decided before 101, inbound limits, keepalive,
close codes and graceful shutdown, against real gunicorn with the real worker class.

Servers run ``tests/support/ws_echo_app.py`` (an echo application with its own
``switchboard_ws_policy``). Clients are websocket-client, or raw sockets where a test
must send what a well-behaved client never would. Every wait is bounded and scaled by
SWITCHBOARD_TEST_TIME_SCALE; nothing sleeps to synchronise.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket

from app.server import frames
from app.server.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    mask_frame,
)
from app.transports import wsio
from tests.support.timing import scaled, wait_until

ROOT = Path(__file__).resolve().parents[2]
MASK = b"\x37\xfa\x21\x3d"  # the mask of RFC 6455 section 5.7's examples
MAX_BYTES = 64 * 1024  # the test servers' message limit: small, so limit tests are cheap


# ----------------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EchoServer:
    """gunicorn -k app.transports.wsio.Worker tests.support.ws_echo_app:app on a free port.

    ``settings`` become WS_ECHO_* variables (see ws_echo_app.policy_from_env).
    """

    def __init__(self, log_dir: Path, graceful_timeout: float | None = None, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.graceful_timeout = int(graceful_timeout if graceful_timeout is not None else scaled(10))
        self.log_path = Path(log_dir) / f"gunicorn-{self.port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.update({f"WS_ECHO_{name.upper()}": str(value) for name, value in settings.items()})
        self.proc: subprocess.Popen | None = None

    def start(self) -> "EchoServer":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "app.transports.wsio.Worker",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                "1",
                "--no-control-socket",
                "--graceful-timeout",
                str(self.graceful_timeout),
                "tests.support.ws_echo_app:app",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._ready, timeout=30, interval=0.05, message=f"gunicorn on {self.url}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(self.url + "/stats", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stats(self) -> dict:
        response = requests.get(self.url + "/stats", timeout=scaled(5))
        assert response.status_code == 200
        return response.json()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(20))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(scaled(5))
        if self.proc is not None:
            self._log.close()


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """One server for the handshake and frame tests: no keepalive, 64 KiB limit."""
    server = EchoServer(
        tmp_path_factory.mktemp("echo"),
        max_bytes=MAX_BYTES,
        ping_interval=0,
        allowed_origins="https://example.com,http://allowed.test:8080",
    ).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path):
    """Factory for a server a test may signal or kill; stopped after the test."""
    servers = []

    def start(**settings) -> EchoServer:
        server = EchoServer(tmp_path, **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ------------------------------------------------------------------ raw client


class RawClient:
    """A WebSocket client over a plain socket that sends exactly the bytes it is given."""

    def __init__(
        self, port: int, path: str = "/ws", headers: dict | None = None, method: str = "GET", version: str = "HTTP/1.1"
    ):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
        self.rfile = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        request_headers = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        request_headers.update(headers or {})
        lines = [f"{method} {path} {version}"]
        lines += [f"{name}: {value}" for name, value in request_headers.items() if value is not None]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = self.rfile.readline().decode("latin-1")
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while True:
            line = self.rfile.readline().decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if self.status != 101:
            self.body = self.rfile.read(int(self.headers.get("content-length", "0")))

    def json(self) -> dict:
        return json.loads(self.body)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        self.send(mask_frame(opcode, payload, MASK, fin))

    def recv_frame(self) -> tuple[int, bool, bytes]:
        """The next server frame, parsed here from spec bytes (not with the code under test)."""
        head = self.rfile.read(2)
        assert len(head) == 2, "connection closed before a frame"
        assert head[1] & 0x80 == 0, "server frames must not be masked"
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.rfile.read(8))[0]
        return head[0] & 0x0F, bool(head[0] & 0x80), self.rfile.read(length)

    def recv_close(self, skip_pings: bool = True) -> tuple[int | None, str]:
        """Read until a Close frame; its code (None if empty) and reason."""
        while True:
            opcode, _, payload = self.recv_frame()
            if opcode == OP_PING and skip_pings:
                continue
            assert opcode == OP_CLOSE, f"expected a Close frame, got opcode {opcode} {payload[:40]!r}"
            if not payload:
                return None, ""
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def at_eof(self) -> bool:
        """Whether the server ends the TCP connection (within the socket timeout)."""
        try:
            return self.rfile.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


@pytest.fixture
def raw(echo):
    clients = []

    def connect(path="/ws", headers=None, **kwargs) -> RawClient:
        client = RawClient(echo.port, path, headers, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def connect(server: EchoServer, path: str = "/ws", **kwargs) -> websocket.WebSocket:
    return websocket.create_connection(server.ws_url + path, timeout=scaled(5), **kwargs)


def close_code_of(ws: websocket.WebSocket) -> int:
    """Read websocket-client frames until a Close frame; its code."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == OP_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


# ------------------------------------------------------------- handshake (live)


def test_handshake_and_echo(echo):
    ws = connect(echo)
    try:
        assert ws.getstatus() == 101
        assert ws.getsubprotocol() is None
        ws.send("hello, wörld")
        assert ws.recv() == "hello, wörld"
        ws.send_binary(b"\x00\xff\x10")
        opcode, data = ws.recv_data()
        assert (opcode, data) == (OP_BINARY, b"\x00\xff\x10")
        ws.send("")
        assert ws.recv() == ""
    finally:
        ws.close()


def test_rfc_example_frame_is_echoed_as_rfc_bytes(raw):
    # RFC 6455 5.7: a masked "Hello" from a client; the unmasked "Hello" from a server.
    client = raw()
    assert client.status == 101
    client.send(bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]))
    assert client.rfile.read(7) == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def test_accept_header_follows_rfc(raw):
    client = raw(headers={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})  # RFC 6455 1.3
    assert client.status == 101
    assert client.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert client.headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-protocol" not in client.headers


def test_stomp_picks_the_highest_version_offered(echo):
    ws = connect(echo, "/stomp", subprotocols=["v10.stomp", "v12.stomp"])
    try:
        assert ws.getsubprotocol() == "v12.stomp"
        ws.send("!protocol")
        assert ws.recv() == "v12.stomp"  # environ["switchboard.ws_protocol"]
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ("v10.stomp", "v10.stomp"),
        ("v11.stomp,v10.stomp", "v11.stomp"),
        ("mqtt, v11.stomp , v12.stomp", "v12.stomp"),
    ],
)
def test_stomp_subprotocol_header_is_a_token_list(raw, offered, chosen):
    client = raw("/stomp", {"Sec-WebSocket-Protocol": offered})
    assert client.status == 101
    assert client.headers["sec-websocket-protocol"] == chosen


def test_stomp_without_subprotocol_is_accepted(echo):
    ws = connect(echo, "/stomp")
    try:
        assert ws.getsubprotocol() is None
        ws.send("!protocol")
        assert ws.recv() == "-"
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("path", "offered"),
    [
        ("/stomp", "v12.stomp.x, xv12.stomp"),  # a substring test would have matched these
        ("/stomp", "mqtt"),
        ("/ws", "v12.stomp"),  # /ws speaks no sub-protocol
    ],
)
def test_no_common_subprotocol_is_400(raw, path, offered):
    client = raw(path, {"Sec-WebSocket-Protocol": offered})
    assert client.status == 400
    assert client.json()["error"] == "unsupported_subprotocol"
    assert "sec-websocket-accept" not in client.headers


def test_unknown_path_is_404_json_without_101(raw):
    client = raw("/nowhere")
    assert client.status == 404
    assert client.headers["content-type"] == "application/json"
    body = client.json()
    assert body["error"] == "not_found" and "/nowhere" in body["message"]
    assert "sec-websocket-accept" not in client.headers
    assert client.at_eof()


def test_unknown_path_refused_for_websocket_client(echo):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(echo, "/nowhere")
    assert info.value.status_code == 404


def test_hostile_origin_is_403_without_101(raw):
    client = raw(headers={"Origin": "https://evil.example"})
    assert client.status == 403
    assert client.json()["error"] == "forbidden_origin"
    assert "sec-websocket-accept" not in client.headers


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:{port}",  # same host and port
        "https://example.com",  # listed
        "http://allowed.test:8080",  # listed, with a port
        None,  # no Origin: not a browser
    ],
)
def test_allowed_origins(raw, echo, origin):
    client = raw(headers={"Origin": origin.format(port=echo.port) if origin else None})
    assert client.status == 101


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",  # same host, other port
        "http://example.com",  # listed only with https
        "https://example.com:8443",
        "null",
        "not an origin",
    ],
)
def test_refused_origins(raw, origin):
    assert raw(headers={"Origin": origin}).status == 403


def test_listed_origin_works_with_websocket_client(echo):
    ws = connect(echo, origin="https://example.com")
    try:
        ws.send("ok")
        assert ws.recv() == "ok"
    finally:
        ws.close()


@pytest.mark.parametrize("version", ["8", "12", None])
def test_bad_version_is_426(raw, version):
    client = raw(headers={"Sec-WebSocket-Version": version})
    assert client.status == 426
    assert client.headers["sec-websocket-version"] == "13"
    assert client.json()["error"] == "upgrade_required"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"headers": {"Sec-WebSocket-Key": None}}, 400),
        ({"headers": {"Sec-WebSocket-Key": "not base64!"}}, 400),
        ({"headers": {"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}}, 400),
        ({"headers": {"Connection": "keep-alive"}}, 400),
        ({"method": "POST"}, 405),
        ({"version": "HTTP/1.0"}, 400),
    ],
)
def test_bad_handshakes_get_json_errors(raw, kwargs, status):
    client = raw(**kwargs)
    assert client.status == status
    assert client.headers["content-type"] == "application/json"
    assert set(client.json()) == {"error", "message"}


def test_plain_http_goes_to_the_application(echo):
    response = requests.get(echo.url + "/ws", timeout=scaled(5))
    assert response.status_code == 200
    assert response.json() == {"ok": True, "path": "/ws"}


def test_open_websockets_are_counted(echo):
    assert echo.stats()["open_websockets"] == 0
    ws = connect(echo)
    wait_until(lambda: echo.stats()["open_websockets"] == 1, timeout=5, message="one open socket")
    ws.close()
    wait_until(lambda: echo.stats()["open_websockets"] == 0, timeout=5, message="no open socket")


# ------------------------------------------------------------------- limits


def test_oversized_frame_is_refused_from_its_header(echo, raw):
    announced = 100 * 1024 * 1024
    before = echo.stats()
    client = raw()
    # Only the header of a 100 MB binary frame; the payload is never sent.
    client.send(bytes([0x82, 0xFF]) + struct.pack("!Q", announced) + MASK)
    assert client.recv_close() == (frames.CLOSE_MESSAGE_TOO_BIG, "message too big")
    assert client.at_eof()
    after = echo.stats()
    assert after["rss_peak_bytes"] - before["rss_peak_bytes"] < announced // 10


def test_message_at_the_limit_passes_one_byte_more_is_1009(echo, raw):
    ws = connect(echo)
    try:
        ws.send_binary(b"a" * MAX_BYTES)
        assert ws.recv() == b"a" * MAX_BYTES
    finally:
        ws.close()
    client = raw()
    client.send_frame(OP_BINARY, b"a" * (MAX_BYTES + 1))
    assert client.recv_close()[0] == frames.CLOSE_MESSAGE_TOO_BIG


def test_oversized_fragmented_message_is_1009_before_the_last_payload(raw):
    client = raw()
    third = MAX_BYTES // 3
    client.send_frame(OP_BINARY, b"a" * third, fin=False)
    client.send_frame(OP_CONTINUATION, b"b" * third, fin=False)
    # The third fragment's header announces more than the message has room for.
    client.send(bytes([0x00, 0xFE]) + struct.pack("!H", third + 10) + MASK)
    assert client.recv_close()[0] == frames.CLOSE_MESSAGE_TOO_BIG
    assert client.at_eof()


def test_invalid_utf8_is_1007(raw):
    client = raw()
    client.send_frame(OP_TEXT, b"ok \xff\xfe")
    assert client.recv_close()[0] == frames.CLOSE_INVALID_DATA


def test_invalid_utf8_fails_fast_in_the_first_fragment(raw):
    client = raw()
    client.send_frame(OP_TEXT, b"\xc3\x28 never UTF-8", fin=False)  # no final fragment follows
    assert client.recv_close()[0] == frames.CLOSE_INVALID_DATA


def test_fragmented_message_is_reassembled(raw):
    client = raw()
    text = "caf\u00e9 \u2603 done"
    data = text.encode()
    cut = data.index(b"\xa9")  # split inside the two bytes of "é"
    client.send_frame(OP_TEXT, data[:cut], fin=False)
    client.send_frame(OP_PING, b"between")  # a control frame may come between fragments
    assert client.recv_frame() == (OP_PONG, True, b"between")
    client.send_frame(OP_CONTINUATION, data[cut : cut + 5], fin=False)
    client.send_frame(OP_CONTINUATION, data[cut + 5 :], fin=True)
    assert client.recv_frame() == (OP_TEXT, True, data)


def test_fragmented_binary_is_reassembled(raw):
    client = raw()
    client.send_frame(OP_BINARY, b"\x00\x01", fin=False)
    client.send_frame(OP_CONTINUATION, b"", fin=False)
    client.send_frame(OP_CONTINUATION, b"\x02", fin=True)
    assert client.recv_frame() == (OP_BINARY, True, b"\x00\x01\x02")


def test_ping_gets_pong_with_the_same_payload(raw, echo):
    client = raw()
    client.send_frame(OP_PING, b"are you there")
    assert client.recv_frame() == (OP_PONG, True, b"are you there")
    ws = connect(echo)
    try:
        ws.ping("wsc")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert (opcode, frame.data) == (OP_PONG, b"wsc")
    finally:
        ws.close()


# ------------------------------------------------------------- close codes


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("unmasked frame", b"\x81\x05Hello", frames.CLOSE_PROTOCOL_ERROR),
        ("RSV1 without extension", mask_frame(OP_TEXT, b"hi", MASK, rsv=0x40), frames.CLOSE_PROTOCOL_ERROR),
        ("reserved opcode", mask_frame(0x3, b"", MASK), frames.CLOSE_PROTOCOL_ERROR),
        ("reserved control opcode", mask_frame(0xB, b"", MASK), frames.CLOSE_PROTOCOL_ERROR),
        ("fragmented ping", mask_frame(OP_PING, b"", MASK, fin=False), frames.CLOSE_PROTOCOL_ERROR),
        ("126-byte ping", mask_frame(OP_PING, b"x" * 126, MASK), frames.CLOSE_PROTOCOL_ERROR),
        ("continuation first", mask_frame(OP_CONTINUATION, b"x", MASK), frames.CLOSE_PROTOCOL_ERROR),
        (
            "text inside fragments",
            mask_frame(OP_TEXT, b"a", MASK, fin=False) + mask_frame(OP_TEXT, b"b", MASK),
            frames.CLOSE_PROTOCOL_ERROR,
        ),
        ("64-bit length top bit", bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + MASK, frames.CLOSE_PROTOCOL_ERROR),
        ("1-byte close", mask_frame(OP_CLOSE, b"\x03", MASK), frames.CLOSE_PROTOCOL_ERROR),
        ("close code 1005", mask_frame(OP_CLOSE, struct.pack("!H", 1005), MASK), frames.CLOSE_PROTOCOL_ERROR),
        ("close code 999", mask_frame(OP_CLOSE, struct.pack("!H", 999), MASK), frames.CLOSE_PROTOCOL_ERROR),
        (
            "close reason not UTF-8",
            mask_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff", MASK),
            frames.CLOSE_INVALID_DATA,
        ),
    ],
)
def test_protocol_violations_close_with_the_rfc_code(raw, name, data, code):
    client = raw()
    client.send(data)
    assert client.recv_close()[0] == code, name
    assert client.at_eof()


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (struct.pack("!H", 1000) + "bye ☃".encode(), 1000),
        (struct.pack("!H", 4321), 4321),  # an application code is echoed
        (b"", None),  # no code: answered without one
    ],
)
def test_peer_close_is_answered_then_tcp_ends(raw, echo, payload, answer):
    client = raw()
    client.send_frame(OP_CLOSE, payload)
    assert client.recv_close()[0] == answer
    assert client.at_eof()
    wait_until(lambda: echo.stats()["open_websockets"] == 0, timeout=5, message="socket released")


def test_application_close_code_reaches_the_client(echo):
    ws = connect(echo)
    ws.send("!close 4000 done here")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == OP_CLOSE
    assert frame.data == struct.pack("!H", 4000) + b"done here"
    ws.close()


def test_application_error_closes_with_1011(echo):
    ws = connect(echo)
    ws.send("!raise")
    assert close_code_of(ws) == frames.CLOSE_INTERNAL_ERROR
    ws.close()


def test_application_that_declines_the_socket_closes_it_with_a_reason(echo):
    ws = connect(echo, "/declined")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == OP_CLOSE
    assert frame.data == struct.pack("!H", 1011) + b"application answered 404 Not Found"
    ws.close()


def test_data_after_close_is_not_echoed(raw):
    client = raw()
    client.send_frame(OP_TEXT, b"!close 1000 x")
    client.send_frame(OP_TEXT, b"late")  # crosses the server's Close: must be dropped
    assert client.recv_close() == (1000, "x")
    client.send_frame(OP_CLOSE, struct.pack("!H", 1000))
    assert client.at_eof()


# ------------------------------------------------------------------- sending


def test_concurrent_sends_never_interleave(echo):
    ws = connect(echo)
    try:
        greenlets, messages, size = 4, 40, 48 * 1024
        ws.send(f"!burst {greenlets} {messages} {size}")
        seen = {g: [] for g in range(greenlets)}
        for _ in range(greenlets * messages):
            text = ws.recv()
            g, i, padding = text.split(":")
            assert len(text) == size and set(padding) == {"x"}
            seen[int(g)].append(int(i))
        assert all(order == list(range(messages)) for order in seen.values())
    finally:
        ws.close()


def test_send_encoded_as_text_and_binary(echo):
    ws = connect(echo)
    try:
        ws.send("!encoded")
        assert ws.recv_data() == (OP_TEXT, b'{"n":1}')
        assert ws.recv_data() == (OP_BINARY, b'{"n":1}')
    finally:
        ws.close()


# ----------------------------------------------------------------- keepalive


def test_keepalive_pings_and_an_answering_peer_stays(fresh_server):
    server = fresh_server(ping_interval=scaled(0.2), ping_timeout=scaled(0.5))
    client = RawClient(server.port)
    try:
        assert client.status == 101
        payloads = set()
        for _ in range(3):
            opcode, _, payload = client.recv_frame()
            assert opcode == OP_PING
            payloads.add(payload)
            client.send_frame(OP_PONG, payload)
        assert len(payloads) == 3
        client.send_frame(OP_TEXT, b"still here")
        while True:  # pings may come before the echo
            opcode, _, payload = client.recv_frame()
            if opcode != OP_PING:
                break
        assert (opcode, payload) == (OP_TEXT, b"still here")
    finally:
        client.close()


def test_keepalive_first_pings_of_sockets_opened_together_are_spread(fresh_server):
    # Opened together (a room filling up), the sockets would otherwise all be pinged, and
    # answer, in one tick per interval, holding up deliveries while it lasts: each first
    # ping comes somewhere in the second half of its interval.
    interval = 2.0
    # A short timeout makes the timer tick every 0.1 s (a quarter of it); nobody answers
    # here, and only each socket's first ping is read.
    server = fresh_server(ping_interval=interval, ping_timeout=0.4)
    opened: dict[RawClient, float] = {}
    for _ in range(40):
        client = RawClient(server.port)
        opened[client] = time.monotonic()
    try:
        assert all(client.status == 101 for client in opened)
        delays: dict[RawClient, float] = {}
        deadline = time.monotonic() + scaled(interval + 3.0)
        while len(delays) < len(opened) and time.monotonic() < deadline:
            waiting = {client.sock: client for client in opened if client not in delays}
            readable, _, _ = select.select(list(waiting), [], [], 0.05)
            now = time.monotonic()
            for sock in readable:
                delays[waiting[sock]] = now - opened[waiting[sock]]
        assert len(delays) == len(opened), "every socket gets a ping"
        for client in opened:
            opcode, _, _ = client.recv_frame()
            assert opcode == OP_PING
        spread = sorted(delays.values())
        assert spread[0] >= interval / 2 - 0.1, spread
        # Each at its own interval from opening, they would all be 2.0-2.1 s.
        assert spread[-1] - spread[0] >= interval / 4, f"first pings not spread: {[round(d, 2) for d in spread]}"
    finally:
        for client in opened:
            client.close()


def test_keepalive_timeout_closes_a_silent_peer(fresh_server):
    server = fresh_server(ping_interval=scaled(0.2), ping_timeout=scaled(0.3))
    client = RawClient(server.port)
    try:
        opcode, _, _ = client.recv_frame()
        assert opcode == OP_PING  # and never answered
        assert client.recv_close(skip_pings=False) == (wsio.CLOSE_KEEPALIVE_TIMEOUT, "keepalive ping timeout")
        assert client.at_eof()
        # receive() returned None to the application, which returned: the socket is released.
        wait_until(lambda: server.stats()["open_websockets"] == 0, timeout=5, message="socket released")
    finally:
        client.close()


def test_keepalive_cuts_a_peer_that_reads_nothing(fresh_server):
    server = fresh_server(ping_interval=scaled(0.2), ping_timeout=scaled(0.5))
    client = RawClient(server.port)
    try:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # The server sends ~50 MB that this client never reads: its sends block, and
        # so would the pings; the peer is cut instead of holding greenlets forever.
        client.send_frame(OP_TEXT, b"!burst 2 400 65536")
        wait_until(lambda: server.stats()["open_websockets"] == 0, timeout=10, message="stuck peer released")
        assert server.stats()["open_websockets"] == 0
    finally:
        client.close()


# ------------------------------------------------------------------ shutdown


def test_sigterm_to_master_closes_websockets_with_1001(fresh_server):
    server = fresh_server(close_timeout=scaled(2))
    clients = [connect(server), connect(server, "/stomp", subprotocols=["v12.stomp"])]
    wait_until(lambda: server.stats()["open_websockets"] == 2, timeout=5, message="two open sockets")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        assert [close_code_of(ws) for ws in clients] == [frames.CLOSE_GOING_AWAY] * 2
        assert server.proc.wait(server.graceful_timeout) == 0
        assert time.monotonic() - started < server.graceful_timeout
    finally:
        for ws in clients:
            ws.close()


def test_sigterm_to_worker_closes_websockets_with_1001(fresh_server):
    server = fresh_server(close_timeout=scaled(2))
    ws = connect(server)
    old_pid = server.stats()["pid"]
    os.kill(old_pid, signal.SIGTERM)
    try:
        assert close_code_of(ws) == frames.CLOSE_GOING_AWAY
    finally:
        ws.close()

    def new_worker():
        try:
            return server.stats()["pid"] != old_pid
        except (requests.RequestException, AssertionError):
            return False

    wait_until(new_worker, timeout=30, message="a new worker")  # gunicorn replaces it
    ws = connect(server)
    ws.send("again")
    assert ws.recv() == "again"
    ws.close()


def test_shutdown_cuts_a_peer_that_never_answers_the_close(fresh_server):
    server = fresh_server(close_timeout=scaled(1))
    client = RawClient(server.port)
    try:
        wait_until(lambda: server.stats()["open_websockets"] == 1, timeout=5, message="one open socket")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert client.recv_close() == (frames.CLOSE_GOING_AWAY, "server shutting down")
        assert client.at_eof()  # no Close from us: cut after close_timeout
        assert server.proc.wait(server.graceful_timeout) == 0
        assert time.monotonic() - started < server.graceful_timeout
    finally:
        client.close()


def test_fast_quit_still_sends_1001(fresh_server):
    server = fresh_server(close_timeout=scaled(2))
    ws = connect(server)
    wait_until(lambda: server.stats()["open_websockets"] == 1, timeout=5, message="one open socket")
    server.proc.send_signal(signal.SIGINT)  # gunicorn's quick shutdown
    try:
        assert close_code_of(ws) == frames.CLOSE_GOING_AWAY
        server.proc.wait(server.graceful_timeout)
    finally:
        ws.close()


def test_dev_server_uses_the_same_handler(tmp_path):
    port = free_port()
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from tests.support.ws_echo_app import app\n"
        "from app.transports.wsio import serve_dev\n"
        f"serve_dev(app, '127.0.0.1', {port})\n"
    )
    with open(tmp_path / "dev.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WS_ECHO_CLOSE_TIMEOUT": str(scaled(2))},
        )
    try:

        def ready():
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=30, message="the development server")
        hostile = RawClient(port, headers={"Origin": "https://evil.example"})
        assert hostile.status == 403
        hostile.close()
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/stomp", timeout=scaled(5), subprotocols=["v11.stomp", "v10.stomp"]
        )
        assert ws.getsubprotocol() == "v11.stomp"
        ws.send("hi")
        assert ws.recv() == "hi"
        proc.send_signal(signal.SIGTERM)
        assert close_code_of(ws) == frames.CLOSE_GOING_AWAY
        ws.close()
        assert proc.wait(scaled(10)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(5))


# -------------------------------------------------------- negotiate (no server)


STOMP = ("v12.stomp", "v11.stomp", "v10.stomp")
POLICY = wsio.WebSocketPolicy(
    allowed_origins=("https://app.example.com",),
    protocols={"/ws": (), "/stomp": STOMP},
)


def handshake(**overrides) -> dict:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ws",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "chat.example.com",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    environ.update(overrides)
    return {key: value for key, value in environ.items() if value is not None}


def test_negotiate_accepts_and_computes_the_rfc_accept_token():
    decision = wsio.negotiate(handshake(), POLICY)
    assert decision == wsio.Acceptance("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None)


def test_default_policy_takes_no_websocket():
    assert wsio.negotiate(handshake(), wsio.DEFAULT_POLICY).status == 404


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://chat.example.com", "chat.example.com", "http", True),
        ("HTTP://Chat.Example.COM", "chat.example.com", "http", True),
        ("https://chat.example.com", "chat.example.com", "http", True),  # TLS ended before us
        ("https://chat.example.com:443", "chat.example.com:80", "http", True),
        ("http://chat.example.com:8000", "chat.example.com:8000", "http", True),
        ("http://chat.example.com:8001", "chat.example.com:8000", "http", False),
        ("http://[::1]:8000", "[::1]:8000", "http", True),
        ("http://chat.example.com.evil.com", "chat.example.com", "http", False),
        ("https://app.example.com", "chat.example.com", "http", True),
        ("http://app.example.com", "chat.example.com", "http", False),
        ("http://chat.example.com/path", "chat.example.com", "http", False),
    ],
)
def test_origin_rules(origin, host, scheme, allowed):
    environ = handshake(HTTP_ORIGIN=origin, HTTP_HOST=host, **{"wsgi.url_scheme": scheme})
    assert wsio.origin_allowed(environ, POLICY) is allowed


def test_forwarded_host_counts_only_when_trusted():
    environ = handshake(
        HTTP_HOST="127.0.0.1:8000",
        HTTP_ORIGIN="https://chat.example.com",
        HTTP_X_FORWARDED_HOST="chat.example.com",
        HTTP_X_FORWARDED_PROTO="https",
    )
    assert not wsio.origin_allowed(environ, POLICY)
    trusting = wsio.WebSocketPolicy(protocols={"/ws": ()}, trust_forwarded=True)
    assert wsio.origin_allowed(environ, trusting)
    # The nearest proxy's value (the last) is the one that counts.
    spoofed = dict(environ, HTTP_X_FORWARDED_HOST="chat.example.com, internal:8000")
    assert not wsio.origin_allowed(spoofed, trusting)


def test_wildcard_origin():
    policy = wsio.WebSocketPolicy(allowed_origins=("*",), protocols={"/ws": ()})
    assert wsio.origin_allowed(handshake(HTTP_ORIGIN="https://anywhere.example"), policy)


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (None, None),
        ("v10.stomp", "v10.stomp"),
        ("v10.stomp, v11.stomp", "v11.stomp"),
        ("v10.stomp,v12.stomp,v11.stomp", "v12.stomp"),
        ("v12.stomp", "v12.stomp"),
    ],
)
def test_stomp_negotiation_prefers_the_server_order(offered, chosen):
    decision = wsio.negotiate(handshake(PATH_INFO="/stomp", HTTP_SEC_WEBSOCKET_PROTOCOL=offered), POLICY)
    assert decision.subprotocol == chosen


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"PATH_INFO": "/ws/"}, 404),
        ({"REQUEST_METHOD": "POST"}, 405),
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, 400),
        ({"HTTP_CONNECTION": "keep-alive"}, 400),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, 426),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "13, 8"}, 426),
        ({"HTTP_HOST": None}, 400),
        ({"HTTP_SEC_WEBSOCKET_KEY": "AAAA"}, 400),
        ({"HTTP_ORIGIN": "https://evil.example"}, 403),
        ({"HTTP_SEC_WEBSOCKET_PROTOCOL": "chat"}, 400),
    ],
)
def test_negotiate_refusals(overrides, status):
    decision = wsio.negotiate(handshake(**overrides), POLICY)
    assert isinstance(decision, wsio.Refusal)
    assert decision.status == status


def test_policy_validates_its_fields():
    with pytest.raises(ValueError):
        wsio.WebSocketPolicy(allowed_origins=("example.com",))
    with pytest.raises(TypeError):
        wsio.WebSocketPolicy(protocols={"/stomp": "v12.stomp"})
    with pytest.raises(ValueError):
        wsio.WebSocketPolicy(protocols={"ws": ()})
    policy = wsio.WebSocketPolicy(protocols={"/stomp": ["v12.stomp"]})
    assert policy.protocols["/stomp"] == ("v12.stomp",)
    with pytest.raises(TypeError):
        policy.protocols["/x"] = ()  # read-only


def test_is_websocket_request():
    assert wsio.is_websocket_request({"HTTP_UPGRADE": "WebSocket"})
    assert wsio.is_websocket_request({"HTTP_UPGRADE": "h2c, websocket"})
    assert not wsio.is_websocket_request({"HTTP_UPGRADE": "h2c"})
    assert not wsio.is_websocket_request({})


# ------------------------------------------------------ frames (no server)


class OneByteAtATime(io.RawIOBase):
    """A stream that hands out one byte per read, like a slow network."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(1)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def read_all(data: bytes, max_payload: int = 1 << 20, whole: bool = True):
    stream = io.BytesIO(data) if whole else io.BufferedReader(OneByteAtATime(data), buffer_size=1)
    result = []
    while True:
        try:
            result.append(frames.read_frame(stream.read, max_payload))
        except frames.ConnectionLost:
            return result


def test_read_frame_rfc_examples():
    # RFC 6455 5.7: a masked "Hello".
    masked_hello = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    for whole in (True, False):
        assert read_all(masked_hello, whole=whole) == [frames.Frame(OP_TEXT, True, b"Hello")]
    # With trailing data: the second frame is read too, the partial third is not.
    data = masked_hello + mask_frame(OP_PING, b"p", MASK) + masked_hello[:5]
    assert read_all(data) == [frames.Frame(OP_TEXT, True, b"Hello"), frames.Frame(OP_PING, True, b"p")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_read_frame_length_encodings(size):
    payload = os.urandom(size)
    for whole in (True, False) if size < 1000 else (True,):
        assert read_all(mask_frame(OP_BINARY, payload, MASK), whole=whole) == [frames.Frame(OP_BINARY, True, payload)]


def test_read_frame_refuses_a_big_frame_before_its_payload():
    header = bytes([0x82, 0xFF]) + struct.pack("!Q", 10**9) + MASK
    reads = []

    def read(n):
        reads.append(n)
        return stream.read(n)

    stream = io.BytesIO(header)
    with pytest.raises(frames.FrameError) as info:
        frames.read_frame(read, 1024)
    assert info.value.code == frames.CLOSE_MESSAGE_TOO_BIG
    assert sum(reads) == len(header)


def test_stdlib_unmask_matches_wsaccel():
    for size in (1, 3, 4, 5, 1000, 65537):
        payload = os.urandom(size)
        assert frames._unmask_stdlib(payload, MASK) == frames.unmask(payload, MASK)
        assert frames._unmask_stdlib(frames._unmask_stdlib(payload, MASK), MASK) == payload


def test_assembler_joins_text_split_inside_a_code_point():
    assembler = frames.MessageAssembler(100)
    data = "\u20ac\u20ac".encode()  # two 3-byte characters
    assert assembler.feed(frames.Frame(OP_TEXT, False, data[:1])) is None
    assert assembler.feed(frames.Frame(OP_CONTINUATION, False, data[1:4])) is None
    assert assembler.room == 96
    assert assembler.feed(frames.Frame(OP_CONTINUATION, True, data[4:])) == "\u20ac\u20ac"
    assert assembler.room == 100


def test_assembler_errors():
    assembler = frames.MessageAssembler(10)
    with pytest.raises(frames.FrameError) as info:
        assembler.feed(frames.Frame(OP_TEXT, False, b"\xe2\x82"))
        assembler.feed(frames.Frame(OP_CONTINUATION, True, b""))  # truncated code point
    assert info.value.code == frames.CLOSE_INVALID_DATA
    with pytest.raises(frames.FrameError) as info:
        assembler.feed(frames.Frame(OP_BINARY, True, b"x" * 11))
    assert info.value.code == frames.CLOSE_MESSAGE_TOO_BIG


def test_close_payload_cuts_reasons_on_character_boundaries():
    payload = frames.close_payload(1000, "\u2603" * 100)
    assert len(payload) <= 125
    assert frames.parse_close(payload)[0] == 1000
    assert frames.close_payload(None) == b""
    assert frames.parse_close(b"") == (frames.CLOSE_NO_STATUS, "")
