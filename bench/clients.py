"""The load generator: asyncio (uvloop) clients for every transport, and the publisher.

Built to cost the client as little as possible per delivered event, so that the server is
what is measured: raw sockets, no HTTP or WebSocket library, one compiled regular
expression run over every batch of bytes that arrives at once (not a JSON parse per
event), and a bytearray per check.

Every published event carries ``{"s": <sequence>, "t": <publisher's clock>}`` in its data.
A :class:`Phase` expects the sequences ``base .. base+count-1`` at every subscriber and
counts, per subscriber, what arrived, what arrived twice (duplicated), what arrived
after a later one (out of order) and, at the end, what never arrived (lost). In a phase
with latency on, each arrival is timed against the event's publish time: the envelope's
``time`` field (Switchboard, Flask-SocketIO), STOMP's ``time`` header, or the data's
``t`` (Nchan, which adds no envelope). All on one machine, one clock.

Transports (``spec["kind"]``): ``sse``, ``ws`` (Switchboard's JSON ops or Nchan's raw
frames), ``stomp`` (STOMP 1.2 over WebSocket), ``socketio`` (Engine.IO 4 WebSocket-only),
``longpoll`` and ``poll``. Everything goes to 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
from array import array
from typing import Callable

SEQ_RE = re.compile(rb'"s":(\d+)')
TIME_RES = {
    "switchboard": re.compile(rb'"time":([0-9.]+)'),
    "raw": re.compile(rb'"t":([0-9.]+)'),
    "stomp": re.compile(rb"\ntime:([0-9.]+)"),
}
CURSOR_RE = re.compile(rb'"cursor":"([^"]*)"')
EVENTS_RE = re.compile(rb'"events":\[\]')
MASK = b"\x5a\xa5\x3c\xc3"
LINGER_RST = struct.pack("ii", 1, 0)


class ClientError(Exception):
    """A server answered something the bench did not expect."""


# ---------------------------------------------------------------------- bookkeeping


class Wire:
    """Requests made and bytes moved by a group of clients (application bytes, no TCP/IP headers)."""

    __slots__ = ("requests", "bytes_in", "bytes_out", "errors")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.requests = self.bytes_in = self.bytes_out = self.errors = 0


class Phase:
    """The events every subscriber of a group must receive: sequences [base, base+count)."""

    def __init__(self, subscribers: int, base: int, count: int, latency: bool):
        self.subscribers, self.base, self.count = subscribers, base, count
        self.seen = bytearray(subscribers * count)
        self.got = [0] * subscribers
        self.last = [-1] * subscribers
        self.dup = self.ooo = self.stray = self.complete = self.late = 0
        self.prev: Phase | None = None  # the group's previous phase: its stragglers are routed back
        self.latency = array("d") if latency else None
        self.first_arrival = 0.0
        self.last_arrival = 0.0
        self.done = asyncio.Event()
        if count == 0:
            self.done.set()

    def record(self, index: int, seqs: list, times: list | None, now: float) -> None:
        base, count, seen = self.base, self.count, self.seen
        off = index * count
        last = self.last[index]
        before = got = self.got[index]
        for raw in seqs:
            rel = int(raw) - base
            if rel < 0 or rel >= count:
                if rel < 0 and self.prev is not None:
                    self.prev.straggler(index, int(raw))
                else:
                    self.stray += 1
                continue
            k = off + rel
            if seen[k]:
                self.dup += 1
            else:
                seen[k] = 1
                got += 1
            if rel < last:
                self.ooo += 1
            else:
                last = rel
        self.last[index] = last
        self.got[index] = got
        if times and self.latency is not None:
            self.latency.extend([now - float(t) for t in times])
        if not self.first_arrival:
            self.first_arrival = now
        self.last_arrival = now
        if got == count and before < count:
            self.complete += 1
            if self.complete == self.subscribers:
                self.done.set()

    def straggler(self, index: int, seq: int) -> None:
        """An event of this phase that arrived after the phase was over (a later phase runs)."""
        rel = seq - self.base
        if rel < 0 or rel >= self.count:
            if rel < 0 and self.prev is not None:
                self.prev.straggler(index, seq)
            else:
                self.stray += 1
            return
        k = index * self.count + rel
        if self.seen[k]:
            self.dup += 1
            return
        self.seen[k] = 1
        self.got[index] += 1
        self.late += 1
        if rel < self.last[index]:
            self.ooo += 1
        else:
            self.last[index] = rel

    def summary(self) -> dict:
        """Counts so far. ``lost`` = not (yet) arrived; ``late`` = arrived after the phase's
        time bound, while a later phase ran (delivered, but not within the measured window)."""
        delivered = sum(self.got)
        return {
            "subscribers": self.subscribers,
            "events": self.count,
            "delivered": delivered,
            "lost": self.subscribers * self.count - delivered,
            "late": self.late,
            "duplicated": self.dup,
            "out_of_order": self.ooo,
            "stray": self.stray,
            "complete_subscribers": self.complete,
        }


class Group:
    """Shared state of the clients of one transport on one topic."""

    def __init__(
        self,
        host: str,
        port: int,
        spec: dict,
        topic: str,
        count: int,
        poll_interval: float = 1.0,
        longpoll_timeout: int = 20,
    ):
        self.host, self.port, self.spec, self.topic, self.size = host, port, spec, topic, count
        self.path = spec["path"].format(topic=topic)
        self.fmt = spec["format"]
        self.wire = Wire()
        self.phase: Phase | None = None
        self.poll_interval = poll_interval
        self.longpoll_timeout = longpoll_timeout
        self.conns: list = []
        self.stopping = False

    def new_phase(self, base: int, count: int, latency: bool) -> Phase:
        phase = Phase(self.size, base, count, latency)
        phase.prev = self.phase
        self.phase = phase
        return phase

    def time_re(self):
        if self.spec["kind"] == "stomp":
            return TIME_RES["stomp"]
        return TIME_RES[self.fmt]


# ---------------------------------------------------------------------- HTTP pieces


def parse_head(buf: bytes) -> tuple[int, dict, int] | None:
    """(status, lower-cased headers, end offset) of a response head in ``buf``, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ClientError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key == "set-cookie" and key in headers:
            continue
        headers[key] = value.strip()
    return int(parts[1]), headers, end + 4


