"""Churn: clients of every transport come and go at random while events flow.

100 clients (20 per transport: polling, long polling, SSE, ``/ws``, STOMP) run in one
gevent subprocess (``tests.support.wsclients.start_churn``), so the test process is
never the bottleneck. For ``CHURN_SECONDS`` an HTTP publisher in that subprocess
publishes ``RATE`` events a second; every client reads for a random lifetime, leaves
(a TCP reset, a bare FIN, a WebSocket closing handshake, a STOMP DISCONNECT, an
unsubscribe and resubscribe on the same socket, a long poll abandoned while parked),
stays away a random while and comes back with its cursor. At the end every client
must hold every event exactly once and in order, with no gap: history (1000 events)
holds the whole run, so a gap would be the server's fault too.

The server must come out of it whole: no traceback in its log, the same worker, and
no subscription left behind once the clients are gone.

``SWITCHBOARD_CHURN_SECONDS`` sets the run's length (default 30; the event count stays
within history); ``SWITCHBOARD_TEST_TIME_SCALE`` stretches every bound.
"""

from __future__ import annotations

import os
import re

import pytest
import requests

from tests.support.timing import scaled, wait_until
from tests.support.wsclients import CHURN_TRANSPORTS, start_churn

CHURN_SECONDS = float(os.environ.get("SWITCHBOARD_CHURN_SECONDS", "30"))
RATE = 30.0  # events per second
HISTORY = 1000
# The baseline event plus the run's must fit in history: a client away at the start
# resumes from the baseline's cursor.
COUNT = min(int(CHURN_SECONDS * RATE), HISTORY - 100)

# Short heartbeats and long-poll timeouts so an abandoned stream or poll is released
# within seconds and the leak check below need not wait for the 15 s/25 s defaults.
SERVER_ENV = {
    "SWITCHBOARD_TICKS": "0",
    "SWITCHBOARD_SSE_HEARTBEAT": "1",
    "SWITCHBOARD_LONGPOLL_TIMEOUT": "5",
    "SWITCHBOARD_HISTORY_SIZE": str(HISTORY),
}
SERVER_FAILURES = re.compile(r"Traceback|Error handling request|unhandled error|\" 500 ")


def run_churn(server, clients: dict[str, int], count: int, seed: int) -> dict:
    churn = start_churn(server.url, "churn", clients, count=count, rate=RATE, timeout=30, seed=seed)
    try:
        return churn.wait_done(count / RATE + scaled(30) + scaled(30))
    finally:
        churn.stop()


def assert_every_event_once_in_order(report: dict, clients: dict[str, int]) -> None:
    assert report["published"] == report["count"] and not report["publish_errors"], report
    for transport, n in clients.items():
        figures = report["transports"][transport]
        assert figures["errors"] == [], (transport, figures)
        assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["gaps"] == 0, (transport, figures)
        assert figures["complete"] == n, (transport, figures)
        assert figures["received"] == n * report["count"], (transport, figures)
        # It was churn: every client came back several times, and some left abruptly.
        assert figures["min_sessions"] >= 3, (transport, figures)
        assert figures["abrupt"] > 0, (transport, figures)


def assert_server_whole(server, worker_pids: list[int]) -> None:
    log = server.log_path.read_text(errors="replace")
    assert not SERVER_FAILURES.search(log), log[-4000:]
    assert server.worker_pids() == worker_pids, "a worker died and was replaced"


def subscriptions(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=scaled(5)).text
    match = re.search(r"^switchboard_subscriptions(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert match, f"no switchboard_subscriptions in /metrics:\n{text[:2000]}"
    return float(match.group(1))


@pytest.mark.soak
def test_churn_every_transport_loses_and_duplicates_nothing(start_server):
    server = start_server(SERVER_ENV)
    workers = server.worker_pids()
    clients = {transport: 20 for transport in CHURN_TRANSPORTS}

    report = run_churn(server, clients, COUNT, seed=11)

    assert_every_event_once_in_order(report, clients)
    # Every client is gone: abandoned streams and polls release their subscriptions
    # (SSE at its next heartbeat, long polls at their timeout).
    wait_until(
        lambda: requests.get(f"{server.url}/healthz", timeout=scaled(5)).json()["subscribers"] == 0,
        timeout=15,
        interval=0.2,
        message="every subscription released",
    )
    assert_server_whole(server, workers)


@pytest.mark.soak
@pytest.mark.redis
def test_churn_with_redis_and_two_workers(start_server, tmp_path):
    from tests.support.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as redis_server:
        server = start_server({**SERVER_ENV, "SWITCHBOARD_REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"})
        workers = sorted(server.worker_pids())
        assert len(workers) == 2
        clients = {transport: 10 for transport in CHURN_TRANSPORTS}

        report = run_churn(server, clients, count=min(COUNT, int(10 * RATE)), seed=12)

        assert_every_event_once_in_order(report, clients)
        # Both workers' gauges, summed over live processes (prometheus multiprocess).
        wait_until(
            lambda: subscriptions(server.url) == 0,
            timeout=15,
            interval=0.2,
            message="every subscription released in both workers",
        )
        assert_server_whole(server, workers)
        server.stop()
