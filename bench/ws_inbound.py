"""Inbound WebSocket throughput of one server process: stock gevent-websocket vs wsio.

Usage: ``.venv/bin/python bench/ws_inbound.py [--quick] [--json PATH] [--server-cpu 0 --client-cpu 1]``
(bench/run.py calls it with the cores pinned, as part of ``make bench``).

For each server variant a fresh process runs gevent's WSGI server (the server
gunicorn's gevent workers run) with that variant's handler and an application that
only counts what ``receive()`` returns. The client, in this process, sends frames
masked in advance from a prebuilt buffer over a raw socket, so it costs next to
nothing; then a ``!done`` message, and the clock stops when the server's count comes
back. Workloads: 64 KiB text messages, 64 KiB binary messages, 100-byte text messages.

Variants:
    stock            geventwebsocket.handler.WebSocketHandler (per-byte Python unmask;
                     UTF-8 checked by wsaccel's validator, because wsaccel is installed)
    stock-no-wsaccel the same with wsaccel hidden: the pure-Python UTF-8 validator too
    wsio             app.transports.wsio.Handler (wsaccel unmask, CPython UTF-8 decode)
    wsio-no-wsaccel  wsio with wsaccel hidden: the stdlib big-integer unmask

Prints a table and one JSON object (also written to ``--json`` if given).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("stock", "stock-no-wsaccel", "wsio", "wsio-no-wsaccel")
MASK = b"\x5a\xa5\x3c\xc3"


# ------------------------------------------------------------------ server side


def serve(variant: str, port: int) -> None:
    """Run one server process for ``variant`` on ``port`` (the ``--serve`` mode)."""
    from gevent import monkey

    monkey.patch_all()
    if variant.endswith("-no-wsaccel"):
        sys.modules["wsaccel"] = None  # every "import wsaccel..." now raises ImportError
        sys.modules["wsaccel.xormask"] = None
        sys.modules["wsaccel.utf8validator"] = None
    sys.path.insert(0, str(ROOT))

    from gevent.pywsgi import WSGIServer

    from app.server.hooks import ServerHooks
    from app.transports import wsio

    class CountingApp:
        switchboard_server = ServerHooks(
            policy=wsio.WebSocketPolicy(protocols={"/bench": ()}, max_message_bytes=1 << 20, ping_interval=0)
        )

        def __call__(self, environ, start_response):
            ws = environ.get("wsgi.websocket")
            if ws is None:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ready"]
            count = size = 0
            while True:
                message = ws.receive()
                if message is None:
                    return []
                if message == "!done":
                    ws.send(f"{count} {size}")
                    count = size = 0
                else:
                    count += 1
                    size += len(message)

    if variant.startswith("stock"):
        from geventwebsocket.handler import WebSocketHandler

        server = WSGIServer(("127.0.0.1", port), CountingApp(), handler_class=WebSocketHandler, log=None)
    else:
        server = wsio.Server(("127.0.0.1", port), CountingApp(), handler_class=wsio.Handler, log=None)
    server.serve_forever()


# ------------------------------------------------------------------ client side


def client_frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size <= 0xFFFF:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    repeated = (MASK * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")
    return header + MASK + masked


def open_socket(port: int, path: str = "/bench", protocol: str | None = None) -> tuple[socket.socket, object]:
    """Open a WebSocket to ``path`` (offering ``protocol`` if given); the socket and its reader."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n".encode()
    )
    rfile = sock.makefile("rb")
    status = rfile.readline()
    if b" 101 " not in status:
        raise RuntimeError(f"handshake failed: {status!r}")
    while rfile.readline() not in (b"\r\n", b""):
        pass
    return sock, rfile


def read_text_frame(rfile) -> str:
    head = rfile.read(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(rfile.read(2), "big")
    elif length == 127:
        length = int.from_bytes(rfile.read(8), "big")
    payload = rfile.read(length)
    if head[0] & 0x0F != 0x1:
        raise RuntimeError(f"expected a text frame, got {head!r} {payload[:60]!r}")
    return payload.decode()


def run_workload(port: int, opcode: int, message: bytes, count: int) -> dict:
    frame = client_frame(opcode, message)
    per_batch = max(1, (1 << 20) // len(frame))
    batch = frame * per_batch
    done = client_frame(0x1, b"!done")
    sock, rfile = open_socket(port)
    try:
        # Warm up (first-use allocations, code paths), then measure.
        sock.sendall(frame * min(count, 50) + done)
        read_text_frame(rfile)
        started = time.perf_counter()
        sent = 0
        while sent + per_batch <= count:
            sock.sendall(batch)
            sent += per_batch
        if sent < count:
            sock.sendall(frame * (count - sent))
        sock.sendall(done)
        reply = read_text_frame(rfile)
        elapsed = time.perf_counter() - started
    finally:
        rfile.close()
        sock.close()
    got_count, got_bytes = (int(part) for part in reply.split())
    if got_count != count or got_bytes != count * len(message):
        raise RuntimeError(f"server counted {reply!r}, expected {count} messages")
    return {
        "messages": count,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(count / elapsed),
        "mb_per_s": round(count * len(message) / elapsed / 1e6, 2),
    }


def start_server(variant: str, cpu: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start the ``variant`` server process (pinned to core ``cpu`` if given); it and its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = subprocess.Popen(pin + [sys.executable, __file__, "--serve", variant, "--port", str(port)], cwd=ROOT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{variant} server did not start")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--server-cpu", type=int, help="pin the server processes to this core (taskset)")
    parser.add_argument("--client-cpu", type=int, help="pin this (client) process to this core")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    scale = 0.1 if args.quick else 1.0
    text_64k = ("switchboard event " * 4000).encode()[: 64 * 1024]
    workloads = {
        "text 64 KiB": (0x1, text_64k, int(8000 * scale)),
        "binary 64 KiB": (0x2, os.urandom(64 * 1024), int(8000 * scale)),
        "text 100 B": (
            0x1,
            b'{"op":"publish","topic":"chat","data":{"text":"' + b"x" * 50 + b'"}}',
            int(300_000 * scale),
        ),
    }
    # The pure-Python variants are much slower: fewer messages (same rate), so that every
    # run lasts a fraction of a second to a second. (factor for 64 KiB, factor for small)
    slow = {"stock": (0.03, 0.3), "stock-no-wsaccel": (0.01, 0.1)}
    results: dict = {}
    for variant in args.variants.split(","):
        proc, port = start_server(variant, args.server_cpu)
        try:
            results[variant] = {}
            for name, (opcode, message, count) in workloads.items():
                factor = slow.get(variant, (1.0, 1.0))[0 if len(message) > 1000 else 1]
                count = max(10, int(count * factor))
                results[variant][name] = run_workload(port, opcode, message, count)
        finally:
            proc.terminate()
            proc.wait(10)

    names = list(workloads)
    print(f"{'variant':<18}" + "".join(f"{name:>26}" for name in names))
    for variant, rows in results.items():
        cells = "".join(f"{rows[n]['mb_per_s']:>10.1f} MB/s {rows[n]['msgs_per_s']:>8} msg/s" for n in names)
        print(f"{variant:<18}{cells}")
    report = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "results": results}
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