class Dechunker:
    """Incremental ``Transfer-Encoding: chunked`` decoder for streamed bodies (SSE)."""

    __slots__ = ("buf", "left", "skip", "finished")

    def __init__(self):
        self.buf = b""
        self.left = 0  # data bytes still to take from the current chunk
        self.skip = 0  # CRLF bytes after a chunk's data still to drop
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        out = []
        pos, n = 0, len(buf)
        while pos < n:
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
                continue
            if self.left:
                take = min(self.left, n - pos)
                out.append(buf[pos : pos + take])
                self.left -= take
                pos += take
                if not self.left:
                    self.skip = 2
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";", 1)[0], 16)
            pos = nl + 2
            if size == 0:
                self.finished = True
                pos = n
                break
            self.left = size
        self.buf = buf[pos:]
        return b"".join(out)


class HttpReader:
    """Incremental reader of complete (non-streamed) responses; several may be pipelined."""

    __slots__ = ("buf", "head", "need", "chunked", "on_response")

    def __init__(self, on_response: Callable[[int, dict, bytes], None]):
        self.buf = b""
        self.head = None
        self.need = 0
        self.chunked = False
        self.on_response = on_response

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.head is None:
                parsed = parse_head(self.buf)
                if parsed is None:
                    return
                status, headers, end = parsed
                self.buf = self.buf[end:]
                self.head = (status, headers)
                self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                self.need = 0 if status in (204, 304) else int(headers.get("content-length", 0) or 0)
            if self.chunked:
                end = self.buf.find(b"\r\n0\r\n\r\n")
                if self.buf.startswith(b"0\r\n\r\n"):
                    body, self.buf = b"", self.buf[5:]
                elif end < 0:
                    return
                else:
                    raw, self.buf = self.buf[: end + 2], self.buf[end + 7 :]
                    body = Dechunker().feed(raw + b"0\r\n\r\n")
            else:
                if len(self.buf) < self.need:
                    return
                body, self.buf = self.buf[: self.need], self.buf[self.need :]
            status, headers = self.head
            self.head = None
            self.on_response(status, headers, body)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3: every client frame is masked)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size <= 0xFFFF:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    if not size:
        return header + MASK
    repeated = (MASK * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")
    return header + MASK + masked


def ws_handshake(host: str, port: int, path: str, protocol: str | None = None) -> bytes:
    extra = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: c3dpdGNoYm9hcmRiZW5jaA==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# ---------------------------------------------------------------------- subscribers


class Subscriber(asyncio.Protocol):
    """Base of every subscriber connection: byte counting, readiness, close with RST."""

    def __init__(self, group: Group, index: int):
        self.group, self.index = group, index
        self.transport = None
        self.ready = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.start()

    def send(self, data: bytes) -> None:
        self.group.wire.bytes_out += len(data)
        self.transport.write(data)

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(True)

    def fail(self, exc: Exception) -> None:
        self.group.wire.errors += 1
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ClientError(f"connection closed before ready: {exc}"))

    def close(self) -> None:
        """Close at once with a reset: no TIME_WAIT left behind on either side."""
        if self.transport is not None and not self.transport.is_closing():
            sock = self.transport.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            except (OSError, AttributeError):
                pass
            self.transport.abort()

    def deliver(self, blob: bytes) -> None:
        """Record every event found in ``blob`` (one or more complete events)."""
        phase = self.group.phase
        if phase is None:
            return
        seqs = SEQ_RE.findall(blob)
        if not seqs:
            return
        now = time.time()
        times = self.group.time_re().findall(blob) if phase.latency is not None else None
        phase.record(self.index, seqs, times, now)

    def start(self) -> None:
        raise NotImplementedError


