"""Scale-out bench: what one channel for everything costs against per-topic routing.

Two measurements (README "Scaling out" quotes them):

* ``fanout``: gunicorn with 4 workers, 1,000 topics of 10 SSE subscribers each (10,000
  streams), 500 events/s in total (0.5/s per topic, HTTP publishes spread over the workers),
  on one redis-server and on a 3-primary Redis Cluster, with ``SWITCHBOARD_REDIS_ROUTING``
  ``shared`` (one channel every worker hears in full) and ``topic`` (a channel per topic, a
  worker subscribes to what it serves). Reported: the workers' CPU per delivered event, and
  Redis's CPU per published event.
* ``unserved``: one measured worker (host A) with 10 topics of 10 subscribers at 50
  events/s, while another host (B, 2 workers) takes publishes to ``U`` topics that A does not
  serve (0.5 events/s each). Reported: A's CPU per second as ``U`` grows, for both routings.

    .venv/bin/python bench/scaleout.py                  # both, 3 runs each, about 20 minutes
    .venv/bin/python bench/scaleout.py --only unserved --runs 1 --seconds 10

Servers run on core 0, the load generator on core 1 (as bench/run.py). The figures go to
``bench/results/scaleout.json`` and a table on stdout. Runs with the app's venv (it uses the
tests' Redis Cluster helper); every loop and wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from servers import Redis, Switchboard, cpu_seconds, process_tree  # noqa: E402

from tests.support.redis_topologies import RedisClusterServers  # noqa: E402

HOST = "127.0.0.1"
DATA_LINE = b"\ndata: "


class Stream(asyncio.Protocol):
    """One SSE subscriber: counts the events it receives (``data:`` lines), nothing else."""

    def __init__(self, counts: list[int], index: int, ready: asyncio.Future):
        self.counts, self.index, self.ready = counts, index, ready
        self.tail = b""
        self.head = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.head:
            if not data.startswith(b"HTTP/1.1 200"):
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(data[:80]))
                return
            self.head = False
            if not self.ready.done():
                self.ready.set_result(True)
        buf = self.tail + data
        self.counts[self.index] += buf.count(DATA_LINE) - self.tail.count(DATA_LINE)
        self.tail = buf[-8:]

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"closed: {exc}"))


async def open_streams(port: int, topics: list[str], per_topic: int) -> tuple[list[int], list]:
    """``per_topic`` SSE streams on each topic; returns the per-stream counters and transports."""
    loop = asyncio.get_running_loop()
    counts = [0] * (len(topics) * per_topic)
    transports: list = []
    gate = asyncio.Semaphore(100)

    async def one(index: int, topic: str) -> None:
        async with gate:
            ready = loop.create_future()
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: Stream(counts, index, ready), HOST, port), 30
            )
            transport.write(
                f"GET /api/topics/{topic}/stream HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            transports.append(transport)
            await asyncio.wait_for(ready, 30)

    await asyncio.gather(*(one(i * per_topic + k, topic) for i, topic in enumerate(topics) for k in range(per_topic)))
    return counts, transports


async def publish(ports: list[int], topics: list[str], rate: float, seconds: float, connections: int = 16) -> dict:
    """Publish at ``rate`` events/s for ``seconds``, to random ``topics``, over keep-alive
    connections spread over ``ports``; returns the statuses."""
    statuses: dict[int, int] = {}
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    queue: asyncio.Queue = asyncio.Queue()

    async def worker(port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while True:
                n = await queue.get()
                if n is None:
                    return
                body = json.dumps({"data": {"n": n}}).encode()
                topic = topics[n % len(topics)] if len(topics) > 1 else topics[0]
                writer.write(
                    f"POST /api/topics/{topic}/events HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                status = int(head.split(b" ", 2)[1])
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                await reader.readexactly(length)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker(ports[i % len(ports)])) for i in range(connections)]
    order = list(range(total))
    random.Random(7).shuffle(order)
    for i, n in enumerate(order):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(n)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*workers), seconds + 300)
    return statuses


def worker_pids(server: Switchboard) -> list[int]:
    return [pid for pid in process_tree(server.proc.pid) if pid != server.proc.pid]


def pin(pids: list[int], core: int = 0) -> None:
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], capture_output=True)


class Deployment:
    """One redis-server, or a 3-primary cluster, started for one measurement."""

    def __init__(self, kind: str, workdir: Path):
        self.kind, self.workdir = kind, workdir

    def __enter__(self) -> "Deployment":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "single":
            self.redis = Redis(core=0, log_dir=self.workdir).start()
            self.url, self.pids = self.redis.url, [self.redis.proc.pid]
        else:
            self.cluster = RedisClusterServers(self.workdir / "cluster").start()
            self.url, self.pids = self.cluster.url, [node.proc.pid for node in self.cluster.nodes]
            pin(self.pids)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.kind == "single":
            self.redis.stop()
        else:
            self.cluster.stop()


def switchboard(url: str, workers: int, routing: str, workdir: Path) -> Switchboard:
    env = {"SWITCHBOARD_REDIS_ROUTING": routing, "SWITCHBOARD_SSE_HEARTBEAT": "15"}
    return Switchboard(core=0, log_dir=workdir, workers=workers, redis_url=url, env=env).start(timeout=60)


def run_fanout(kind: str, routing: str, seconds: float, workdir: Path) -> dict:
    topics = [f"t{n}" for n in range(1000)]
    with Deployment(kind, workdir) as deployment:
        server = switchboard(deployment.url, 4, routing, workdir)
        try:
            return asyncio.run(_fanout(server, deployment, topics, seconds, kind, routing))
        finally:
            server.stop()


async def _fanout(server, deployment, topics, seconds, kind, routing) -> dict:
    counts, transports = await open_streams(server.port, topics, 10)
    # Warm-up: every worker publishes to every topic once or more (a cluster's topic count
    # is registered once per topic and worker, then every half key lifetime), and the last
    # SUBSCRIBEs are confirmed: the window measures the steady state.
    await publish([server.port], topics, 1000, 4 * len(topics) / 1000)
    await asyncio.sleep(2)
    workers = worker_pids(server)
    before = sum(counts)
    cpu_w, cpu_r, wall = cpu_seconds(workers), cpu_seconds(deployment.pids), time.monotonic()
    statuses = await publish([server.port], topics, 500, seconds)
    deadline = time.monotonic() + 10
    expected = statuses.get(201, 0) * 10
    while sum(counts) - before < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    cpu_w, cpu_r, wall = cpu_seconds(workers) - cpu_w, cpu_seconds(deployment.pids) - cpu_r, time.monotonic() - wall
    delivered = sum(counts) - before
    redis_status = [
        json.loads(urllib.request.urlopen(f"http://{HOST}:{server.port}/healthz", timeout=10).read())["redis"]
        for _ in range(8)
    ]
    warnings = (server.log_dir / f"{server.name}-{server.port}.log").read_text(errors="replace").count(" WARNING ")
    for transport in transports:
        transport.abort()
    return {
        "deployment": kind,
        "routing": routing,
        "streams": len(counts),
        "seconds": round(wall, 1),
        "published": statuses.get(201, 0),
        "refused": sum(v for k, v in statuses.items() if k != 201),
        "delivered": delivered,
        "expected": expected,
        "worker_cpu_s": round(cpu_w, 2),
        "redis_cpu_s": round(cpu_r, 2),
        "worker_us_per_delivery": round(cpu_w / max(delivered, 1) * 1e6, 1),
        "redis_us_per_publish": round(cpu_r / max(statuses.get(201, 1), 1) * 1e6, 1),
        # A worker's feeds cut and resynced in the window would inflate both CPU figures.
        "feed_reconnects": max(status["reconnects"] for status in redis_status),
        "log_warnings": warnings,
    }


def run_unserved(routing: str, unserved: int, seconds: float, workdir: Path) -> dict:
    with Deployment("single", workdir) as deployment:
        host_a = switchboard(deployment.url, 1, routing, workdir)
        host_b = switchboard(deployment.url, 2, routing, workdir)
        try:
            return asyncio.run(_unserved(host_a, host_b, unserved, seconds, routing))
        finally:
            host_a.stop()
            host_b.stop()


async def _unserved(host_a, host_b, unserved, seconds, routing) -> dict:
    served = [f"served{n}" for n in range(10)]
    others = [f"other{n}" for n in range(unserved)]
    counts, transports = await open_streams(host_a.port, served, 10)
    if others:  # warm-up, as in the fan-out
        await publish([host_b.port], others, 1000, 2 * len(others) / 1000)
    await asyncio.sleep(2)
    worker = worker_pids(host_a)
    before = sum(counts)
    cpu, wall = cpu_seconds(worker), time.monotonic()
    jobs = [publish([host_b.port], served, 50, seconds, connections=4)]
    if others:
        jobs.append(publish([host_b.port], others, 0.5 * unserved, seconds, connections=12))
    results = await asyncio.gather(*jobs)
    await asyncio.sleep(1)
    cpu, wall = cpu_seconds(worker) - cpu, time.monotonic() - wall
    for transport in transports:
        transport.abort()
    return {
        "routing": routing,
        "unserved_topics": unserved,
        "unserved_events_per_s": 0.5 * unserved,
        "served_published": results[0].get(201, 0),
        "delivered": sum(counts) - before,
        "unserved_published": results[1].get(201, 0) if others else 0,
        "worker_cpu_per_s": round(cpu / wall, 3),
    }


def median_row(rows: list[dict], key: str) -> dict:
    """The run whose ``key`` is the median, with every run's ``key`` alongside."""
    ordered = sorted(rows, key=lambda row: row[key])
    return {**ordered[len(ordered) // 2], f"{key}_runs": [row[key] for row in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["fanout", "unserved"])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--deployments", default="single,cluster")
    parser.add_argument("--routings", default="shared,topic")
    parser.add_argument("--runs", type=int, default=3, help="runs of each configuration; the median is reported")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaleout.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator on core 1, the servers on core 0
    results: dict = {
        "machine": os.uname().nodename,
        "cores": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds,
        "fanout": [],
        "unserved": [],
    }
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "fanout"):
            # Runs interleave the configurations, so a noisy minute on a shared machine hits
            # each of them rather than one.
            runs: dict[tuple[str, str], list[dict]] = {}
            for run in range(args.runs):
                for kind in args.deployments.split(","):
                    for routing in args.routings.split(","):
                        row = run_fanout(kind, routing, args.seconds, workdir / f"{kind}-{routing}-{run}")
                        print(json.dumps(row), flush=True)
                        runs.setdefault((kind, routing), []).append(row)
            results["fanout"] = [median_row(rows, "worker_us_per_delivery") for rows in runs.values()]
        if args.only in (None, "unserved"):
            runs = {}
            for run in range(args.runs):
                for routing in ("shared", "topic"):
                    for unserved in (0, 500, 2000):
                        row = run_unserved(routing, unserved, args.seconds, workdir / f"u-{routing}-{unserved}-{run}")
                        print(json.dumps(row), flush=True)
                        runs.setdefault((routing, str(unserved)), []).append(row)
            results["unserved"] = [median_row(rows, "worker_cpu_per_s") for rows in runs.values()]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for row in results["fanout"]:
        print(
            f"{row['deployment']:8} {row['routing']:7} worker {row['worker_us_per_delivery']:7.1f} us/delivery "
            f"(runs {row['worker_us_per_delivery_runs']}), redis {row['redis_us_per_publish']:6.1f} us/publish"
        )
    for row in results["unserved"]:
        print(
            f"{row['routing']:7} unserved topics {row['unserved_topics']:5}: worker {row['worker_cpu_per_s']:.3f} "
            f"CPU s/s (runs {row['worker_cpu_per_s_runs']})"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
