"""The four scenarios, each a coroutine that returns one result dict per measurement.

1. :func:`idle`: N subscribers open at once on one worker; resident memory per connection.
2. :func:`fanout`: S subscribers on one topic; a burst published as fast as the server
   answers (deliveries per second at saturation), then a fixed rate (latency); every
   subscriber checked for lost, duplicated and out-of-order events. :func:`room`: a large
   room (10,000 subscribers on one topic, one worker) at a low fixed rate.
3. :func:`overhead`: requests and bytes on the wire per delivered event for the polling
   styles, at a given interval and rate.
4. :func:`inbound`: WebSocket and STOMP messages per second and MB/s that one worker takes.

Each result also says how busy each side's core was during the measured window
(``client_cpu`` and ``server_cpu``, CPU seconds / wall seconds): a client near 1.0 means
the load generator was the limit and the figure is a lower bound for the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import socket
import sys
import time
from pathlib import Path

import numpy as np
from clients import Group, Publisher, close_group, open_group, open_publisher
from servers import Server, core_busy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ws_inbound  # noqa: E402  (its frame helpers: one WebSocket codec for every inbound test)

_topics = itertools.count(1)
SATURATED = 0.85
SERVER_CORE, CLIENT_CORE = 0, 1
# Pause between setting up and measuring (bench/run.py shortens it in quick mode).
SETTLE = 0.3


def new_topic(prefix: str) -> str:
    return f"bench-{prefix}-{int(time.time())}-{next(_topics)}"


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU of both sides over a window of wall time."""

    def __init__(self, server: Server):
        self.server = server
        self.start()

    def start(self) -> None:
        self.t0, self.c0, self.s0 = time.time(), client_cpu(), self.server.cpu_seconds()
        self.b0 = core_busy()

    def read(self, end: float | None = None) -> dict:
        wall = max(1e-6, (end or time.time()) - self.t0)
        now_wall = max(1e-6, time.time() - self.t0)
        client = (client_cpu() - self.c0) / now_wall
        server = (self.server.cpu_seconds() - self.s0) / now_wall
        busy = core_busy()
        share = {cpu: (busy[cpu] - self.b0.get(cpu, busy[cpu])) / now_wall for cpu in busy}
        # Other processes on our cores (the machines are shared): busy time that is not ours.
        others_server = max(0.0, share.get(SERVER_CORE, 0.0) - server)
        others_client = max(0.0, share.get(CLIENT_CORE, 0.0) - client)
        return {
            "seconds": round(wall, 3),
            "client_cpu": round(client, 2),
            "server_cpu": round(server, 2),
            "client_saturated": client >= SATURATED,
            "others_on_server_core": round(others_server, 2),
            "others_on_client_core": round(others_client, 2),
        }


def server_us_per_delivery(cpu: dict, delivered: int) -> float | None:
    """Server CPU microseconds per delivered event over a window (``Meter.read``'s share
    times its wall time)."""
    if not delivered:
        return None
    return round(cpu["server_cpu"] * cpu["seconds"] / delivered * 1e6, 1)