class SSE(Subscriber):
    """``GET`` an event stream; events are the blocks between blank lines."""

    def start(self) -> None:
        g = self.group
        self.head_done = False
        self.dechunk: Dechunker | None = None
        self.send(
            f"GET {g.path} HTTP/1.1\r\nHost: {g.host}:{g.port}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n\r\n".encode()
        )
        g.wire.requests += 1

    def data_received(self, data: bytes) -> None:
        self.group.wire.bytes_in += len(data)
        if not self.head_done:
            self.buf += data
            try:
                parsed = parse_head(self.buf)
            except ClientError as exc:
                return self.fail(exc)
            if parsed is None:
                return
            status, headers, end = parsed
            if status != 200:
                return self.fail(ClientError(f"SSE answered {status}"))
            self.head_done = True
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.dechunk = Dechunker()
            data, self.buf = self.buf[end:], b""
            self.set_ready()
        if self.dechunk is not None:
            data = self.dechunk.feed(data)
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.buf = buf
            return
        self.buf = buf[cut + 2 :]
        self.deliver(buf[:cut])


class WebSocketBase(Subscriber):
    """Opening handshake, then frames; subclasses handle the messages."""

    protocol: str | None = None

    def start(self) -> None:
        g = self.group
        self.upgraded = False
        self.fragments: list[bytes] = []
        self.send(ws_handshake(g.host, g.port, g.path, self.protocol))
        g.wire.requests += 1

    def send_text(self, text: bytes) -> None:
        self.send(ws_frame(0x1, text))

    def data_received(self, data: bytes) -> None:
        self.group.wire.bytes_in += len(data)
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            try:
                parsed = parse_head(buf)
            except ClientError as exc:
                return self.fail(exc)
            if parsed is None:
                self.buf = buf
                return
            status, headers, end = parsed
            if status != 101:
                return self.fail(ClientError(f"WebSocket handshake answered {status}"))
            self.upgraded = True
            buf = buf[end:]
            self.on_open()
        pos, n = 0, len(buf)
        messages = []
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode in (0x0, 0x1, 0x2):
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    self.fragments.append(payload)
                    payload = b"".join(self.fragments)
                    self.fragments = []
                messages.append(payload)
            elif opcode == 0x9:
                self.send(ws_frame(0xA, payload))
            elif opcode == 0x8:
                self.send(ws_frame(0x8, payload[:2]))
                self.closed = True
        self.buf = buf[pos:] if pos < n else b""
        if messages:
            self.on_messages(messages)

    def on_open(self) -> None:
        self.set_ready()

    def on_messages(self, messages: list[bytes]) -> None:
        self.deliver(b"\x00".join(messages))


