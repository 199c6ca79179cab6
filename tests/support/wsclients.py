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

* :func:`start_resume` / ``python -m tests.support.wsclients resume``: clients of every
  transport that stay connected while the server stops, restarts or loses a worker,
  and resume with their cursors; it records how each session was ended (the shutdown
  signals) and what each client received since its last gap.

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
import random
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
    return "ws" + http_url[len("http") :] + path if http_url.startswith("http") else http_url + path


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
    def connect(
        cls,
        url: str,
        headers: dict[str, str] | None = None,
        protocols: tuple[str, ...] = (),
        timeout: float | None = 10.0,
    ) -> "RawWebSocket":
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
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
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
                size = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif size == 127:
                if end - start < 8:
                    break
                size = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if end - start < size:
                break
            payload = bytes(buf[start : start + size])
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


# ---------------------------------------------------------------------- STOMP codec
#
# Written from the STOMP 1.2 spec, independent of app.stomp: a bug shared by the
# server's codec and the tests' would otherwise pass both sides.

_STOMP_ESCAPE = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", ":": "\\c"}
_STOMP_UNESCAPE = {"\\": "\\", "n": "\n", "r": "\r", "c": ":"}
STOMP_SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})


class StompWireError(ValueError):
    """A server WebSocket message that is not exactly one well-formed STOMP frame."""


@dataclass
class StompFrame:
    command: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers:  # STOMP 1.2: a repeated header, the first one wins
            if key == name:
                return value
        return default


def stomp_escape(text: str) -> str:
    """A header name or value escaped as STOMP 1.1/1.2 require (backslash, LF, CR, colon)."""
    return "".join(_STOMP_ESCAPE.get(char, char) for char in text)


