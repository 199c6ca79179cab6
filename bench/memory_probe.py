"""Idle memory per connection of one transport, on one real gunicorn worker (issue 15).

Run with the app's venv (no bench venv needed: blocking sockets, the tests' clients)::

    .venv/bin/python bench/memory_probe.py sse ws stomp longpoll -n 5000
    .venv/bin/python bench/memory_probe.py sse -n 2000 --trace 25   # tracemalloc's top 25

For each transport: a fresh worker (``gunicorn -c gunicorn.conf.py wsgi:app``, one worker,
memory hub), a warm-up of 20 connections opened and closed, the worker's VmRSS as the
baseline, then ``n`` idle connections (SSE streams, /ws sockets subscribed to a topic,
STOMP sessions with a SUBSCRIBE, parked long polls), counted by the hub, and the worker's
VmRSS again: (RSS - baseline) / n in KiB. Also the worker's live greenlets per connection
(``/healthz?greenlets=1``).

``--trace K`` starts tracemalloc in the worker after start-up (a throwaway gunicorn config
that reads the real one, then adds a ``post_worker_init`` hook: nothing of it is shipped)
and prints the K allocation sites that grew most between the baseline and the open
connections, per connection. tracemalloc itself costs memory: the RSS figures of a traced
run are not the ones to report.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.servers import Gunicorn  # noqa: E402
from tests.support.wsclients import RawWebSocket, ws_url  # noqa: E402

# The throwaway config of a traced run: the real one, then a hook that starts tracemalloc
# and a greenlet that writes a snapshot each time the probe asks (a file appears).
TRACE_CONFIG = """
exec(open({real!r}).read())

def post_worker_init(worker):
    import gevent, os, tracemalloc
    tracemalloc.start(12)

    def snapshots():
        n = 0
        while True:
            gevent.sleep(0.2)
            ask = {dir!r} + f"/ask-{{n}}"
            if os.path.exists(ask):
                tracemalloc.take_snapshot().dump({dir!r} + f"/snap-{{n}}.tmp")
                os.rename({dir!r} + f"/snap-{{n}}.tmp", {dir!r} + f"/snap-{{n}}")
                n += 1

    gevent.spawn(snapshots)