class SwitchboardWS(WebSocketBase):
    """``/ws`` JSON ops: subscribe with a ref, ready on its ``ok``."""

    def on_open(self) -> None:
        self.send_text(json.dumps({"op": "subscribe", "topic": self.group.topic, "ref": 1}).encode())

    def on_messages(self, messages: list[bytes]) -> None:
        if not self.ready.done():
            for message in messages:
                if message.startswith(b'{"op":"ok"') or b'"op":"ok"' in message[:40]:
                    self.set_ready()
                elif b'"op":"error"' in message[:40]:
                    return self.fail(ClientError(f"/ws subscribe failed: {message[:200]!r}"))
        self.deliver(b"\x00".join(messages))


class Stomp(WebSocketBase):
    """STOMP 1.2 over WebSocket: CONNECT, SUBSCRIBE with a receipt, ready on RECEIPT."""

    protocol = "v12.stomp"

    def on_open(self) -> None:
        self.send_text(f"CONNECT\naccept-version:1.2\nhost:{self.group.host}\nheart-beat:0,0\n\n\x00".encode())

    def on_messages(self, messages: list[bytes]) -> None:
        if not self.ready.done():
            for message in messages:
                if message.startswith(b"CONNECTED"):
                    self.send_text(
                        f"SUBSCRIBE\nid:0\ndestination:/topic/{self.group.topic}\nack:auto\n"
                        f"receipt:sub-0\n\n\x00".encode()
                    )
                elif message.startswith(b"RECEIPT"):
                    self.set_ready()
                elif message.startswith(b"ERROR"):
                    return self.fail(ClientError(f"STOMP error: {message[:200]!r}"))
        self.deliver(b"\x00".join(messages))


class SocketIOClient(WebSocketBase):
    """Engine.IO 4 over WebSocket only: open, connect to ``/``, emit ``subscribe`` with an ack."""

    def on_messages(self, messages: list[bytes]) -> None:
        events = []
        for message in messages:
            kind = message[:1]
            if kind == b"4":
                if message.startswith(b"42"):
                    events.append(message)
                elif message.startswith(b"40"):
                    self.send_text(b'420["subscribe",{"topic":"' + self.group.topic.encode() + b'"}]')
                elif message.startswith(b"430"):
                    self.set_ready()
                elif message.startswith(b"44"):
                    return self.fail(ClientError(f"Socket.IO error: {message[:200]!r}"))
            elif kind == b"2":
                self.send_text(b"3")  # Engine.IO ping -> pong
            elif kind == b"0":
                self.send_text(b"40")
        if events:
            self.deliver(b"\x00".join(events))


class RawWS(WebSocketBase):
    """Nchan's WebSocket subscriber: each text message is one published body."""