def stomp_frame(
    command: str, headers=(), body: bytes | str = b"", *, escape: bool = True, content_length: bool = False
) -> bytes:
    """The octets of one STOMP frame (command, headers, blank line, body, NUL).

    Args:
        headers: ``(name, value)`` pairs or a mapping, written in order.
        escape: escape names and values (STOMP 1.1+, except in CONNECT/CONNECTED).
        content_length: add a ``content-length`` header for the body.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    items = list(headers.items() if isinstance(headers, dict) else headers)
    if content_length:
        items.append(("content-length", str(len(body))))
    encode = stomp_escape if escape and command not in ("CONNECT", "STOMP") else (lambda text: text)
    lines = [command] + [f"{encode(name)}:{encode(value)}" for name, value in items]
    return "\n".join(lines).encode("utf-8") + b"\n\n" + body + b"\x00"


def _stomp_unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _STOMP_UNESCAPE:
                raise StompWireError(f"undefined escape in {text[:100]!r}")
            out.append(_STOMP_UNESCAPE[text[i + 1]])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def parse_stomp(payload: bytes, escaped: bool = True) -> StompFrame | None:
    """One server WebSocket message as a frame; ``None`` for a heart-beat (EOLs only).

    Args:
        escaped: the session's version unescapes headers (1.1 and 1.2); CONNECTED is
            never escaped.

    Raises:
        StompWireError: not exactly one well-formed frame (the server sends one per
            message), an unknown server command, or an undefined escape.
    """
    if payload.strip(b"\r\n") == b"":
        if not payload:
            raise StompWireError("empty message")
        return None
    head, sep, rest = payload.partition(b"\n\n")
    if not sep:
        head, sep, rest = payload.partition(b"\r\n\r\n")
    if not sep:
        raise StompWireError(f"no blank line after the headers: {payload[:200]!r}")
    try:
        command, *lines = head.decode("utf-8").replace("\r\n", "\n").split("\n")
    except UnicodeDecodeError as exc:
        raise StompWireError(f"headers are not UTF-8: {exc}") from None
    if command not in STOMP_SERVER_COMMANDS:
        raise StompWireError(f"not a server command: {command[:40]!r}")
    frame = StompFrame(command)
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise StompWireError(f"header line without a colon: {line[:100]!r}")
        if escaped and command != "CONNECTED":
            name, value = _stomp_unescape(name), _stomp_unescape(value)
        frame.headers.append((name, value))
    length = frame.get("content-length")
    if length is not None:
        if not length.isdigit() or len(rest) < int(length) + 1 or rest[int(length)] != 0:
            raise StompWireError(f"content-length {length} does not end at the NUL")
        body, trailing = rest[: int(length)], rest[int(length) + 1 :]
    else:
        body, nul, trailing = rest.partition(b"\x00")
        if not nul:
            raise StompWireError("no NUL at the end of the frame")
    if trailing.strip(b"\r\n"):
        raise StompWireError(f"more than one frame in a message: {trailing[:100]!r}")
    frame.body = body
    return frame


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


class StompProtocol(FanoutProtocol):
    """STOMP over ``/stomp``: CONNECT, SUBSCRIBE with a receipt (ready when it comes back).

    Events must carry ``data = {"n": <seq>}``; they arrive as MESSAGE frames whose JSON
    body is the data and whose ``time`` header is the server's publish time.
    """

    path = "/stomp"
    subprotocols = ("v12.stomp", "v11.stomp", "v10.stomp")

    def opening(self, topic: str) -> list[str]:
        connect = stomp_frame("CONNECT", [("accept-version", "1.2"), ("host", "localhost"), ("heart-beat", "0,0")])
        subscribe = stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", f"/topic/{topic}"), ("receipt", "fanout")])
        return [connect.decode("utf-8"), subscribe.decode("utf-8")]

    def classify(self, payload: bytes) -> tuple[str, Any]:
        frame = parse_stomp(payload)
        if frame is None or frame.command == "CONNECTED":
            return "other", None
        if frame.command == "MESSAGE":
            if frame.get("gap") == "true":
                return "error", "gap"
            return "event", (json.loads(frame.body)["n"], float(frame.get("time")))
        if frame.command == "RECEIPT" and frame.get("receipt-id") == "fanout":
            return "ready", None
        if frame.command == "ERROR":
            return "error", f"ERROR {frame.get('message')}: {frame.body[:200]!r}"
        return "other", None


PROTOCOLS: dict[str, Callable[[], FanoutProtocol]] = {"ws-json": JsonWsProtocol, "stomp": StompProtocol}


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
            for _opcode, payload in messages:
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
    out(
        ready=counters["ready"] - counters["failed"],
        failed=counters["failed"],
        connect_seconds=round(connect_seconds, 3),
    )
    done_in_time = all_done.wait(args.timeout)
    received = sum(s.received for s in states)
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else None

    out(
        done=done_in_time,
        clients=args.clients,
        received=received,
        expected=args.clients * args.count,
        complete=sum(1 for s in states if s.received == args.count and not s.disorder),
        disorder=sum(s.disorder for s in states),
        errors=[e for s in states for e in s.errors][:10],
        bytes_in=sum(ws.bytes_in for ws in sockets if ws is not None),
        delivery_seconds=round(last_at[0] - first_at[0], 3) if first_at else None,
        latency_ms={"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0 - 1e-12)},
    )
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


def start_fanout(
    base: str,
    clients: int,
    topic: str,
    count: int,
    protocol: str = "ws-json",
    timeout: float = 60.0,
    connect_concurrency: int = 100,
) -> Fanout:
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
    cmd = [
        sys.executable,
        "-m",
        "tests.support.wsclients",
        "fanout",
        "--base",
        base,
        "--protocol",
        protocol,
        "--clients",
        str(clients),
        "--topic",
        topic,
        "--count",
        str(count),
        "--timeout",
        str(scaled(timeout)),
        "--connect-concurrency",
        str(connect_concurrency),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Fanout(proc)


# --------------------------------------------------------------------------- churn

CHURN_TRANSPORTS = ("polling", "long-polling", "sse", "ws", "stomp")
_STOMP_OFFERS = {
    "1.0": ("v10.stomp",),
    "1.1": ("v11.stomp", "v10.stomp"),
    "1.2": ("v12.stomp", "v11.stomp", "v10.stomp"),
}


class ChurnFailure(Exception):
    """Something a correct server never does (a bad status, an ERROR, a stray message)."""


@dataclass
class ChurnClient:
    """One churning client's position and what it has seen.

    ``expected`` is the next sequence number it must receive; anything below it is a
    duplicate, anything above it means events were skipped (lost or out of order).
    """

    transport: str
    index: int
    cursor: str
    rng: Any
    expected: int = 0
    received: int = 0
    duplicated: int = 0
    lost: int = 0
    gaps: int = 0
    sessions: int = 0
    abrupt: int = 0
    errors: list[str] = field(default_factory=list)

    def accept(self, n: int, cursor: str) -> None:
        self.received += 1
        if n < self.expected:
            self.duplicated += 1
            return
        if n > self.expected:
            self.lost += n - self.expected
        self.expected = n + 1
        self.cursor = cursor


class _Churn:
    """The churn subprocess: one publisher and N clients per transport, all greenlets.

    Clients connect, read for a random lifetime, leave (gracefully or abruptly), stay
    away for a random pause and come back with their cursor, until the publisher is
    done; then each stays connected until it has every event, or the deadline passes.
    """

    def __init__(self, args):
        import gevent.event

        self.args = args
        parts = urlsplit(args.base)
        self.host, self.port = parts.hostname, parts.port or 80
        self.topic = args.topic
        self.count = args.count
        self.rng = random.Random(args.seed)
        self.published_all = gevent.event.Event()
        self.publish_errors: list[str] = []
        self.published = 0
        self.deadline = 0.0
        self.sessions = {
            "polling": self._polling,
            "long-polling": self._long_polling,
            "sse": self._sse,
            "ws": self._ws,
            "stomp": self._stomp,
        }

    # -- helpers ------------------------------------------------------------------

    def _http(self, timeout: float = 10.0):
        import http.client

        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _done(self, c: ChurnClient) -> bool:
        return c.expected >= self.count

    def _until(self, c: ChurnClient) -> float:
        """When the current session should end: its lifetime while churning, else the deadline."""
        if self.published_all.is_set():
            return self.deadline
        return time.monotonic() + c.rng.uniform(0.05, 2.0)

    @staticmethod
    def _abort(sock, reset: bool = True) -> None:
        """Drop the TCP connection without any goodbye: a reset (a lost network, a killed
        process) or a bare FIN (a tab closed mid-stream)."""
        if reset:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        sock.close()

    def _event_data(self, c: ChurnClient, event: dict) -> None:
        data = event.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("n"), int):
            raise ChurnFailure(f"unexpected event data {str(data)[:200]}")
        c.accept(data["n"], event["id"])

    # -- publisher ----------------------------------------------------------------

    def publish(self, n: int, conn_box: list) -> dict:
        body = json.dumps({"data": {"n": n}})
        for attempt in range(3):
            if conn_box[0] is None:
                conn_box[0] = self._http()
            try:
                conn_box[0].request(
                    "POST", f"/api/topics/{self.topic}/events", body=body, headers={"Content-Type": "application/json"}
                )
                response = conn_box[0].getresponse()
                text = response.read()
            except OSError as exc:  # a keep-alive connection the server timed out: once more
                conn_box[0].close()
                conn_box[0] = None
                if attempt == 2:
                    raise ChurnFailure(f"publish {n}: {exc}") from None
                continue
            if response.status != 201:
                raise ChurnFailure(f"publish {n}: {response.status} {text[:200]!r}")
            return json.loads(text)
        raise AssertionError("unreachable")

    def _publisher(self, started: float) -> None:
        import gevent

        conn_box = [None]
        try:
            for n in range(self.count):
                gevent.sleep(max(0.0, started + n / self.args.rate - time.monotonic()))
                self.publish(n, conn_box)
                self.published += 1
        except ChurnFailure as exc:
            self.publish_errors.append(str(exc))
        finally:
            if conn_box[0] is not None:
                conn_box[0].close()
            self.published_all.set()

    # -- clients ------------------------------------------------------------------

    def _client(self, c: ChurnClient) -> None:
        import gevent

        gevent.sleep(c.rng.uniform(0, 0.5))
        while not self._done(c):
            if time.monotonic() >= self.deadline:
                c.errors.append(f"incomplete at the deadline: next {c.expected} of {self.count}")
                return
            c.sessions += 1
            try:
                self.sessions[c.transport](c, self._until(c))
            except (ChurnFailure, HandshakeFailed, OSError, ValueError, KeyError) as exc:
                c.errors.append(f"session {c.sessions}: {type(exc).__name__}: {exc}"[:300])
                if len(c.errors) > 20:
                    return
            if not self.published_all.is_set():
                gevent.sleep(c.rng.uniform(0.0, 0.3))  # away for a while

    def _polling(self, c: ChurnClient, until: float) -> None:
        import gevent

        conn = self._http()
        etag = None
        try:
            while not self._done(c) and time.monotonic() < until:
                headers = {"If-None-Match": etag} if etag and c.rng.random() < 0.5 else {}
                conn.request("GET", f"/api/topics/{self.topic}/events?since={c.cursor}&limit=1000", headers=headers)
                if not self.published_all.is_set() and c.rng.random() < 0.05:
                    c.abrupt += 1  # asked, then gone before the answer
                    self._abort(conn.sock, c.rng.random() < 0.5)
                    return
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    page = json.loads(body)
                    if page["gap"]:
                        c.gaps += 1
                    for event in page["events"]:
                        self._event_data(c, event)
                    if page["events"] and page["cursor"] != page["events"][-1]["id"]:
                        raise ChurnFailure(f"cursor {page['cursor']} is not the last event's id")
                    c.cursor = page["cursor"]
                    etag = response.getheader("ETag")
                elif response.status != 304:
                    raise ChurnFailure(f"poll answered {response.status}: {body[:200]!r}")
                gevent.sleep(c.rng.uniform(0.02, 0.3))
        finally:
            conn.close()

    def _long_polling(self, c: ChurnClient, until: float) -> None:
        import http.client

        conn = self._http()
        try:
            while not self._done(c) and time.monotonic() < until:
                timeout = c.rng.uniform(0.2, 3.0)
                conn.request("GET", f"/api/topics/{self.topic}/long-poll?since={c.cursor}&timeout={timeout:.2f}")
                # Churning: give up when the lifetime ends, even while parked (abrupt).
                conn.sock.settimeout(max(0.01, min(until - time.monotonic(), timeout + 10.0)))
                try:
                    response = conn.getresponse()
                    body = response.read()
                except (TimeoutError, http.client.HTTPException):
                    if time.monotonic() < until - 0.1:
                        raise
                    c.abrupt += 1
                    self._abort(conn.sock, c.rng.random() < 0.5)
                    return
                if conn.sock is not None:  # None when the server said Connection: close
                    conn.sock.settimeout(10.0)
                if response.status == 200:
                    page = json.loads(body)
                    if page["gap"]:
                        c.gaps += 1
                    for event in page["events"]:
                        self._event_data(c, event)
                    c.cursor = page["cursor"]
                elif response.status != 204:
                    raise ChurnFailure(f"long poll answered {response.status}: {body[:200]!r}")
        finally:
            conn.close()

    def _sse(self, c: ChurnClient, until: float) -> None:
        import gevent

        how = c.rng.choice(("header", "last_event_id", "since"))
        path = f"/api/topics/{self.topic}/stream"
        head = [f"Host: {self.host}:{self.port}", "Accept: text/event-stream"]
        if how == "header":
            head.append(f"Last-Event-ID: {c.cursor}")
        else:
            path += f"?{how}={c.cursor}"
        sock = socket.create_connection((self.host, self.port), timeout=10)
        try:
            sock.sendall((f"GET {path} HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n\r\n").encode("ascii"))
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ChurnFailure("SSE: closed before the response head")
                raw += chunk
            status_head, _, raw = raw.partition(b"\r\n\r\n")
            status = int(status_head.split(b" ", 2)[1])
            if status != 200 or b"text/event-stream" not in status_head.lower():
                raise ChurnFailure(f"SSE answered {status_head[:300]!r}")
            if b"transfer-encoding: chunked" not in status_head.lower():
                raise ChurnFailure("SSE: expected a chunked stream")
            chunked, text, fields = bytearray(raw), bytearray(), {}
            while not self._done(c):
                # De-chunk what is buffered, then split complete lines off the text.
                while True:
                    line_end = chunked.find(b"\r\n")
                    if line_end < 0:
                        break
                    size = int(bytes(chunked[:line_end]).split(b";")[0], 16)
                    if size == 0:
                        raise ChurnFailure("SSE: the server ended the stream")
                    if len(chunked) < line_end + 2 + size + 2:
                        break
                    text += chunked[line_end + 2 : line_end + 2 + size]
                    del chunked[: line_end + 2 + size + 2]
                while (nl := text.find(b"\n")) >= 0:
                    line = bytes(text[:nl]).decode("utf-8")
                    del text[: nl + 1]
                    if line == "":
                        if "data" in fields:
                            if fields.get("event") == "gap":
                                c.gaps += 1
                            else:
                                event = json.loads(fields["data"])
                                if event["id"] != fields.get("id"):
                                    raise ChurnFailure(f"SSE id {fields.get('id')} is not the event's {event['id']}")
                                self._event_data(c, event)
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
                    if self._done(c):
                        break
                left = until - time.monotonic()
                if left <= 0 or self._done(c):
                    break
                chunk = None
                with gevent.Timeout(left, False):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ChurnFailure("SSE: connection closed by the server")
                if chunk is None:
                    break
                chunked += chunk
            c.abrupt += 1  # an EventSource leaves by dropping the connection
        finally:
            self._abort(sock, c.rng.random() < 0.5)

    def _ws_url(self, path: str) -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def _read(self, ws: RawWebSocket, until: float):
        """Messages read before ``until``; ``[]`` at the deadline; raises if the server closed."""
        import gevent

        messages = []
        with gevent.Timeout(max(0.001, until - time.monotonic()), False):
            messages = ws.read_messages()
            if messages is None:
                raise ChurnFailure(f"the server closed the connection ({ws.close_code})")
        return messages

    def _leave(self, c: ChurnClient, ws: RawWebSocket, goodbye: Callable[[], None] | None = None) -> None:
        """End a WebSocket session: abruptly, with a closing handshake, or after ``goodbye``."""
        import gevent

        mode = c.rng.random() if not self._done(c) else 1.0
        if mode < 0.4:
            c.abrupt += 1
            self._abort(ws.sock, mode < 0.2)
            return
        if goodbye is not None and mode < 0.7:
            goodbye()
        ws.close(1000)  # sends Close and closes the socket: the server sees EOF after it
        gevent.sleep(0)

    def _ws(self, c: ChurnClient, until: float) -> None:
        ws = RawWebSocket.connect(self._ws_url("/ws"), timeout=10)
        refs = itertools.count(1)
        try:
            subscribing = f"s{next(refs)}"
            ws.send_text(json.dumps({"op": "subscribe", "topic": self.topic, "since": c.cursor, "ref": subscribing}))
            subscribed = False
            unsubscribing = None
            while not self._done(c) and time.monotonic() < until:
                for _opcode, payload in self._read(ws, until):
                    message = json.loads(payload)
                    op = message.get("op")
                    if op == "event":
                        if not subscribed:
                            raise ChurnFailure(f"an event outside a subscription: {payload[:200]!r}")
                        self._event_data(c, message)
                    elif op == "gap":
                        c.gaps += 1
                    elif op == "ok" and message.get("ref") == subscribing:
                        subscribed, subscribing = True, None
                    elif op == "ok" and message.get("ref") == unsubscribing:
                        # Now, and not before, no event of the topic may come.
                        subscribed, unsubscribing = False, None
                        subscribing = f"s{next(refs)}"  # back, from where it stopped
                        ws.send_text(
                            json.dumps({"op": "subscribe", "topic": self.topic, "since": c.cursor, "ref": subscribing})
                        )
                    else:
                        raise ChurnFailure(f"unexpected message {payload[:300]!r}")
                if subscribed and unsubscribing is None and not self.published_all.is_set() and c.rng.random() < 0.05:
                    unsubscribing = f"u{next(refs)}"
                    ws.send_text(json.dumps({"op": "unsubscribe", "topic": self.topic, "ref": unsubscribing}))
        finally:
            self._leave(c, ws)

    def _stomp(self, c: ChurnClient, until: float) -> None:
        version = c.rng.choice(("1.0", "1.1", "1.2"))
        ws = RawWebSocket.connect(self._ws_url("/stomp"), protocols=_STOMP_OFFERS[version], timeout=10)
        escaped = version != "1.0"
        numbers = itertools.count(1)

        def send(command, headers):
            ws.send_text(stomp_frame(command, headers, escape=escaped).decode("utf-8"))

        def subscribe() -> str:
            sub_id = f"sub-{next(numbers)}"
            send(
                "SUBSCRIBE",
                [
                    ("id", sub_id),
                    ("destination", f"/topic/{self.topic}"),
                    ("last-event-id", c.cursor),
                    ("receipt", f"r-{sub_id}"),
                ],
            )
            return sub_id

        def disconnect():
            send("DISCONNECT", [("receipt", "bye")])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for _opcode, payload in self._read(ws, deadline):
                    frame = parse_stomp(payload, escaped)
                    if frame is not None and frame.command == "RECEIPT" and frame.get("receipt-id") == "bye":
                        return
            raise ChurnFailure("no RECEIPT for DISCONNECT")

        try:
            connect = [("host", "localhost"), ("heart-beat", "0,0")]
            if version != "1.0":
                connect.insert(0, ("accept-version", version))
            send("CONNECT", connect)
            current = subscribe()
            leaving = None  # the subscription being unsubscribed
            while not self._done(c) and time.monotonic() < until:
                for _opcode, payload in self._read(ws, until):
                    frame = parse_stomp(payload, escaped)
                    if frame is None:
                        continue
                    if frame.command == "MESSAGE":
                        if frame.get("subscription") not in (current, leaving):
                            raise ChurnFailure(
                                f"MESSAGE for subscription {frame.get('subscription')}, current {current}"
                            )
                        if frame.get("gap") == "true":
                            c.gaps += 1
                            continue
                        data = json.loads(frame.body)
                        self._event_data(c, {"data": data, "id": frame.get("event-id")})
                    elif frame.command == "CONNECTED":
                        if frame.get("version", "1.0") != version:
                            raise ChurnFailure(f"asked for {version}, CONNECTED {frame.get('version')}")
                    elif frame.command == "RECEIPT":
                        if leaving is not None and frame.get("receipt-id") == f"u-{leaving}":
                            leaving = None
                            current = subscribe()
                    else:
                        raise ChurnFailure(f"{frame.command} {frame.get('message')}: {frame.body[:200]!r}")
                if leaving is None and not self.published_all.is_set() and c.rng.random() < 0.05:
                    leaving, current = current, None
                    send("UNSUBSCRIBE", [("id", leaving), ("receipt", f"u-{leaving}")])
        finally:
            self._leave(c, ws, disconnect)

    # -- the run ------------------------------------------------------------------

    def run(self) -> dict:
        import gevent

        started = time.monotonic()
        self.deadline = started + self.count / self.args.rate + self.args.timeout
        baseline = self.publish(-1, [None])  # every client starts from a real cursor
        clients = [
            ChurnClient(transport, i, baseline["id"], random.Random(self.rng.random()))
            for transport, n in self.args.clients.items()
            for i in range(n)
        ]
        greenlets = [gevent.spawn(self._client, c) for c in clients]
        publisher = gevent.spawn(self._publisher, time.monotonic())
        gevent.joinall([publisher, *greenlets], timeout=max(1.0, self.deadline - time.monotonic() + 15))
        gevent.killall(greenlets, block=True, timeout=5)
        report = {}
        for transport in self.args.clients:
            group = [c for c in clients if c.transport == transport]
            report[transport] = {
                "clients": len(group),
                "complete": sum(1 for c in group if c.expected == self.count and not c.lost and not c.duplicated),
                "received": sum(c.received for c in group),
                "lost": sum(c.lost for c in group),
                "duplicated": sum(c.duplicated for c in group),
                "gaps": sum(c.gaps for c in group),
                "sessions": sum(c.sessions for c in group),
                "min_sessions": min((c.sessions for c in group), default=0),
                "abrupt": sum(c.abrupt for c in group),
                "errors": [f"{c.transport}[{c.index}] {e}" for c in group for e in c.errors][:10],
            }
        return {
            "done": True,
            "count": self.count,
            "published": self.published,
            "publish_errors": self.publish_errors,
            "seconds": round(time.monotonic() - started, 2),
            "transports": report,
        }


def _churn_main(argv: list[str]) -> int:
    """The churn subprocess: run, then print one JSON line ``{"done": true, ...}``."""
    parser = argparse.ArgumentParser(prog="wsclients churn")
    parser.add_argument("--base", required=True, help="http://host:port of the server")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--clients", required=True, help="transport=count,... over " + ", ".join(CHURN_TRANSPORTS))
    parser.add_argument("--count", type=int, required=True, help="events to publish (data {'n': 0..count-1})")
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to catch up after the last publish")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    clients = {}
    for item in args.clients.split(","):
        name, _, number = item.partition("=")
        if name not in CHURN_TRANSPORTS:
            parser.error(f"unknown transport {name!r}")
        clients[name] = int(number)
    args.clients = clients
    report = _Churn(args).run()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


def start_churn(
    base: str, topic: str, clients: dict[str, int], count: int, rate: float, timeout: float = 30.0, seed: int = 0
) -> Fanout:
    """Start churning clients in a gevent subprocess; ``wait_done`` returns its report.

    ``clients`` maps each transport of :data:`CHURN_TRANSPORTS` to a number of clients.
    The subprocess publishes a baseline event (every client starts from its cursor),
    then ``count`` events with ``data = {"n": 0..count-1}`` at ``rate`` per second over
    HTTP, while every client disconnects and reconnects at random (random lifetimes
    and pauses; abrupt closes, closing handshakes, DISCONNECT, unsubscribe/resubscribe
    on one socket), resuming each time with its cursor (``since``, ``Last-Event-ID``,
    ``last_event_id``, ``since`` on ``/ws`` subscribe, ``last-event-id`` on STOMP
    SUBSCRIBE). After the last publish each client stays until it has every event or
    ``timeout`` (scaled) passes. The report, per transport: ``clients``, ``complete``
    (every event once, in order), ``received``, ``lost``, ``duplicated``, ``gaps``,
    ``sessions``, ``min_sessions``, ``abrupt``, ``errors``.
    """
    spec = ",".join(f"{name}={n}" for name, n in clients.items())
    cmd = [
        sys.executable,
        "-m",
        "tests.support.wsclients",
        "churn",
        "--base",
        base,
        "--topic",
        topic,
        "--clients",
        spec,
        "--count",
        str(count),
        "--rate",
        str(rate),
        "--timeout",
        str(scaled(timeout)),
        "--seed",
        str(seed),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Fanout(proc)


# ------------------------------------------------------------------------- resume


@dataclass
class ResumeClient(ChurnClient):
    """A client that stays connected and resumes whenever the server ends its session.

    ``signals`` counts how each session ended (``sse:retry-end``, ``long-poll:204``,
    ``ws:1001``, ``stomp:ERROR server shutting down``, ``refused``...); ``after_gap`` is
    every sequence number received since the last gap (all of them if there was none).
    """

    signals: dict[str, int] = field(default_factory=dict)
    after_gap: list[int] = field(default_factory=list)
    ready: bool = False

    def accept(self, n: int, cursor: str) -> None:
        super().accept(n, cursor)
        self.after_gap.append(n)

    def gap(self) -> None:
        self.gaps += 1
        self.after_gap = []

    def signal(self, name: str) -> None:
        self.signals[name] = self.signals.get(name, 0) + 1


class _SessionEnded(Exception):
    """The server ended a session the way a stopping or overloaded server does.

    Attributes:
        signal: how (counted in :attr:`ResumeClient.signals`).
        wait: seconds the server asked the client to wait (SSE ``retry:``,
            ``Retry-After``), or ``None`` for the client's own backoff.
    """

    def __init__(self, signal: str, wait: float | None = None):
        super().__init__(signal)
        self.signal = signal
        self.wait = wait


class _Resume(_Churn):
    """The resume subprocess: clients of every transport stay connected while the server
    is stopped, restarted or loses a worker, and come back with their cursors.

    Unlike churn, a client never leaves on its own: each session lasts until the server
    ends it (or the client has every event). How it ended is recorded; then the client
    waits (what the server asked for, capped, else a jittered backoff of 50 ms doubling
    to 1 s) and resumes. The publisher survives the server going away too: a publish
    that failed is looked up in history before it is sent again, so an event that was
    stored although its answer was lost is not stored twice.
    """

    def __init__(self, args):
        super().__init__(args)
        self.ids: dict[int, str] = {}  # n -> the id it was stored under (the last one, after a restart)
        self.last_id: str | None = None
        self.publish_retries = 0
        self.ready = 0
        self.out = None

    # -- publisher ----------------------------------------------------------------

    def _stored(self, n: int, conn_box: list) -> dict | None:
        """The event ``n`` if history has it after the last event we know we stored."""
        if conn_box[0] is None:
            conn_box[0] = self._http()
        query = f"?since={self.last_id}&limit=1000" if self.last_id else "?limit=1000"
        conn_box[0].request("GET", f"/api/topics/{self.topic}/events{query}")
        response = conn_box[0].getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"history answered {response.status}")
        for event in json.loads(body)["events"]:
            if isinstance(event.get("data"), dict) and event["data"].get("n") == n:
                return event
        return None

    def publish(self, n: int, conn_box: list) -> dict:
        import http.client

        import gevent

        delay, uncertain = 0.05, False
        while time.monotonic() < self.deadline:
            try:
                if uncertain:
                    event = self._stored(n, conn_box)
                    if event is not None:
                        return self._published(n, event)
                if conn_box[0] is None:
                    conn_box[0] = self._http()
                conn_box[0].request(
                    "POST",
                    f"/api/topics/{self.topic}/events",
                    body=json.dumps({"data": {"n": n}}),
                    headers={"Content-Type": "application/json"},
                )
                uncertain = True  # from here on the server may have stored it
                response = conn_box[0].getresponse()
                text = response.read()
                if response.status == 201:
                    if (response.getheader("Connection") or "").lower() == "close":
                        conn_box[0].close()
                        conn_box[0] = None
                    return self._published(n, json.loads(text))
                if response.status not in (503, 429):
                    raise ChurnFailure(f"publish {n}: {response.status} {text[:200]!r}")
            except (OSError, http.client.HTTPException):
                pass
            if conn_box[0] is not None:
                conn_box[0].close()
                conn_box[0] = None
            self.publish_retries += 1
            gevent.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise ChurnFailure(f"publish {n}: the server did not come back in time")

    def _published(self, n: int, event: dict) -> dict:
        self.ids[n] = event["id"]
        self.last_id = event["id"]
        return event

    # -- clients ------------------------------------------------------------------

    def _until(self, c: ChurnClient) -> float:
        return self.deadline

    def _client(self, c: ResumeClient) -> None:
        import http.client

        import gevent

        backoff = 0.05
        while not self._done(c):
            if time.monotonic() >= self.deadline:
                c.errors.append(f"incomplete at the deadline: next {c.expected} of {self.count}")
                return
            c.sessions += 1
            before, wait = c.received, None
            try:
                self.sessions[c.transport](c, self.deadline)
                continue  # done
            except _SessionEnded as ended:
                c.signal(ended.signal)
                wait = ended.wait
            except ConnectionRefusedError:
                c.signal("refused")
            except HandshakeFailed as exc:
                c.signal(f"handshake:{exc.status}")
            except (OSError, http.client.HTTPException) as exc:
                c.signal(f"lost:{type(exc).__name__}")
            except (ChurnFailure, ValueError, KeyError) as exc:
                c.errors.append(f"session {c.sessions}: {type(exc).__name__}: {exc}"[:300])
                if len(c.errors) > 20:
                    return
            if c.received > before:
                backoff = 0.05
            pause = min(wait, self.args.retry_cap) if wait is not None else c.rng.uniform(0.5, 1.5) * backoff
            backoff = min(backoff * 2, 1.0)
            gevent.sleep(pause)

    def _mark_ready(self, c: ResumeClient) -> None:
        if not c.ready:
            c.ready = True
            self.ready += 1
            if self.ready == len(self.clients):
                self.out(ready=self.ready)

    def _page(self, c: ResumeClient, page: dict) -> None:
        if page["gap"]:
            c.gap()
        for event in page["events"]:
            self._event_data(c, event)
        # An empty topic after a gap answers cursor "": keep ours, so the next request
        # is judged against it again rather than "live from now" (which could skip).
        if page["cursor"]:
            c.cursor = page["cursor"]

    @staticmethod
    def _retry_after(response) -> float | None:
        value = response.getheader("Retry-After")
        return float(value) if value and value.isdigit() else None

    def _polling(self, c: ResumeClient, until: float) -> None:
        import gevent

        conn = self._http()
        try:
            while not self._done(c) and time.monotonic() < until:
                conn.request("GET", f"/api/topics/{self.topic}/events?since={c.cursor}&limit=1000")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise _SessionEnded(f"polling:{response.status}", self._retry_after(response))
                self._mark_ready(c)
                self._page(c, json.loads(body))
                if (response.getheader("Connection") or "").lower() == "close":
                    c.signal("polling:connection-close")  # the next request opens a new connection
                gevent.sleep(c.rng.uniform(0.05, 0.15))
        finally:
            conn.close()

    def _long_polling(self, c: ResumeClient, until: float) -> None:
        conn = self._http(timeout=30)
        try:
            while not self._done(c) and time.monotonic() < until:
                conn.request("GET", f"/api/topics/{self.topic}/long-poll?since={c.cursor}&timeout=5")
                self._mark_ready(c)
                response = conn.getresponse()
                body = response.read()
                closing = (response.getheader("Connection") or "").lower() == "close"
                if response.status == 200:
                    self._page(c, json.loads(body))
                elif response.status != 204:
                    raise _SessionEnded(f"long-poll:{response.status}", self._retry_after(response))
                if closing:  # a stopping worker's answer (a shutdown's 204): the next poll reconnects
                    c.signal(f"long-poll:{response.status}-close")
        finally:
            conn.close()

    def _sse(self, c: ResumeClient, until: float) -> None:
        import gevent

        sock = socket.create_connection((self.host, self.port), timeout=10)
        retry = None
        try:
            sock.sendall(
                (
                    f"GET /api/topics/{self.topic}/stream HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Accept: text/event-stream\r\nLast-Event-ID: {c.cursor}\r\n\r\n"
                ).encode("ascii")
            )
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = sock.recv(65536)
                if not chunk:
                    raise _SessionEnded("sse:closed-before-head")
                raw += chunk
            status_head, _, raw = raw.partition(b"\r\n\r\n")
            status = int(status_head.split(b" ", 2)[1])
            if status != 200:
                value = next(
                    (
                        line.split(b":", 1)[1].strip()
                        for line in status_head.split(b"\r\n")
                        if line.lower().startswith(b"retry-after:")
                    ),
                    b"",
                )
                raise _SessionEnded(f"sse:{status}", float(value) if value.isdigit() else None)
            chunked, text, fields, opened, ended = bytearray(raw), bytearray(), {}, False, False
            while not self._done(c):
                while not ended:
                    line_end = chunked.find(b"\r\n")
                    if line_end < 0:
                        break
                    size = int(bytes(chunked[:line_end]).split(b";")[0], 16)
                    if size == 0:  # the server ended the stream (after the text before it)
                        ended = True
                        break
                    if len(chunked) < line_end + 2 + size + 2:
                        break
                    text += chunked[line_end + 2 : line_end + 2 + size]
                    del chunked[: line_end + 2 + size + 2]
                while (nl := text.find(b"\n")) >= 0:
                    line = bytes(text[:nl]).decode("utf-8")
                    del text[: nl + 1]
                    if line == "":
                        if "data" in fields:
                            if fields.get("event") == "gap":
                                c.gap()
                            else:
                                self._event_data(c, json.loads(fields["data"]))
                        elif "retry" in fields and opened:
                            retry = int(fields["retry"])  # a retry: after the opening one: the last words
                        if not opened:
                            opened = True
                            self._mark_ready(c)
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
                if self._done(c):
                    break
                if ended:
                    raise _SessionEnded(
                        "sse:retry-end" if retry is not None else "sse:end", None if retry is None else retry / 1000
                    )
                chunk = None
                with gevent.Timeout(max(0.001, until - time.monotonic()), False):
                    chunk = sock.recv(65536)
                if chunk is None:
                    break
                if not chunk:
                    raise _SessionEnded("sse:cut")
                chunked += chunk
        finally:
            self._abort(sock, reset=False)

    def _ws(self, c: ResumeClient, until: float) -> None:
        ws = RawWebSocket.connect(self._ws_url("/ws"), timeout=10)
        try:
            ws.send_text(json.dumps({"op": "subscribe", "topic": self.topic, "since": c.cursor, "ref": "resume"}))
            while not self._done(c) and time.monotonic() < until:
                messages = self._messages(ws, until, "ws")
                for _opcode, payload in messages:
                    message = json.loads(payload)
                    op = message.get("op")
                    if op == "event":
                        self._event_data(c, message)
                    elif op == "gap":
                        c.gap()
                    elif op == "ok" and message.get("ref") == "resume":
                        self._mark_ready(c)
                    elif op == "error" and message.get("ref") is None:
                        c.signal(f"ws:error-{message.get('error')}")  # then the close follows
                    else:
                        raise ChurnFailure(f"unexpected message {payload[:300]!r}")
        finally:
            ws.close(1000)

    def _messages(self, ws: RawWebSocket, until: float, name: str):
        import gevent

        messages = None
        with gevent.Timeout(max(0.001, until - time.monotonic()), False):
            messages = ws.read_messages()
            if messages is None:
                raise _SessionEnded(f"{name}:{ws.close_code}")
        return messages or []

    def _stomp(self, c: ResumeClient, until: float) -> None:
        ws = RawWebSocket.connect(self._ws_url("/stomp"), protocols=_STOMP_OFFERS["1.2"], timeout=10)
        error = None
        try:
            ws.send_text(
                stomp_frame(
                    "CONNECT", [("accept-version", "1.2"), ("host", "localhost"), ("heart-beat", "0,0")], escape=False
                ).decode("utf-8")
            )
            ws.send_text(
                stomp_frame(
                    "SUBSCRIBE",
                    [
                        ("id", "0"),
                        ("destination", f"/topic/{self.topic}"),
                        ("last-event-id", c.cursor),
                        ("receipt", "resume"),
                    ],
                ).decode("utf-8")
            )
            while not self._done(c) and time.monotonic() < until:
                try:
                    messages = self._messages(ws, until, "stomp")
                except _SessionEnded as ended:
                    if error is not None:  # ERROR, then the close: one signal for both
                        raise _SessionEnded(f"stomp:ERROR {error}+{ws.close_code}") from None
                    raise ended
                for _opcode, payload in messages:
                    frame = parse_stomp(payload)
                    if frame is None or frame.command == "CONNECTED":
                        continue
                    if error is not None:
                        raise ChurnFailure(f"a frame after ERROR: {payload[:200]!r}")
                    if frame.command == "MESSAGE":
                        if frame.get("gap") == "true":
                            c.gap()
                        else:
                            self._event_data(c, {"data": json.loads(frame.body), "id": frame.get("event-id")})
                    elif frame.command == "RECEIPT" and frame.get("receipt-id") == "resume":
                        self._mark_ready(c)
                    elif frame.command == "ERROR":
                        error = frame.get("message")
                    else:
                        raise ChurnFailure(f"unexpected {frame.command}: {payload[:200]!r}")
        finally:
            ws.close(1000)

    # -- the run ------------------------------------------------------------------

    def run(self) -> dict:
        import gevent

        def out(**fields):
            sys.stdout.write(json.dumps(fields) + "\n")
            sys.stdout.flush()

        self.out = out
        started = time.monotonic()
        self.deadline = started + self.args.timeout
        baseline = self.publish(-1, [None])  # every client starts from a real cursor
        self.clients = [
            ResumeClient(transport, i, baseline["id"], random.Random(self.rng.random()))
            for transport, n in self.args.clients.items()
            for i in range(n)
        ]
        greenlets = [gevent.spawn(self._client, c) for c in self.clients]
        # The publisher starts on the test's word (a line on stdin), once it saw "ready".
        gevent.get_hub().threadpool.spawn(sys.stdin.readline).get()
        publisher = gevent.spawn(self._publisher, time.monotonic())
        gevent.joinall([publisher, *greenlets], timeout=max(1.0, self.deadline - time.monotonic() + 5))
        gevent.killall(greenlets, block=True, timeout=5)
        report = {}
        for transport in self.args.clients:
            group = [c for c in self.clients if c.transport == transport]
            signals: dict[str, int] = {}
            for c in group:
                for name, count in c.signals.items():
                    signals[name] = signals.get(name, 0) + count
            report[transport] = {
                "clients": len(group),
                "complete": sum(1 for c in group if c.expected == self.count and not c.lost and not c.duplicated),
                "received": sum(c.received for c in group),
                "lost": sum(c.lost for c in group),
                "duplicated": sum(c.duplicated for c in group),
                "gaps": sum(c.gaps for c in group),
                "gapped": sum(1 for c in group if c.gaps),
                "sessions": sum(c.sessions for c in group),
                "resumed": sum(1 for c in group if c.sessions > 1),
                "signals": signals,
                "errors": [f"{c.transport}[{c.index}] {e}" for c in group for e in c.errors][:10],
                "after_gap": [c.after_gap for c in group],
            }
        return {
            "done": True,
            "count": self.count,
            "published": self.published,
            "ids": self.ids,
            "publish_errors": self.publish_errors,
            "publish_retries": self.publish_retries,
            "seconds": round(time.monotonic() - started, 2),
            "transports": report,
        }


def _resume_main(argv: list[str]) -> int:
    """The resume subprocess: ``{"ready": n}`` once every client is in, then (after a line
    on stdin starts the publisher) one JSON line ``{"done": true, ...}``."""
    parser = argparse.ArgumentParser(prog="wsclients resume")
    parser.add_argument("--base", required=True, help="http://host:port of the server")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--clients", required=True, help="transport=count,... over " + ", ".join(CHURN_TRANSPORTS))
    parser.add_argument("--count", type=int, required=True, help="events to publish (data {'n': 0..count-1})")
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds until every client must be done")
    parser.add_argument("--retry-cap", type=float, default=3.0, help="longest wait a server may ask for")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    clients = {}
    for item in args.clients.split(","):
        name, _, number = item.partition("=")
        if name not in CHURN_TRANSPORTS:
            parser.error(f"unknown transport {name!r}")
        clients[name] = int(number)
    args.clients = clients
    report = _Resume(args).run()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


class Resume(Fanout):
    """A running resume subprocess (see :func:`start_resume`)."""

    def start_publishing(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        super().stop()


def start_resume(
    base: str,
    topic: str,
    clients: dict[str, int],
    count: int,
    rate: float,
    timeout: float = 60.0,
    retry_cap: float = 3.0,
    seed: int = 0,
) -> Resume:
    """Start clients that stay connected through server stops, in a gevent subprocess.

    ``clients`` maps transports of :data:`CHURN_TRANSPORTS` to numbers of clients; each
    starts from the cursor of a baseline event and says "ready" once subscribed (or, for
    polling styles, once it asked). Use::

        resume = start_resume(server.url, "t", {"sse": 40, ...}, count=300, rate=40)
        try:
            resume.wait_ready(30)
            resume.start_publishing()     # count events, data {"n": 0..count-1}, at rate
            ... stop a worker, restart the server ...
            report = resume.wait_done(90)
        finally:
            resume.stop()

    The report has, per transport, what :func:`start_churn` reports plus ``gapped``
    (clients told of a gap), ``resumed`` (clients with more than one session),
    ``signals`` (how the server ended sessions, summed) and ``after_gap`` (per client,
    the sequence numbers received since its last gap); and ``ids`` (n -> stored id).
    """
    spec = ",".join(f"{name}={n}" for name, n in clients.items())
    cmd = [
        sys.executable,
        "-m",
        "tests.support.wsclients",
        "resume",
        "--base",
        base,
        "--topic",
        topic,
        "--clients",
        spec,
        "--count",
        str(count),
        "--rate",
        str(rate),
        "--timeout",
        str(scaled(timeout)),
        "--retry-cap",
        str(scaled(retry_cap)),
        "--seed",
        str(seed),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return Resume(proc)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "resume":
        sys.exit(_resume_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "churn":
        sys.exit(_churn_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "fanout":
        sys.exit(_fanout_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.support.wsclients fanout --base URL --clients N --topic T --count M")
