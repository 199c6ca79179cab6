"""What the command-line doctor says on the wire, with the standard library only.

Plain HTTP/1.1 requests (``http.client``, which adds no ``Connection: close`` of its own:
the echo must show what the *proxy* sends upstream), an SSE reader that notes when each
event arrives (gzip-decoded when a proxy compressed the stream), and a WebSocket client
that does the RFC 6455 handshake and exchanges a message or two (masked frames out,
unmasked frames in). Nothing here decides anything: it measures and reports.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import urlsplit

__all__ = [
    "Echo",
    "Reply",
    "SseEvent",
    "StreamReading",
    "Target",
    "WsClient",
    "WsHandshake",
    "get",
    "read_sse",
    "ws_connect",
]

USER_AGENT = "switchboard-doctor/1"
# RFC 6455 1.3: the GUID a server appends to Sec-WebSocket-Key before hashing.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True)
class Target:
    """The server under test, from a base URL like ``https://their.host/`` (a path prefix is kept).

    Raises:
        ValueError: not an http(s) URL with a host.
    """

    scheme: str
    host: str
    port: int
    prefix: str = ""
    insecure: bool = False

    @classmethod
    def parse(cls, url: str, insecure: bool = False) -> "Target":
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), insecure)

    @property
    def host_header(self) -> str:
        """The Host a browser sends for this URL (the port only when it is not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host_header}"

    def path(self, path: str) -> str:
        return self.prefix + path

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new HTTP/1.1 connection (not yet opened)."""
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._ssl_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def socket(self, timeout: float) -> socket.socket:
        """A connected socket (TLS over https) for a WebSocket handshake."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if self.scheme == "https":
            sock = self._ssl_context().wrap_socket(sock, server_hostname=self.host)
        return sock


# ------------------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: its status, headers (names lower-cased), body, and timings."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    sent: float  # time.time() when the request left
    received: float  # time.time() when the whole answer was in
    elapsed: float  # monotonic seconds between the two

    def json(self):
        return json.loads(self.body)