class LongPoll(Subscriber):
    """Long polling on one keep-alive connection: a request, a response, the next request.

    Switchboard: resume with ``since=<cursor>`` from the body. Nchan: resume with
    ``If-Modified-Since`` / ``If-None-Match`` from the last ``Last-Modified`` / ``Etag``.
    """

    def start(self) -> None:
        self.reader = HttpReader(self.on_response)
        self.cursor = ""
        self.nchan_headers = ""
        self.request()

    def request(self) -> None:
        g = self.group
        if g.stopping:
            return
        if g.fmt == "switchboard":
            query = f"?timeout={g.longpoll_timeout}" + (f"&since={self.cursor}" if self.cursor else "")
            line = f"GET {g.path}{query} HTTP/1.1\r\nHost: {g.host}:{g.port}\r\n\r\n"
        else:
            line = f"GET {g.path} HTTP/1.1\r\nHost: {g.host}:{g.port}\r\n{self.nchan_headers}\r\n"
        g.wire.requests += 1
        self.send(line.encode())
        # Parked: the server cannot say so, so readiness is checked on the server side.
        self.set_ready()

    def data_received(self, data: bytes) -> None:
        self.group.wire.bytes_in += len(data)
        try:
            self.reader.feed(data)
        except ClientError as exc:
            self.fail(exc)

    def on_response(self, status: int, headers: dict, body: bytes) -> None:
        if status == 200:
            self.update_cursor(headers, body)
            self.deliver(body)
        elif status not in (204, 304, 408):
            self.group.wire.errors += 1
        self.after_response(status, headers, body)

    def update_cursor(self, headers: dict, body: bytes) -> None:
        if self.group.fmt == "switchboard":
            found = CURSOR_RE.search(body)
            if found:
                self.cursor = found.group(1).decode()
        else:
            self.nchan_headers = (
                f"If-Modified-Since: {headers.get('last-modified', '')}\r\nIf-None-Match: {headers.get('etag', '')}\r\n"
            )

    def after_response(self, status: int, headers: dict, body: bytes) -> None:
        self.request()


class Poll(LongPoll):
    """Interval polling: ask at once again while there may be more, else wait the interval.

    Switchboard answers every event after ``since`` (up to 50) and 304 when nothing is new
    (``If-None-Match`` = the cursor); Nchan answers one message per response, 304 when
    nothing is newer.
    """

    limit = 50

    def request(self) -> None:
        g = self.group
        if g.stopping or self.closed:
            return
        if g.fmt == "switchboard":
            query = f"?since={self.cursor}" if self.cursor else ""
            etag = f'If-None-Match: "{self.cursor}"\r\n' if self.cursor else ""
            line = f"GET {g.path}{query} HTTP/1.1\r\nHost: {g.host}:{g.port}\r\n{etag}\r\n"
        else:
            line = f"GET {g.path} HTTP/1.1\r\nHost: {g.host}:{g.port}\r\n{self.nchan_headers}\r\n"
        g.wire.requests += 1
        self.send(line.encode())
        self.set_ready()

    def after_response(self, status: int, headers: dict, body: bytes) -> None:
        more = status == 200 and (self.group.fmt != "switchboard" or body.count(b'"s":') >= self.limit)
        if more:
            self.request()
        else:
            asyncio.get_running_loop().call_later(self.group.poll_interval, self.request)


SUBSCRIBERS = {
    ("sse", "switchboard"): SSE,
    ("sse", "raw"): SSE,
    ("ws", "switchboard"): SwitchboardWS,
    ("ws", "raw"): RawWS,
    ("stomp", "switchboard"): Stomp,
    ("socketio", "switchboard"): SocketIOClient,
    ("longpoll", "switchboard"): LongPoll,
    ("longpoll", "raw"): LongPoll,
    ("poll", "switchboard"): Poll,
    ("poll", "raw"): Poll,
}


