"""WebSocket clients for tests and benchmarks.

Three tools, from the most convenient to the most efficient:

* :class:`JsonClient`: one ``/ws`` connection (websocket-client underneath) that speaks
  the JSON ops of ``app/transports/websocket.py``: ``request("subscribe", topic=...)``
  sends an op with a fresh ``ref`` and returns *its* reply, keeping the events that
  arrive meanwhile for :meth:`JsonClient.next_event`.
* :class:`RawWebSocket`: a minimal RFC 6455 client over a plain socket with buffered
  frame parsing and no dependency on the server's own codec (a shared bug would pass
  both sides). Under ``gevent.monkey.patch_all()`` thousands of them run in one process.
* :func:`run_fanout` / ``python -m tests.support.wsclients fanout``: N raw clients in a
  gevent subprocess (so the test process is never the bottleneck) that all subscribe
  to one topic, report "ready", then check that each receives every one of ``count``
  events in order. What "subscribe" and "an event" mean is a :class:`FanoutProtocol`
  (``ws-json`` here; a STOMP one can be added to :data:`PROTOCOLS`).

The fan-out subprocess prints JSON lines on stdout: ``{"ready": ...}`` once every client
is subscribed, then ``{"done": ...}`` with the figures (see :func:`_fanout_main`).
"""

from __future__ import annotations

if __name__ == "__main__":  # the fan-out subprocess: patch before socket is imported
    from gevent import monkey

    monkey.patch_all()

import argparse
import base64
import hashlib
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import websocket

try:
    from tests.support.timing import scaled
except ImportError:  # run as a script from another directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_url(http_url: str, path: str = "/ws") -> str:
    """``http://host:port`` -> ``ws://host:port/ws``."""
    return "ws" + http_url[len("http"):] + path if http_url.startswith("http") else http_url + path


def cookie_header(session) -> str | None:
    """The ``Cookie`` header value a browser with ``session``'s cookie jar would send."""
    pairs = [f"{c.name}={c.value}" for c in session.cookies]
    return "; ".join(pairs) or None


# ----------------------------------------------------------------------- JsonClient