def get(conn: http.client.HTTPConnection, path: str, headers: Mapping[str, str] | None = None) -> Reply:
    """``GET path`` on ``conn`` (kept open for the next request).

    Raises:
        OSError, http.client.HTTPException: the connection failed or was cut.
    """
    sent, start = time.time(), time.monotonic()
    conn.request("GET", path, headers={"User-Agent": USER_AGENT, **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    return Reply(
        response.status,
        {k.lower(): v for k, v in response.getheaders()},
        body,
        sent,
        time.time(),
        time.monotonic() - start,
    )


@dataclass(frozen=True)
class Echo:
    """``/api/doctor/echo``'s answer (see app/doctor_api.py), with the request's timings."""

    body: Mapping
    reply: Reply

    @property
    def upstream(self) -> Mapping:
        return self.body.get("upstream", {})

    @property
    def forwarded(self) -> Mapping:
        return self.body.get("forwarded", {})

    @property
    def seen(self) -> Mapping:
        return self.body.get("seen", {})

    @property
    def server(self) -> Mapping:
        return self.body.get("server", {})


# ------------------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SseEvent:
    at: float  # seconds from the request
    type: str
    data: str


@dataclass
class StreamReading:
    """What came of reading one SSE response.

    ``ended`` is ``"complete"`` (the server ended it properly), ``"cut"`` (the connection
    closed or broke mid-response), ``"timeout"`` (our own bound ran out) or ``"error"``
    (no response at all; ``error`` says why). Times are seconds from the request.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    opened_at: float | None = None
    first_byte_at: float | None = None
    events: list[SseEvent] = field(default_factory=list)
    ended: str = "timeout"
    ended_at: float = 0.0
    error: str | None = None

    def of_type(self, type_: str) -> list[SseEvent]:
        return [event for event in self.events if event.type == type_]

    @property
    def encoding(self) -> str | None:
        return self.headers.get("content-encoding")


class _SseParser:
    """WHATWG event-stream parsing, the part the doctor needs: event type and data lines."""

    def __init__(self) -> None:
        self._buffer = ""
        self._type = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._buffer += text.replace("\r\n", "\n").replace("\r", "\n")
        events = []
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line == "":
                if self._data:
                    events.append((self._type or "message", "\n".join(self._data)))
                self._type, self._data = "", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    self._type = value
                elif name == "data":
                    self._data.append(value)
        return events


def read_sse(target: Target, path: str, until: str, within: float) -> StreamReading:
    """Read the SSE response at ``path`` until an event of type ``until``, its end, or ``within`` s.

    Sends ``Accept-Encoding: gzip`` as browsers do, so a proxy that compresses the stream
    shows it.
    """
    reading = StreamReading()
    start = time.monotonic()
    deadline = start + within
    conn = target.connection(timeout=within)
    try:
        try:
            conn.request(
                "GET",
                path,
                headers={
                    "User-Agent": USER_AGENT,
                    "Accept": "text/event-stream",
                    "Accept-Encoding": "gzip",
                    "Cache-Control": "no-cache",
                },
            )
            response = conn.getresponse()
        except (socket.timeout, TimeoutError):
            reading.ended, reading.ended_at = "timeout", time.monotonic() - start
            return reading
        except (OSError, http.client.HTTPException) as exc:
            reading.ended, reading.error = "error", f"{type(exc).__name__}: {exc}"
            reading.ended_at = time.monotonic() - start
            return reading
        reading.opened_at = time.monotonic() - start
        reading.status = response.status
        reading.headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status != 200:
            response.read()
            reading.ended, reading.ended_at = "complete", time.monotonic() - start
            return reading
        gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if reading.encoding == "gzip" else None
        parser = _SseParser()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reading.ended = "timeout"
                break
            conn.sock.settimeout(remaining)
            try:
                chunk = response.read1(65536)
            except (socket.timeout, TimeoutError):
                reading.ended = "timeout"
                break
            except (OSError, http.client.HTTPException):  # reset, or a chunked body cut short
                reading.ended = "cut"
                break
            if not chunk:
                # http.client reads a chunked body to its last chunk; anything else ends at EOF,
                # which an HTTP/1.0 answer (no length, no chunks) also does when complete.
                reading.ended = "complete"
                break
            now = time.monotonic() - start
            if reading.first_byte_at is None:
                reading.first_byte_at = now
            if gunzip is not None:
                chunk = gunzip.decompress(chunk)
            for type_, data in parser.feed(chunk.decode("utf-8", "replace")):
                reading.events.append(SseEvent(now, type_, data))
            if any(event.type == until for event in reading.events):
                reading.ended = "complete"
                break
        reading.ended_at = time.monotonic() - start
        return reading
    finally:
        conn.close()


# ------------------------------------------------------------------------- WebSocket


@dataclass
class WsHandshake:
    """How an upgrade request was answered. ``client`` is set when it became a WebSocket."""

    status: int | None = None
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    accept_ok: bool = False
    error: str | None = None
    client: "WsClient | None" = None

    @property
    def protocol(self) -> str | None:
        return self.headers.get("sec-websocket-protocol")


class WsClient:
    """An open WebSocket: send text, receive text, close. Client frames are masked (RFC 6455 5.3)."""

    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self._buffer = bytearray(leftover)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode("utf-8"))

    def _send(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header.append(0x80 | length)
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no WebSocket frame in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the connection closed")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def recv_text(self, within: float) -> str | None:
        """The next text message, or None when the peer sends a close frame.

        Raises:
            TimeoutError: nothing within ``within`` seconds.
            ConnectionError: the connection closed without a close frame.
        """
        deadline = time.monotonic() + within
        parts: list[bytes] = []
        while True:
            first, second = self._read(2, deadline)
            opcode, fin = first & 0x0F, first & 0x80
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2, deadline))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8, deadline))[0]
            mask = self._read(4, deadline) if second & 0x80 else None
            payload = self._read(length, deadline)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                return None
            if opcode == 0x9:  # a server ping: answer it, keep reading
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x0, 0x2):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def ws_connect(
    target: Target, path: str, origin: str, protocols: Iterable[str] = (), within: float = 10.0
) -> WsHandshake:
    """Ask for a WebSocket at ``path``, as a browser on ``origin`` would."""
    result = WsHandshake()
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {target.host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin}",
        f"User-Agent: {USER_AGENT}",
    ]
    protocols = list(protocols)
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    deadline = time.monotonic() + within
    try:
        sock = target.socket(within)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to the upgrade within {within:g} s")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the connection closed before any answer to the upgrade")
            buffer += chunk
    except OSError as exc:
        sock.close()
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    head, leftover = buffer.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    try:
        result.status = int(parts[1])
    except (IndexError, ValueError):
        sock.close()
        result.error = f"not an HTTP answer: {status_line[:80]!r}"
        return result
    result.reason = parts[2] if len(parts) > 2 else ""
    for line in header_lines:
        name, _, value = line.partition(":")
        result.headers[name.strip().lower()] = value.strip()
    if result.status != 101:
        result.body = leftover[:300]
        sock.close()
        return result
    expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode("ascii")).digest()).decode("ascii")
    result.accept_ok = result.headers.get("sec-websocket-accept") == expected
    result.client = WsClient(sock, leftover)
    return result