async def open_group(group: Group, count: int, concurrency: int = 200, timeout: float = 60) -> int:
    """Open ``count`` more subscribers (bounded concurrency); return how many are ready."""
    loop = asyncio.get_running_loop()
    cls = SUBSCRIBERS[(group.spec["kind"], group.fmt)]
    gate = asyncio.Semaphore(concurrency)
    deadline = loop.time() + timeout
    ready = 0

    async def one(index: int) -> bool:
        async with gate:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: cls(group, index), group.host, group.port), left
                )
                group.conns.append(proto)
                await asyncio.wait_for(asyncio.shield(proto.ready), max(0.1, deadline - loop.time()))
                return True
            except (OSError, asyncio.TimeoutError, ClientError):
                group.wire.errors += 1
                return False

    start = len(group.conns)
    results = await asyncio.gather(*(one(start + i) for i in range(count)))
    ready = sum(results)
    return ready


def close_group(group: Group) -> None:
    group.stopping = True
    for conn in group.conns:
        conn.close()
    group.conns.clear()


# ---------------------------------------------------------------------- publisher


class Publisher(asyncio.Protocol):
    """HTTP publisher on one keep-alive connection, pipelined up to ``window`` requests.

    One connection keeps the publication order equal to the sequence order, so a
    subscriber that sees ``s`` go down has really received events out of order.
    """

    def __init__(self, host: str, port: int, path: str, fmt: str, cookie: str = ""):
        self.host, self.port, self.path, self.fmt, self.cookie = host, port, path, fmt, cookie
        self.reader = HttpReader(self.on_response)
        self.outstanding = 0
        self.answered = 0
        self.failed = 0
        self.statuses: dict[int, int] = {}
        self.room = asyncio.Event()
        self.room.set()
        self.window = 1
        self.drained = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)

    def connection_lost(self, exc) -> None:
        self.room.set()
        self.drained.set()

    def on_response(self, status: int, headers: dict, body: bytes) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 300:
            self.failed += 1
        self.answered += 1
        self.outstanding -= 1
        if self.outstanding < self.window:
            self.room.set()
        if self.outstanding == 0:
            self.drained.set()

    def request(self, seq: int) -> bytes:
        stamp = f'{{"s":{seq},"t":{time.time():.6f}}}'
        body = (stamp if self.fmt == "raw" else f'{{"data":{stamp}}}').encode()
        cookie = f"Cookie: {self.cookie}\r\n" if self.cookie else ""
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{cookie}\r\n"
        ).encode() + body

    async def send(self, seq: int) -> None:
        while self.outstanding >= self.window:
            self.room.clear()
            await self.room.wait()
            if self.transport.is_closing():
                raise ClientError("the publisher's connection closed")
        if not self.writable.is_set():
            await self.writable.wait()
        self.outstanding += 1
        self.drained.clear()
        self.transport.write(self.request(seq))

    async def burst(self, base: int, count: int, window: int, timeout: float) -> None:
        """Publish ``count`` events as fast as the server answers, ``window`` in flight."""
        self.window = window

        async def run():
            for seq in range(base, base + count):
                await self.send(seq)
            if self.outstanding:
                await self.drained.wait()

        await asyncio.wait_for(run(), timeout)

    async def paced(self, base: int, count: int, rate: float, timeout: float, window: int = 64) -> None:
        """Publish ``count`` events at ``rate`` per second, on schedule, with at most
        ``window`` unanswered: 1 is a single closed-loop publisher (the next event only
        after the last was acknowledged, so a server that falls behind slows it down)."""
        self.window = window
        loop = asyncio.get_running_loop()

        async def run():
            start = loop.time()
            for i in range(count):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.send(base + i)
            if self.outstanding:
                await self.drained.wait()

        await asyncio.wait_for(run(), timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_publisher(host: str, port: int, path: str, fmt: str, cookie_path: str | None = None) -> Publisher:
    """Connect a publisher; with ``cookie_path`` first get a session cookie there (Switchboard)."""
    loop = asyncio.get_running_loop()
    cookie = ""
    if cookie_path:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {cookie_path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        parsed = parse_head(raw)
        if parsed and "set-cookie" in parsed[1]:
            cookie = parsed[1]["set-cookie"].split(";", 1)[0]
    _, proto = await loop.create_connection(lambda: Publisher(host, port, path, fmt, cookie), host, port)
    return proto