class ConnectionEnded(AssertionError):
    """The server closed the connection while the test waited for a message."""

    def __init__(self, code: int | None, reason: str):
        super().__init__(f"connection closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


class JsonClient:
    """One ``/ws`` connection speaking JSON ops.

    Args:
        url: ``ws://host:port/ws``.
        session: a ``requests.Session`` whose cookies go into the handshake (its sender).
        timeout: default seconds (scaled) for every wait.
        **options: passed to ``websocket.create_connection`` (``origin``, ``header``...).
    """

    def __init__(self, url: str, session=None, timeout: float = 5, **options):
        self.timeout = scaled(timeout)
        cookie = cookie_header(session) if session is not None else None
        if cookie:
            options["cookie"] = cookie
        self.ws = websocket.create_connection(url, timeout=self.timeout, **options)
        self.pending: list[dict] = []  # server messages received but not yet asked for
        self.frames_in = 0
        self._refs = itertools.count(1)

    def __enter__(self) -> "JsonClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.ws.close(timeout=scaled(2))
        except (OSError, websocket.WebSocketException):
            pass

    def drop(self) -> None:
        """End the TCP connection without a closing handshake (as a lost network would)."""
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ws.sock.close()

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def send(self, **op: Any) -> None:
        self.ws.send(json.dumps(op))

    def recv(self, timeout: float | None = None) -> dict:
        """The next server message (from the socket, not the pending list).

        Raises:
            websocket.WebSocketTimeoutException: nothing within ``timeout`` (scaled).
            ConnectionEnded: the server closed the connection.
        """
        return self._recv(self.timeout if timeout is None else scaled(timeout))

    def _recv(self, seconds: float) -> dict:
        # A deadline, not a per-read timeout: the server's keepalive pings would
        # otherwise restart the wait forever.
        deadline = time.monotonic() + seconds
        while True:
            self.ws.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                opcode, data = self.ws.recv_data(control_frame=True)  # answers pings itself
            except websocket.WebSocketConnectionClosedException:
                raise ConnectionEnded(None, "") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = data.data if isinstance(data, websocket.ABNF) else data
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                raise ConnectionEnded(code, data[2:].decode("utf-8", "replace"))
            if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                if time.monotonic() >= deadline:
                    raise websocket.WebSocketTimeoutException("no message in time")
                continue
            self.frames_in += 1
            assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text message, got opcode {opcode}"
            return json.loads(data)

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict:
        """Send ``op`` with a fresh ref; return the reply carrying that ref."""
        ref = f"r{next(self._refs)}"
        self.send(op=op, ref=ref, **fields)
        return self.reply(ref, timeout)

    def reply(self, ref: Any, timeout: float | None = None) -> dict:
        """Wait for the ``ok``/``error`` with ``ref``; other messages go to ``pending``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else scaled(timeout))
        while True:
            message = self._recv(max(0.01, deadline - time.monotonic()))
            if message.get("op") in ("ok", "error") and message.get("ref") == ref:
                return message
            self.pending.append(message)

    def next_message(self, timeout: float | None = None) -> dict:
        """The oldest pending message, else the next from the socket."""
        if self.pending:
            return self.pending.pop(0)
        return self.recv(timeout)

    def next_event(self, timeout: float | None = None) -> dict:
        """The next ``event`` or ``gap`` (other messages are kept in ``pending``)."""
        for i, message in enumerate(self.pending):
            if message.get("op") in ("event", "gap"):
                return self.pending.pop(i)
        while True:
            message = self.recv(timeout)
            if message.get("op") in ("event", "gap"):
                return message
            self.pending.append(message)

    def events(self, n: int, timeout: float | None = None) -> list[dict]:
        return [self.next_event(timeout) for _ in range(n)]

    def assert_silent(self, timeout: float = 0.2) -> None:
        """Nothing arrives within ``timeout``: for "no more events" checks.

        Prefer a positive marker (publish something else and wait for it); this bounded
        wait is for the end of a test where no marker can follow.
        """
        assert not self.pending, f"unexpected messages: {self.pending}"
        try:
            message = self._recv(timeout)  # deliberately not scaled: a short, fixed look
        except websocket.WebSocketTimeoutException:
            return
        raise AssertionError(f"unexpected message: {message}")

    def close_code(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Read until the server's Close frame; its code and reason (messages are dropped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else scaled(timeout))
        while True:
            try:
                self._recv(max(0.001, deadline - time.monotonic()))
            except ConnectionEnded as ended:
                return ended.code, ended.reason


# --------------------------------------------------------------------- RawWebSocket


class HandshakeFailed(Exception):
    def __init__(self, status: int, head: bytes):
        super().__init__(f"handshake answered {status}")
        self.status = status
        self.head = head


class RawWebSocket:
    """A small RFC 6455 client on a blocking socket (cooperative under gevent).

    Server frames are parsed from a receive buffer, several per ``recv``; control
    frames are handled on the way (pings answered, a Close noted and answered).
    """

    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self.buffer = bytearray(leftover)
        self.close_code: int | None = None
        self.bytes_in = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    @classmethod
    def connect(cls, url: str, headers: dict[str, str] | None = None, protocols: tuple[str, ...] = (),
                timeout: float | None = 10.0) -> "RawWebSocket":
        """Open ``ws://host:port/path`` and complete the handshake.

        Raises:
            HandshakeFailed: the answer was not ``101`` (its status and head are kept).
        """
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise HandshakeFailed(0, data)
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        expected = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
        if status != 101 or expected not in head:
            sock.close()
            raise HandshakeFailed(status, head)
        sock.settimeout(None)
        return cls(sock, rest)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size <= 0xFFFF:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def close(self, code: int = 1000) -> None:
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", code))
        except OSError:
            pass
        self.sock.close()

    def read_messages(self) -> list[tuple[int, bytes]] | None:
        """Block for data; every complete message now buffered, as ``(opcode, payload)``.

        Returns ``None`` once the connection is closed (``close_code`` says how).
        """
        while True:
            messages = self._parse()
            if messages or self.close_code is not None:
                return messages or None
            try:
                chunk = self.sock.recv(262144)
            except OSError:
                chunk = b""
            if not chunk:
                self.close_code = self.close_code or 1006
                return None
            self.bytes_in += len(chunk)
            self.buffer += chunk

    def _parse(self) -> list[tuple[int, bytes]]:
        buf = self.buffer
        pos, end = 0, len(buf)
        messages = []
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            size = second & 0x7F
            start = pos + 2
            if size == 126:
                if end - start < 2:
                    break
                size = int.from_bytes(buf[start:start + 2], "big")
                start += 2
            elif size == 127:
                if end - start < 8:
                    break
                size = int.from_bytes(buf[start:start + 8], "big")
                start += 8
            if end - start < size:
                break
            payload = bytes(buf[start:start + size])
            pos = start + size
            opcode = first & 0x0F
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                try:
                    self.send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                break
            elif opcode == OP_PONG:
                pass
            elif first & 0x80 and opcode != OP_CONTINUATION:
                messages.append((opcode, payload))
            else:  # a fragment
                if opcode != OP_CONTINUATION:
                    self._fragment_opcode = opcode
                self._fragments.append(payload)
                if first & 0x80:
                    messages.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = []
        del buf[:pos]
        return messages


# ------------------------------------------------------------------------- fan-out


class FanoutProtocol:
    """What one fan-out client says after the handshake and how it reads the answers.

    Subclass per protocol (the ``/ws`` JSON ops here; STOMP frames later) and register
    it in :data:`PROTOCOLS`.
    """

    path = "/ws"
    subprotocols: tuple[str, ...] = ()

    def opening(self, topic: str) -> list[str]:
        """Text messages sent right after the handshake."""
        raise NotImplementedError

    def classify(self, payload: bytes) -> tuple[str, Any]:
        """``("ready", None)`` once subscribed; ``("event", (seq, server_time))``;
        ``("error", text)``; or ``("other", None)``."""
        raise NotImplementedError


class JsonWsProtocol(FanoutProtocol):
    """``/ws`` JSON ops; events must carry ``data = {"n": <seq>}``."""

    def opening(self, topic: str) -> list[str]:
        return [json.dumps({"op": "subscribe", "topic": topic, "ref": "fanout"})]

    def classify(self, payload: bytes) -> tuple[str, Any]:
        message = json.loads(payload)
        op = message.get("op")
        if op == "event":
            return "event", (message["data"]["n"], message["time"])
        if op == "ok" and message.get("ref") == "fanout":
            return "ready", None
        if op in ("error", "gap"):
            return "error", payload.decode("utf-8", "replace")
        return "other", None


PROTOCOLS: dict[str, Callable[[], FanoutProtocol]] = {"ws-json": JsonWsProtocol}


@dataclass
class _ClientState:
    ready: bool = False
    received: int = 0
    next_seq: int = 0
    disorder: int = 0
    errors: list[str] = field(default_factory=list)


def _fanout_main(argv: list[str]) -> int:
    """The subprocess: connect, subscribe, report ready, count, report done."""
    import gevent
    import gevent.event
    import gevent.lock

    parser = argparse.ArgumentParser(prog="wsclients fanout")
    parser.add_argument("--base", required=True, help="http://host:port of the server")
    parser.add_argument("--protocol", default="ws-json", choices=sorted(PROTOCOLS))
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True, help="events each client must receive")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    protocol = PROTOCOLS[args.protocol]()
    url = ws_url(args.base, protocol.path)
    states = [_ClientState() for _ in range(args.clients)]
    sockets: list[RawWebSocket | None] = [None] * args.clients
    all_ready = gevent.event.Event()
    all_done = gevent.event.Event()
    counters = {"ready": 0, "done": 0, "failed": 0}
    latencies: list[float] = []
    # Bounds the handshakes in flight; a client holds its place until it is subscribed.
    gate = gevent.lock.Semaphore(args.connect_concurrency)
    first_at: list[float] = []
    last_at = [0.0]

    def out(**fields):
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    def finished(state: _ClientState) -> None:
        counters["done"] += 1
        if counters["done"] == args.clients:
            all_done.set()

    def became_ready(state: _ClientState) -> None:
        state.ready = True
        counters["ready"] += 1
        gate.release()  # the next client may start its handshake
        if counters["ready"] == args.clients:
            all_ready.set()

    def client(i: int) -> None:
        state = states[i]
        gate.acquire()
        try:
            ws = RawWebSocket.connect(url, protocols=protocol.subprotocols, timeout=args.timeout)
            for text in protocol.opening(args.topic):
                ws.send_text(text)
        except (OSError, HandshakeFailed) as exc:
            state.errors.append(f"connect: {exc}")
            counters["failed"] += 1
            became_ready(state)
            finished(state)
            return
        sockets[i] = ws
        while state.received < args.count:
            messages = ws.read_messages()
            if messages is None:
                state.errors.append(f"closed with {ws.close_code}")
                if not state.ready:
                    became_ready(state)
                break
            now = time.time()
            for opcode, payload in messages:
                kind, value = protocol.classify(payload)
                if kind == "event":
                    seq, server_time = value
                    if seq != state.next_seq:
                        state.disorder += 1
                    state.next_seq = seq + 1
                    state.received += 1
                    latencies.append(now - server_time)
                    if not first_at:
                        first_at.append(now)
                    last_at[0] = max(last_at[0], now)
                elif kind == "ready" and not state.ready:
                    became_ready(state)
                elif kind == "error":
                    state.errors.append(value)
        finished(state)

    started = time.monotonic()
    greenlets = [gevent.spawn(client, i) for i in range(args.clients)]
    if not all_ready.wait(args.timeout):
        out(error="not all clients subscribed", ready=counters["ready"], clients=args.clients)
        return 2
    connect_seconds = time.monotonic() - started
    out(ready=counters["ready"] - counters["failed"], failed=counters["failed"], connect_seconds=round(connect_seconds, 3))
    done_in_time = all_done.wait(args.timeout)
    received = sum(s.received for s in states)
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else None

    out(done=done_in_time, clients=args.clients, received=received, expected=args.clients * args.count,
        complete=sum(1 for s in states if s.received == args.count and not s.disorder),
        disorder=sum(s.disorder for s in states),
        errors=[e for s in states for e in s.errors][:10],
        bytes_in=sum(ws.bytes_in for ws in sockets if ws is not None),
        delivery_seconds=round(last_at[0] - first_at[0], 3) if first_at else None,
        latency_ms={"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0 - 1e-12)})
    gevent.killall(greenlets, block=True, timeout=5)
    for ws in sockets:
        if ws is not None:
            ws.close()
    return 0 if done_in_time else 1


class Fanout:
    """A running fan-out subprocess (see :func:`run_fanout`)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def _line(self, timeout: float) -> dict:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise AssertionError(f"fan-out clients said nothing in {timeout:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"fan-out clients exited with {self.proc.wait()}: {self.proc.stderr.read()[-2000:]}")
        return json.loads(line)

    def wait_ready(self, timeout: float) -> dict:
        report = self._line(timeout)
        assert "ready" in report, report
        return report

    def wait_done(self, timeout: float) -> dict:
        report = self._line(timeout)
        assert "done" in report, report
        return report

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def start_fanout(base: str, clients: int, topic: str, count: int, protocol: str = "ws-json",
                 timeout: float = 60.0, connect_concurrency: int = 100) -> Fanout:
    """Start ``clients`` raw WebSocket clients in a gevent subprocess.

    Each client must receive exactly ``count`` events, with sequence numbers 0, 1, ...
    (for ``ws-json``: ``data = {"n": i}``); ``connect_concurrency`` bounds the
    handshakes in flight. Use::

        fanout = start_fanout(server.url, 1000, "t", 100)
        try:
            fanout.wait_ready(30)        # every client subscribed
            ... publish ``count`` events with data {"n": 0..count-1} ...
            report = fanout.wait_done(30)
        finally:
            fanout.stop()
    """
    cmd = [sys.executable, "-m", "tests.support.wsclients", "fanout", "--base", base, "--protocol", protocol,
           "--clients", str(clients), "--topic", topic, "--count", str(count), "--timeout", str(scaled(timeout)),
           "--connect-concurrency", str(connect_concurrency)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Fanout(proc)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fanout":
        sys.exit(_fanout_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.support.wsclients fanout --base URL --clients N --topic T --count M")