def latency_ms(samples) -> dict:
    if samples is None or not len(samples):
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
    values = np.frombuffer(samples, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(values, [50, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(values.max()), 2),
        "samples": int(values.size),
    }


async def wait_server_count(server: Server, topic: str, count: int, timeout: float, floor: int = 0) -> int:
    return await asyncio.to_thread(server.wait_subscribers, topic, count, timeout, floor)


# ---------------------------------------------------------------------- 1. idle


async def idle(server: Server, transport: str, levels: list[int], settle: float = 0.5) -> list[dict]:
    """Open subscribers up to each level in turn; RSS of the server's processes per connection.

    The server must be fresh. A warm-up of 20 connections (opened and closed) runs
    first, so one-off first-request costs are in the baseline, not in the per-connection figure.
    """
    spec = server.transports[transport]
    warm = Group(server.host, server.port, spec, new_topic("warm"), 20)
    await open_group(warm, 20, timeout=20)
    close_group(warm)
    await asyncio.sleep(settle)
    baseline = server.rss_kb()
    before = max(0, await asyncio.to_thread(server.subscribers, "warm"))
    topic = new_topic("idle")
    group = Group(server.host, server.port, spec, topic, max(levels), longpoll_timeout=20)
    results = []
    opened = total_ready = 0
    try:
        for level in levels:
            started = time.time()
            ready = await open_group(group, level - opened, concurrency=256, timeout=120)
            opened = level
            total_ready += ready
            counted = await wait_server_count(server, topic, level + before, 60, floor=level) - before
            await asyncio.sleep(settle)
            rss = server.rss_kb()
            results.append(
                {
                    "scenario": "idle",
                    "server": server.name,
                    "transport": transport,
                    "connections": level,
                    "ready": total_ready,
                    "server_counted": counted,
                    "open_seconds": round(time.time() - started, 2),
                    "baseline_kb": baseline,
                    "rss_kb": rss,
                    "kb_per_conn": round((rss - baseline) / level, 2),
                    "errors": group.wire.errors,
                }
            )
    finally:
        close_group(group)
    return results


# ---------------------------------------------------------------------- 2. fan-out


async def open_audience(
    server: Server,
    spec: dict,
    group: Group,
    topic: str,
    subscribers: int,
    result: dict,
    *,
    concurrency: int = 200,
    open_timeout: float = 60,
    count_timeout: float = 30,
) -> Publisher | None:
    """Open ``subscribers`` on ``topic``, wait until the server counts them, then connect the
    publisher. Notes ``ready`` and ``server_counted`` in ``result``; None (and ``error``)
    when not every subscriber got ready."""
    # Switchboard counts subscribers over all topics: wait for this many more.
    before = max(0, await asyncio.to_thread(server.subscribers, topic))
    ready = await open_group(group, subscribers, concurrency=concurrency, timeout=open_timeout)
    counted = await wait_server_count(server, topic, before + subscribers, count_timeout, floor=subscribers) - before
    result.update(ready=ready, server_counted=counted)
    if ready < subscribers:
        result["error"] = f"only {ready} of {subscribers} subscribers ready"
        return None
    cookie = "/api/whoami" if spec["format"] == "switchboard" and server.name.startswith("switchboard") else None
    return await open_publisher(
        server.host,
        server.port,
        server.publish_path.format(topic=topic),
        "raw" if spec["format"] == "raw" else "switchboard",
        cookie,
    )


async def fanout(
    server: Server,
    transport: str,
    subscribers: int,
    burst: int,
    paced: int,
    rate: float = 50.0,
    window: int = 8,
    timeout: float = 60,
    closed_loop: int | None = None,
) -> dict:
    """Saturation (pipelined ``window`` deep, then a single closed-loop publisher) and
    fixed-rate fan-out (the closed-loop publisher on schedule) to ``subscribers`` on one topic.

    The closed-loop publisher sends the next event only after the last was acknowledged,
    so events reach the server one by one and are not batched for it: what a moderate
    real load looks like, and what sets the latency."""
    closed_loop = burst if closed_loop is None else closed_loop
    spec = server.transports[transport]
    topic = new_topic("fan")
    group = Group(server.host, server.port, spec, topic, subscribers)
    result = {"scenario": "fanout", "server": server.name, "transport": transport, "subscribers": subscribers}
    publisher = None
    try:
        publisher = await open_audience(server, spec, group, topic, subscribers, result)
        if publisher is None:
            return result
        await asyncio.sleep(SETTLE)

        # Saturation: publish as fast as the server answers; time to the last delivery.
        phase = burst_phase = group.new_phase(0, burst, latency=False)
        group.wire.reset()
        meter = Meter(server)
        try:
            await publisher.burst(0, burst, window, timeout)
            await asyncio.wait_for(phase.done.wait(), timeout)
        except asyncio.TimeoutError:
            result["burst_timeout"] = True
        end = phase.last_arrival or time.time()
        cpu = meter.read(end)
        summary = phase.summary()
        in_window = summary["delivered"]
        result["saturation"] = {
            **summary,
            **cpu,
            "publish_statuses": dict(publisher.statuses),
            "delivered_in_window": in_window,
            "deliveries_per_s": round(in_window / cpu["seconds"]),
            "window": window,
            "server_us_per_delivery": server_us_per_delivery(cpu, in_window),
            "bytes_per_event": round((group.wire.bytes_in + group.wire.bytes_out) / max(1, in_window), 1),
        }

        # Saturation again with one closed-loop publisher: the next event after the last ack.
        base = burst
        closed_phase = None
        if closed_loop:
            await asyncio.sleep(SETTLE)
            phase = closed_phase = group.new_phase(base, closed_loop, latency=True)
            group.wire.reset()
            meter = Meter(server)
            try:
                await publisher.burst(base, closed_loop, 1, timeout)
                await asyncio.wait_for(phase.done.wait(), timeout)
            except asyncio.TimeoutError:
                result["closed_loop_timeout"] = True
            end = phase.last_arrival or time.time()
            cpu = meter.read(end)
            summary = phase.summary()
            result["closed_loop"] = {
                **summary,
                **cpu,
                "window": 1,
                **latency_ms(phase.latency),
                "deliveries_per_s": round(summary["delivered"] / cpu["seconds"]),
                "events_per_s": round(closed_loop / cpu["seconds"], 1),
                "server_us_per_delivery": server_us_per_delivery(cpu, summary["delivered"]),
            }
            base += closed_loop

        # Fixed rate, single closed-loop publisher: latency from the event's publish time to its arrival.
        await asyncio.sleep(SETTLE)
        phase = group.new_phase(base, paced, latency=True)
        group.wire.reset()
        meter = Meter(server)
        try:
            await publisher.paced(base, paced, rate, timeout, window=1)
            await asyncio.wait_for(phase.done.wait(), 10)
        except asyncio.TimeoutError:
            result["paced_timeout"] = True
        cpu = meter.read()
        summary = phase.summary()
        # Stragglers of the burst may have arrived during the paced phase: count them now.
        stragglers = ("delivered", "lost", "late", "duplicated", "out_of_order")
        result["saturation"].update({k: v for k, v in burst_phase.summary().items() if k in stragglers})
        if closed_phase is not None:
            result["closed_loop"].update({k: v for k, v in closed_phase.summary().items() if k in stragglers})
        result["paced"] = {
            **summary,
            **cpu,
            "rate": rate,
            **latency_ms(phase.latency),
            "window": 1,
            "server_us_per_delivery": server_us_per_delivery(cpu, summary["delivered"]),
            "requests_per_event": round(group.wire.requests / max(1, summary["delivered"]), 3),
            "bytes_per_event": round((group.wire.bytes_in + group.wire.bytes_out) / max(1, summary["delivered"]), 1),
        }
    finally:
        if publisher is not None:
            publisher.close()
        close_group(group)
    return result


# ---------------------------------------------------------------------- 2b. a large room


async def room(
    server: Server, transport: str, subscribers: int, rate: float, seconds: float, open_timeout: float = 180
) -> dict:
    """A large room: ``subscribers`` on one topic of one worker, and the single closed-loop
    publisher (the next event only after the last was acknowledged) at ``rate`` events/s
    for ``seconds``.

    Each event is one burst of ``subscribers`` deliveries, so the tail latency is how long
    the server takes to get through the whole room once. Reports the latency from publish
    to arrival, the server's CPU per delivered event, the load generator's own CPU share
    (a share of 0.85 or more marks the figure as the client's limit, not the server's), and
    lost, duplicated and out-of-order events."""
    spec = server.transports[transport]
    topic = new_topic("room")
    group = Group(server.host, server.port, spec, topic, subscribers)
    count = max(1, int(rate * seconds))
    result = {
        "scenario": "room",
        "server": server.name,
        "transport": transport,
        "subscribers": subscribers,
        "rate": rate,
        "events": count,
    }
    publisher = None
    try:
        started = time.time()
        publisher = await open_audience(
            server,
            spec,
            group,
            topic,
            subscribers,
            result,
            concurrency=256,
            open_timeout=open_timeout,
            count_timeout=60,
        )
        result["open_seconds"] = round(time.time() - started, 1)
        if publisher is None:
            return result
        # Connections opened in a rush settle (the server's last handshakes, the client's
        # buffers) before the window starts.
        await asyncio.sleep(max(SETTLE, 1.0))
        phase = group.new_phase(0, count, latency=True)
        group.wire.reset()
        meter = Meter(server)
        try:
            await publisher.paced(0, count, rate, seconds + 60, window=1)
            await asyncio.wait_for(phase.done.wait(), 30)
        except asyncio.TimeoutError:
            result["timeout"] = True
        cpu = meter.read()  # as the fan-out's fixed-rate phase: the window ends now
        summary = phase.summary()
        result.update(
            **summary,
            **cpu,
            **latency_ms(phase.latency),
            deliveries_per_s=round(summary["delivered"] / cpu["seconds"]),
            server_us_per_delivery=server_us_per_delivery(cpu, summary["delivered"]),
            bytes_per_event=round((group.wire.bytes_in + group.wire.bytes_out) / max(1, summary["delivered"]), 1),
            publish_statuses=dict(publisher.statuses),
        )
    finally:
        if publisher is not None:
            publisher.close()
        close_group(group)
    return result


# ---------------------------------------------------------------------- 3. polling overhead


async def overhead(
    server: Server, transport: str, subscribers: int, rate: float, duration: float, interval: float
) -> dict:
    """Requests and bytes per delivered event for polling styles at ``rate`` events/s."""
    spec = server.transports[transport]
    topic = new_topic("ovh")
    group = Group(server.host, server.port, spec, topic, subscribers, poll_interval=interval)
    count = int(rate * duration)
    result = {
        "scenario": "overhead",
        "server": server.name,
        "transport": transport,
        "subscribers": subscribers,
        "rate": rate,
        "interval_s": interval,
        "events": count,
    }
    publisher = None
    try:
        before = max(0, await asyncio.to_thread(server.subscribers, topic))
        ready = await open_group(group, subscribers, timeout=60)
        if spec["kind"] != "poll":
            await wait_server_count(server, topic, before + subscribers, 30, floor=subscribers)
        cookie = "/api/whoami" if server.name.startswith("switchboard") else None
        publisher = await open_publisher(
            server.host,
            server.port,
            server.publish_path.format(topic=topic),
            "raw" if spec["format"] == "raw" else "switchboard",
            cookie,
        )
        await asyncio.sleep(interval + 0.2)
        phase = group.new_phase(0, count, latency=True)
        group.wire.reset()
        meter = Meter(server)
        try:
            await publisher.paced(0, count, rate, duration + 30)
            await asyncio.wait_for(phase.done.wait(), interval * 2 + 5)
        except asyncio.TimeoutError:
            result["timeout"] = True
        cpu = meter.read()
        summary = phase.summary()
        delivered = max(1, summary["delivered"])
        result.update(
            ready=ready,
            **summary,
            **cpu,
            **latency_ms(phase.latency),
            requests=group.wire.requests,
            bytes=group.wire.bytes_in + group.wire.bytes_out,
            requests_per_event=round(group.wire.requests / delivered, 3),
            bytes_per_event=round((group.wire.bytes_in + group.wire.bytes_out) / delivered, 1),
        )
    finally:
        if publisher is not None:
            publisher.close()
        close_group(group)
    return result


# ---------------------------------------------------------------------- 4. inbound


def read_message(sock: socket.socket, rfile) -> str:
    """The next text message from the server; pings are answered, a close raises."""
    while True:
        head = rfile.read(2)
        if len(head) < 2:
            raise RuntimeError("connection closed")
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(rfile.read(2), "big")
        elif length == 127:
            length = int.from_bytes(rfile.read(8), "big")
        payload = rfile.read(length)
        opcode = head[0] & 0x0F
        if opcode == 0x9:
            sock.sendall(ws_inbound.client_frame(0xA, payload))
        elif opcode == 0x8:
            raise RuntimeError(f"server closed: {payload[:2].hex()} {payload[2:200]!r}")
        elif opcode == 0x1:
            return payload.decode()


def _inbound_blocking(port: int, transport: str, size: int, count: int) -> dict:
    """One client, ``count`` messages of about ``size`` bytes sent back to back, then an
    acknowledged one; the clock stops when its acknowledgement comes back (the server
    handles one connection's messages in order)."""
    topic = new_topic("in")
    if transport == "websocket":
        sock, rfile = ws_inbound.open_socket(port, "/ws")
        pad = max(1, size - len(json.dumps({"op": "publish", "topic": topic, "data": ""})))
        message = json.dumps({"op": "publish", "topic": topic, "data": "x" * pad}).encode()
        last = json.dumps({"op": "publish", "topic": topic, "data": "end", "ref": 1}).encode()
        done = lambda text: '"ref":1' in text and '"op":"ok"' in text  # noqa: E731
        failed = lambda text: '"op":"error"' in text  # noqa: E731
    else:
        sock, rfile = ws_inbound.open_socket(port, "/stomp", "v12.stomp")
        sock.sendall(
            ws_inbound.client_frame(0x1, b"CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00")
        )
        reply = read_message(sock, rfile)
        if not reply.startswith("CONNECTED"):
            raise RuntimeError(f"STOMP CONNECT answered {reply[:200]!r}")
        head = f"SEND\ndestination:/topic/{topic}\ncontent-type:text/plain\n"
        body = "x" * max(1, size - len(head) - 30)
        message = f"{head}content-length:{len(body)}\n\n{body}\x00".encode()
        last = f"SEND\ndestination:/topic/{topic}\ncontent-type:text/plain\nreceipt:end\n\nend\x00".encode()
        done = lambda text: text.startswith("RECEIPT")  # noqa: E731
        failed = lambda text: text.startswith("ERROR")  # noqa: E731
    frame = ws_inbound.client_frame(0x1, message)
    per_batch = max(1, (1 << 20) // len(frame))
    batch = frame * per_batch
    try:
        # Warm-up, acknowledged.
        sock.sendall(frame * 20 + ws_inbound.client_frame(0x1, last))
        while not done(text := read_message(sock, rfile)):
            if failed(text):
                raise RuntimeError(f"{transport} inbound refused: {text[:200]!r}")
        c0 = client_cpu()
        started = time.perf_counter()
        sent = 0
        while sent + per_batch <= count:
            sock.sendall(batch)
            sent += per_batch
        if sent < count:
            sock.sendall(frame * (count - sent))
        sock.sendall(ws_inbound.client_frame(0x1, last))
        errors = 0
        while not done(text := read_message(sock, rfile)):
            errors += failed(text)
        elapsed = time.perf_counter() - started
        cpu = client_cpu() - c0
    finally:
        rfile.close()
        sock.close()
    return {
        "messages": count,
        "message_bytes": len(message),
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(count / elapsed),
        "mb_per_s": round(count * len(message) / elapsed / 1e6, 2),
        "errors": errors,
        "client_cpu": round(cpu / elapsed, 2),
    }


async def inbound(server: Server, transport: str, size: int, count: int) -> dict:
    s0, t0 = server.cpu_seconds(), time.time()
    result = await asyncio.to_thread(_inbound_blocking, server.port, transport, size, count)
    server_cpu = (server.cpu_seconds() - s0) / max(1e-6, time.time() - t0)
    return {
        "scenario": "inbound",
        "server": server.name,
        "transport": transport,
        "size": size,
        **result,
        "server_cpu": round(server_cpu, 2),
    }


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
