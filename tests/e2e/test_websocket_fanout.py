"""Fan-out on ``/ws``: 1,000 WebSocket subscribers on one gunicorn worker each receive
every one of 100 events, in order.

The clients run in a gevent subprocess (tests.support.wsclients.start_fanout), raw
sockets with buffered frame parsing, so the measurement is the server's, not pytest's.
"""

from __future__ import annotations

import json
import os
import time

import requests

from tests.support.timing import scaled, wait_until
from tests.support.wsclients import start_fanout

CLIENTS = 1000
EVENTS = 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_1000_subscribers_receive_every_event_in_order(server):
    topic = "fanout"
    fanout = start_fanout(server.url, CLIENTS, topic, EVENTS, timeout=60)
    try:
        ready = fanout.wait_ready(scaled(30))
        assert ready["ready"] == CLIENTS and ready["failed"] == 0, ready
        health = requests.get(f"{server.url}/healthz", timeout=scaled(5)).json()
        assert health["subscribers"] == CLIENTS

        (worker,) = server.worker_pids()
        cpu_before = cpu_seconds(worker)
        started = time.monotonic()
        with requests.Session() as http:
            for n in range(EVENTS):
                res = http.post(
                    f"{server.url}/api/topics/{topic}/events",
                    data=json.dumps({"data": {"n": n}}),
                    headers={"Content-Type": "application/json"},
                    timeout=scaled(10),
                )
                assert res.status_code == 201
        published = time.monotonic() - started
        report = fanout.wait_done(scaled(30))
        total = time.monotonic() - started
        cpu = cpu_seconds(worker) - cpu_before
    finally:
        fanout.stop()

    print(
        f"\nfan-out: {CLIENTS} clients subscribed in {ready['connect_seconds']}s; "
        f"{EVENTS} events published in {published:.2f}s; all {report['received']} deliveries "
        f"done {total:.2f}s after the first publish ({report['received'] / total:,.0f} messages/s); "
        f"latency p50 {report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms, "
        f"max {report['latency_ms']['max']} ms; {report['bytes_in']:,} bytes; "
        f"worker CPU {cpu:.2f}s ({cpu / report['received'] * 1e6:.1f} us per delivery, publishes included)"
    )
    assert report["done"], report
    assert report["errors"] == [], report
    assert report["received"] == CLIENTS * EVENTS
    assert report["disorder"] == 0, "every client saw 0..99 in order"
    assert report["complete"] == CLIENTS
    wait_until(
        lambda: requests.get(f"{server.url}/healthz", timeout=5).json()["subscribers"] == 0,
        timeout=10,
        message="all 1000 subscriptions released",
    )