"""


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def health(server: Gunicorn, greenlets: bool = False) -> dict:
    url = server.url + "/healthz" + ("?greenlets=1" if greenlets else "")
    return requests.get(url, headers={"Connection": "close"}, timeout=60).json()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {data[:200]!r}")
        data += chunk
    return data


def open_sse(server: Gunicorn, topic: str):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"GET /api/topics/{topic}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    _read_until(sock, b": switchboard stream")
    return sock


def open_longpoll(server: Gunicorn, topic: str):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"GET /api/topics/{topic}/long-poll?timeout=3600 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock  # parked: nothing comes back until an event or the timeout


def open_ws(server: Gunicorn, topic: str):
    ws = RawWebSocket.connect(ws_url(server.url), timeout=30)
    ws.send_text(json.dumps({"op": "subscribe", "topic": topic, "ref": 1}))
    assert json.loads(ws.read_messages()[0][1])["op"] == "ok"
    return ws.sock


def open_stomp(server: Gunicorn, topic: str):
    ws = RawWebSocket.connect(ws_url(server.url, "/stomp"), protocols=("v12.stomp",), timeout=30)
    ws.send_text("CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\x00")
    ws.send_text(f"SUBSCRIBE\nid:0\ndestination:/topic/{topic}\nreceipt:r\n\n\x00")
    got = b""
    while b"RECEIPT" not in got:
        messages = ws.read_messages()
        assert messages is not None, "STOMP session closed"
        got += b"".join(payload for _, payload in messages)
    return ws.sock


OPENERS = {"sse": open_sse, "ws": open_ws, "stomp": open_stomp, "longpoll": open_longpoll}


def wait_subscribers(server: Gunicorn, count: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        seen = health(server)["subscribers"]
        if seen >= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def snapshot(trace_dir: Path, n: int):
    import tracemalloc

    (trace_dir / f"ask-{n}").touch()
    path = trace_dir / f"snap-{n}"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no snapshot from the worker")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def measure(kind: str, n: int, trace: int, log_dir: Path) -> dict:
    env = {
        "SWITCHBOARD_TICKS": "0",
        "SWITCHBOARD_MAX_CONNECTIONS": "0",
        "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT": "0",
        "SWITCHBOARD_LONGPOLL_TIMEOUT": "3600",
        "SWITCHBOARD_WS_PING_INTERVAL": "3600",  # the probe reads nothing: no pong would come
    }
    server = Gunicorn(log_dir, env=env)
    trace_dir = None
    if trace:
        trace_dir = Path(tempfile.mkdtemp(prefix="probe-trace-", dir=log_dir))
        config = trace_dir / "gunicorn.conf.py"
        config.write_text(TRACE_CONFIG.format(real=str(ROOT / "gunicorn.conf.py"), dir=str(trace_dir)))
    opener = OPENERS[kind]
    with _configured(server, trace_dir):
        (pid,) = server.worker_pids()
        warm = [opener(server, "warm") for _ in range(20)]
        for sock in warm:
            sock.close()
        wait_for = time.monotonic() + 30
        while health(server)["subscribers"] and time.monotonic() < wait_for:
            time.sleep(0.1)
        time.sleep(0.5)
        left = health(server)["subscribers"]  # parked long polls outlive their client
        base_greenlets = health(server, greenlets=True)["greenlets"]
        baseline = rss_kb(pid)
        before = snapshot(trace_dir, 0) if trace_dir else None
        socks = []
        started = time.monotonic()
        try:
            for _ in range(n):
                socks.append(opener(server, "idle"))
            counted = wait_subscribers(server, n + left) - left
            time.sleep(1.0)
            rss = rss_kb(pid)
            greenlets = health(server, greenlets=True)["greenlets"]
            after = snapshot(trace_dir, 1) if trace_dir else None
        finally:
            for sock in socks:
                sock.close()
    result = {
        "transport": kind,
        "connections": n,
        "server_counted": counted,
        "open_seconds": round(time.monotonic() - started, 1),
        "baseline_kb": baseline,
        "rss_kb": rss,
        "kb_per_conn": round((rss - baseline) / n, 2),
        "greenlets_per_conn": round((greenlets - base_greenlets) / n, 3),
    }
    if before is not None and after is not None:
        print(f"--- {kind}: tracemalloc, top {trace} sites by growth, bytes per connection")
        for stat in after.compare_to(before, "traceback")[:trace]:
            frames = [f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}" for frame in stat.traceback]
            print(f"{stat.size_diff / n:9.0f} B {stat.count_diff / n:6.2f} blocks  {' < '.join(frames[-1:-5:-1])}")
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        print(f"--- traced total: {total / n / 1024:.2f} KiB per connection")
    return result


class _configured:
    """Start the server, with the traced config when there is one."""

    def __init__(self, server: Gunicorn, trace_dir: Path | None):
        self.server, self.trace_dir = server, trace_dir

    def __enter__(self):
        if self.trace_dir is not None:
            import subprocess

            self.server._log = open(self.server.log_path, "ab")
            self.server.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(self.trace_dir / "gunicorn.conf.py"), "wsgi:app"],
                cwd=ROOT,
                env=self.server.env,
                stdout=self.server._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            from tests.support.timing import wait_until

            wait_until(self.server._ready, timeout=30, interval=0.05, message="gunicorn")
            return self.server
        return self.server.start()

    def __exit__(self, *exc_info):
        self.server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("transports", nargs="+", choices=sorted(OPENERS))
    parser.add_argument("-n", type=int, default=2000, help="idle connections (default 2000)")
    parser.add_argument("--trace", type=int, default=0, metavar="K", help="tracemalloc's top K sites")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="memory-probe-"))
    for kind in args.transports:
        print(json.dumps(measure(kind, args.n, args.trace, log_dir)), flush=True)


if __name__ == "__main__":
    main()
