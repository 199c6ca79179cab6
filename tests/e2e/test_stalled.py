"""A client that stops reading (a frozen tab, a dead mobile link) on each streaming
transport: the other clients' latency barely moves, the worker's memory stays bounded,
and the stalled client gets the documented slow-consumer signal when it reads again
(DESIGN.md §3; README "Operating Switchboard"), or is cut if it never does.

The stalled client has a tiny receive buffer (SO_RCVBUF); on loopback the server's send
buffer still grows to 4 MiB (net.ipv4.tcp_wmem), so events are 32 KiB: a few hundred
of them fill both buffers, the server's writes to the stalled client block, and its
queue and then history run past it. Healthy clients of every transport measure their
latency (receive time minus the event's server time) before and during the stall.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import statistics
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.timing import scaled, wait_until
from tests.support.wsclients import JsonClient, RawWebSocket, parse_stomp, stomp_frame, ws_url

QUEUE, HISTORY = 32, 100
PAD = "x" * 32 * 1024  # 4 MiB of send buffer is about 130 of these
RATE = 50.0
TRANSPORTS = ("sse", "ws", "stomp")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(base: str, name: str) -> float:
    res = requests.get(base + "/metrics", headers={"Connection": "close"}, timeout=scaled(5))
    return sum(
        sample.value
        for family in text_string_to_metric_families(res.text)
        for sample in family.samples
        if sample.name == name
    )


def subscribers(base: str) -> int:
    return requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=scaled(5)).json()["subscribers"]


# ------------------------------------------------------------------ healthy clients


class Healthy(threading.Thread):
    """A client that keeps up; records (n, latency) for each event it receives."""

    def __init__(self, transport: str, base: str, topic: str):
        super().__init__(daemon=True)
        self.transport, self.base, self.topic = transport, base, topic
        self.latencies: dict[int, float] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stopping = False

    def received(self, data: dict, server_time: float) -> None:
        self.latencies[data["n"]] = time.time() - server_time

    def run(self) -> None:
        try:
            {"sse": self._sse, "ws": self._ws, "stomp": self._stomp}[self.transport]()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            if not self.stopping:
                self.error = exc
            self.ready.set()

    def _sse(self) -> None:
        port = int(self.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(30)) as sock:
            self.sock = sock
            sock.sendall(f"GET /api/topics/{self.topic}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            buf = b""
            while not self.stopping:
                chunk = sock.recv(262144)
                if not chunk:
                    return
                buf += chunk
                if not self.ready.is_set() and b"retry: " in buf:
                    self.ready.set()
                *blocks, buf = buf.split(b"\n\n")
                for block in blocks:
                    for line in block.split(b"\n"):
                        if line.startswith(b"data: "):
                            event = json.loads(line[6:])
                            self.received(event["data"], event["time"])

    def _ws(self) -> None:
        with JsonClient(ws_url(self.base), timeout=30) as client:
            self.client = client
            assert client.request("subscribe", topic=self.topic)["op"] == "ok"
            self.ready.set()
            while not self.stopping:
                message = client.next_event(timeout=30)
                self.received(message["data"], message["time"])

    def _stomp(self) -> None:
        ws = RawWebSocket.connect(ws_url(self.base, "/stomp"), protocols=("v12.stomp",), timeout=scaled(10))
        self.ws = ws
        ws.sock.settimeout(scaled(30))
        ws.send_text(
            stomp_frame(
                "CONNECT", [("accept-version", "1.2"), ("host", "x"), ("heart-beat", "0,0")], escape=False
            ).decode()
        )
        ws.send_text(
            stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", f"/topic/{self.topic}"), ("receipt", "r")]).decode()
        )
        while not self.stopping:
            messages = ws.read_messages()
            if messages is None:
                return
            for _op, payload in messages:
                frame = parse_stomp(payload)
                if frame is None:
                    continue
                if frame.command == "RECEIPT":
                    self.ready.set()
                elif frame.command == "MESSAGE":
                    self.received(json.loads(frame.body), float(frame.get("time")))
                elif frame.command != "CONNECTED":
                    raise AssertionError(f"{frame.command}: {frame.body[:200]!r}")

    def stop(self) -> None:
        self.stopping = True
        sock = getattr(self, "sock", None) or getattr(getattr(self, "ws", None), "sock", None)
        if hasattr(self, "client"):
            sock = self.client.ws.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


# ------------------------------------------------------------------ stalled clients


def small_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(scaled(10))
    sock.connect(("127.0.0.1", port))
    return sock


def upgrade(sock: socket.socket, path: str, protocols: tuple[str, ...] = ()) -> RawWebSocket:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: x",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    accept = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert head.startswith(b"HTTP/1.1 101") and accept in head, head
    return RawWebSocket(sock, rest)


class Stalled:
    """A subscribed client that then reads nothing until :meth:`read_until_signal`."""

    def __init__(self, transport: str, port: int, topic: str):
        self.transport = transport
        self.sock = small_socket(port)
        if transport == "sse":
            self.sock.sendall(f"GET /api/topics/{topic}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            self.buf = b""
            while b"retry: " not in self.buf:
                self.buf += self.sock.recv(4096)
        elif transport == "ws":
            self.ws = upgrade(self.sock, "/ws")
            self.ws.send_text(json.dumps({"op": "subscribe", "topic": topic, "ref": "s"}))
            assert json.loads(self.ws.read_messages()[0][1])["op"] == "ok"
        else:
            self.ws = upgrade(self.sock, "/stomp", ("v12.stomp",))
            self.ws.send_text(
                stomp_frame(
                    "CONNECT", [("accept-version", "1.2"), ("host", "x"), ("heart-beat", "0,0")], escape=False
                ).decode()
            )
            self.ws.send_text(
                stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", f"/topic/{topic}"), ("receipt", "r")]).decode()
            )
            frames = []
            while not any(f and f.command == "RECEIPT" for f in frames):
                frames += [parse_stomp(p) for _op, p in self.ws.read_messages()]

    def read_until_signal(self, timeout: float = 20) -> dict:
        """Read again; what the server said once the backlog is through.

        Returns ``{"events": n, "signal": [...], "ended": how}``.
        """
        self.sock.settimeout(scaled(timeout))
        if self.transport == "sse":
            return self._sse()
        return self._ws()

    def _sse(self) -> dict:
        events, signal, buf = 0, [], self.buf
        while True:
            try:
                chunk = self.sock.recv(262144)
            except ConnectionResetError:
                return {"events": events, "signal": signal, "ended": "reset"}
            buf += chunk
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                if b"event: gap" in block:
                    signal.append("gap")
                elif b"data: " in block:
                    events += 1
            if not chunk or buf.endswith(b"\r\n0\r\n\r\n"):  # EOF, or the chunked body's end
                return {"events": events, "signal": signal, "ended": "end" if chunk else "eof"}

    def _ws(self) -> dict:
        events, signal = 0, []
        while True:
            try:
                messages = self.ws.read_messages()
            except OSError:
                return {"events": events, "signal": signal, "ended": "reset"}
            if messages is None:
                return {"events": events, "signal": signal, "ended": self.ws.close_code}
            for _op, payload in messages:
                if self.transport == "ws":
                    message = json.loads(payload)
                    if message["op"] == "event":
                        events += 1
                    else:
                        signal.append(message.get("error") or message["op"])
                        if message.get("error") == "slow_consumer":
                            return {"events": events, "signal": signal, "ended": "open"}
                else:
                    frame = parse_stomp(payload)
                    if frame is None:
                        continue
                    if frame.command == "MESSAGE" and frame.get("gap") != "true":
                        events += 1
                    else:
                        signal.append("gap" if frame.command == "MESSAGE" else f"ERROR {frame.get('message')}")

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------- tests


def publish_paced(base: str, topic: str, numbers: range, rate: float = RATE) -> None:
    with requests.Session() as http:
        started = time.monotonic()
        for i, n in enumerate(numbers):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            res = http.post(
                f"{base}/api/topics/{topic}/events",
                data=json.dumps({"data": {"n": n, "pad": PAD}}),
                headers={"Content-Type": "application/json"},
                timeout=scaled(10),
            )
            assert res.status_code == 201, res.text


def latency(clients: list[Healthy], numbers: range) -> tuple[float, float]:
    values = sorted(c.latencies[n] for c in clients for n in numbers if n in c.latencies)
    missing = sum(1 for c in clients for n in numbers if n not in c.latencies)
    assert not missing, f"{missing} deliveries missing"
    return statistics.median(values), values[int(0.9 * (len(values) - 1))]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support.servers import Gunicorn

    env = {
        "SWITCHBOARD_QUEUE_SIZE": str(QUEUE),
        "SWITCHBOARD_HISTORY_SIZE": str(HISTORY),
        "SWITCHBOARD_LOG_LEVEL": "INFO",
        "SWITCHBOARD_TICKS": "0",
    }
    with Gunicorn(tmp_path_factory.mktemp("stalled"), env=env) as running:
        yield running


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stalled_client_slows_nobody_stays_bounded_and_is_told(server, transport):
    topic = f"stall-{transport}"
    (worker,) = server.worker_pids()
    healthy = [Healthy(kind, server.url, topic) for kind in TRANSPORTS for _ in range(2)]
    stalled = None
    try:
        for client in healthy:
            client.start()
        for client in healthy:
            assert client.ready.wait(scaled(10)) and client.error is None, client.error
        baseline = range(0, 50)
        publish_paced(server.url, topic, baseline)
        wait_until(lambda: all(49 in c.latencies for c in healthy), timeout=10, message="baseline delivered")

        drops = metric(server.url, "switchboard_slow_consumer_drops_total")
        stalled = Stalled(transport, server.port, topic)
        # Buffers (~130 events), then the queue (32), then all of history (100) run past it.
        publish_paced(server.url, topic, range(50, 330))
        rss_fallen_behind = rss_kib(worker)
        publish_paced(server.url, topic, range(330, 450))  # 3.75 MiB more while it still reads nothing
        during = range(50, 450)
        wait_until(lambda: all(449 in c.latencies for c in healthy), timeout=10, message="stall phase delivered")
        rss_growth = rss_kib(worker) - rss_fallen_behind

        base_p50, base_p90 = latency(healthy, baseline)
        stall_p50, stall_p90 = latency(healthy, during)
        told = stalled.read_until_signal()
        print(
            f"\n{transport} stalled: others' latency p50 {base_p50 * 1000:.1f} -> {stall_p50 * 1000:.1f} ms, "
            f"p90 {base_p90 * 1000:.1f} -> {stall_p90 * 1000:.1f} ms; worker RSS +{rss_growth} KiB over the "
            f"last 120 events; "
            f"the stalled client got {told}"
        )
        assert all(c.error is None for c in healthy), [c.error for c in healthy]
        assert stall_p50 <= 3 * base_p50 + 0.05 and stall_p90 <= 3 * base_p90 + 0.1, "others slowed down"
        # Bounded: once it has fallen behind, what it costs no longer grows with what is published.
        assert rss_growth < 2 * 1024, f"worker RSS grew {rss_growth} KiB while 3.75 MiB were published"
        # What README "Operating Switchboard" promises for a slow consumer.
        assert told["events"] < len(during), "it fell behind history, so it cannot have had them all"
        if transport == "sse":
            assert told["signal"] == ["gap"] and told["ended"] in ("end", "eof"), told
        elif transport == "ws":
            assert told["signal"] == ["gap", "slow_consumer"] and told["ended"] == "open", told
            stalled.ws.send_text(json.dumps({"op": "ping", "ref": "p"}))  # the connection is still usable
            assert json.loads(stalled.ws.read_messages()[-1][1])["ref"] == "p"
        else:
            assert told["signal"] == ["gap", "ERROR slow consumer"] and told["ended"] == 1008, told
        wait_until(
            lambda: metric(server.url, "switchboard_slow_consumer_drops_total") == drops + 1,
            timeout=5,
            message="the drop counted",
        )
        wait_until(
            lambda: f"transport {'websocket' if transport == 'ws' else transport}, topic {topic}" in server.log(),
            timeout=5,
            message="the drop logged with the client, transport and topic",
        )
    finally:
        if stalled is not None:
            stalled.close()
        for client in healthy:
            client.stop()


def test_a_client_that_never_reads_again_is_cut(start_server):
    server = start_server(
        {
            "SWITCHBOARD_QUEUE_SIZE": str(QUEUE),
            "SWITCHBOARD_HISTORY_SIZE": str(HISTORY),
            "SWITCHBOARD_WRITE_TIMEOUT": "1",
            "SWITCHBOARD_WS_PING_INTERVAL": "1",
            "SWITCHBOARD_TICKS": "0",
        }
    )
    topic = "never-reads"
    stalled = [Stalled(transport, server.port, topic) for transport in TRANSPORTS]
    try:
        assert subscribers(server.url) == 3
        publish_paced(server.url, topic, range(200), rate=200)
        # SSE: the blocked write times out; /ws and STOMP: the keepalive ping cannot go out.
        wait_until(lambda: subscribers(server.url) == 0, timeout=15, message="all three released")
        for client in stalled:
            client.sock.settimeout(scaled(5))
            data = b""
            try:
                while chunk := client.sock.recv(262144):
                    data += chunk
            except ConnectionResetError:
                pass
            assert len(data) < 200 * len(PAD), f"{client.transport}: it got everything, so it was not stalled"
    finally:
        for client in stalled:
            client.close()
