"""Prometheus metrics: what is open, what flowed, what went wrong.

One :class:`Metrics` object per application (built by ``create_app``), with its own
registry, so tests that build several apps never collide. Under gunicorn the values are
shared across workers through prometheus-client's multiprocess mode: gunicorn.conf.py
sets ``PROMETHEUS_MULTIPROC_DIR`` in the master before any worker starts, and
``/metrics`` then aggregates every live worker's files.

The hub reports through :class:`HubObserver` (it knows nothing of Prometheus); the
transports call the ``Metrics`` methods directly.
"""

from __future__ import annotations

import os
import struct
import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

TRANSPORTS = ("polling", "long-polling", "sse", "websocket", "stomp")
# The streaming transports, which the delivery layer (app/delivery/) writes for.
STREAMING = ("sse", "websocket", "stomp")
# The ways a client publishes (switchboard_publishes_total{transport}).
PUBLISH_TRANSPORTS = ("http", "websocket", "stomp")
# Delivery latency buckets, in seconds: from a loopback write to a worker that fell behind.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The application's metrics. Names follow Prometheus conventions (``_total`` counters)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge(
            "switchboard_open_connections",
            "Open streaming connections (SSE, WebSocket, STOMP) and parked long polls",
            ["transport"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.subscriptions = Gauge(
            "switchboard_subscriptions", "Live hub subscriptions", multiprocess_mode="livesum", registry=r
        )
        self.long_polls_parked = Gauge(
            "switchboard_long_polls_parked",
            "Long-poll requests waiting for an event",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_high_water = Gauge(
            "switchboard_queue_depth_high_water",
            "Deepest any subscriber queue has been",
            multiprocess_mode="max",
            registry=r,
        )
        self.backend_up = Gauge(
            "switchboard_backend_up",
            "1 when the event store (memory or Redis) is reachable",
            ["backend"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.published = Counter("switchboard_events_published", "Events published (any transport)", registry=r)
        self.publishes = Counter(
            "switchboard_publishes",
            "Events published by clients, by the transport they came in on "
            "(http, websocket, stomp); server producers are only in switchboard_events_published_total",
            ["transport"],
            registry=r,
        )
        self.delivered = Counter("switchboard_events_delivered", "Events written to clients", ["transport"], registry=r)
        self.replayed = Counter(
            "switchboard_events_replayed", "Events delivered from history (resume or catch-up)", registry=r
        )
        self.gaps = Counter(
            "switchboard_gaps", "Gaps signalled to clients (history lost or another epoch)", ["kind"], registry=r
        )
        self.slow_consumer_drops = Counter(
            "switchboard_slow_consumer_drops", "Subscribers dropped for falling behind history", registry=r
        )
        self.stomp_errors = Counter(
            "switchboard_stomp_errors", "STOMP ERROR frames sent, by kind", ["kind"], registry=r
        )
        self.limit_rejections = Counter(
            "switchboard_limit_rejections", "Requests or messages refused by a limit", ["limit"], registry=r
        )
        self.auth_refusals = Counter(
            "switchboard_auth_refusals",
            "Requests, ops and frames refused by access control, by error code and transport",
            ["code", "transport"],
            registry=r,
        )
        self.auth_hook = Counter(
            "switchboard_auth_hook_decisions",
            "Decision-hook answers: allow, deny, error (failed closed), cached (answered from the cache)",
            ["result"],
            registry=r,
        )
        self.presence = Counter(
            "switchboard_presence_events",
            "Presence events announced (join: a user's first connection "
            "to a topic in the deployment, leave: their last one ended or expired)",
            ["action"],
            registry=r,
        )
        # Memory: one worker's topics; Redis: the deployment's, the same in every worker (so max).
        self.topics = Gauge(
            "switchboard_topics",
            "Topics the event store holds (set when /metrics is read)",
            multiprocess_mode="livemax",
            registry=r,
        )
        # Redis only: the live feeds (one per primary: "main" off a cluster, host:port on one).
        self.redis_shard_up = Gauge(
            "switchboard_redis_shard_up",
            "1 while this worker's Pub/Sub connection to the shard is subscribed "
            "with every topic it routes there confirmed",
            ["shard"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.redis_topics_routed = Gauge(
            "switchboard_redis_topics_routed",
            "Topics the workers subscribe to on Redis (per-topic routing: the topics with a local subscriber)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.redis_resubscribes = Counter(
            "switchboard_redis_resubscribes",
            "Topic subscriptions sent again after a cut of a Pub/Sub connection",
            registry=r,
        )
        self.redis_reconnects = Counter(
            "switchboard_redis_reconnects", "Pub/Sub connections that came back after a cut", registry=r
        )
        self.redis_failovers = Counter(
            "switchboard_redis_failovers",
            "Failovers seen: a new primary behind Sentinel, or slots of routed "
            "topics that moved to another cluster node",
            registry=r,
        )
        self.delivery_latency = Histogram(
            "switchboard_delivery_latency_seconds",
            "From an event being stored to its bytes being handed to the "
            "socket, by transport; observed once per delivery round (the oldest event of the round), not per event",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Work queues (app/hub/queues.py). Depth and in-flight are read from the queue store
        # when /metrics is scraped: with Redis every worker reads the same deployment-wide
        # numbers, so the most recent reading is the one shown.
        self.work_queue_depth = Gauge(
            "switchboard_queue_depth",
            "Messages waiting in a work queue for a consumer",
            ["queue"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.work_queue_in_flight = Gauge(
            "switchboard_queue_in_flight",
            "Messages of a work queue given to a consumer, not yet acknowledged",
            ["queue"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.queue_acked = Counter(
            "switchboard_queue_acked", "Queue messages acknowledged (auto mode: written)", ["queue"], registry=r
        )
        self.queue_redeliveries = Counter(
            "switchboard_queue_redeliveries",
            "Queue messages put back for another consumer (NACK, disconnect, crashed worker, ack timeout)",
            ["queue"],
            registry=r,
        )
        self.queue_dead_lettered = Counter(
            "switchboard_queue_dead_lettered",
            "Queue messages moved to <queue>.dlq after their last delivery",
            ["queue"],
            registry=r,
        )
        self._queues_shown: set[str] = set()
        self._high_water = 0
        self._redis_counts = {"resubscribes": 0, "reconnects": 0, "failovers": 0}
        # Every labelled series of the known transports exists from start-up, at 0, so a
        # dashboard's rate() has a series to work on before the first event flows.
        for transport in TRANSPORTS:
            self.connections.labels(transport)
            self.delivered.labels(transport)
        for transport in STREAMING:
            self.delivery_latency.labels(transport)
        for transport in PUBLISH_TRANSPORTS:
            self.publishes.labels(transport)
        for kind in ("resume", "slow"):
            self.gaps.labels(kind)

    # -- called by transports -----------------------------------------------------------

    @contextmanager
    def connection(self, transport: str) -> Iterator[None]:
        """Count an open connection of ``transport`` for the duration of the block."""
        gauge = self.connections.labels(transport)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def queue_depth(self, depth: int) -> None:
        """Record a subscriber queue depth; only a new maximum is written."""
        if depth > self._high_water:
            self._high_water = depth
            self.queue_high_water.set(depth)

    def show_queues(self, stats: dict) -> None:
        """Set the queue gauges from ``{queue: QueueStats}``; a queue gone since shows 0."""
        for name in self._queues_shown - set(stats):
            self.work_queue_depth.labels(name).set(0)
            self.work_queue_in_flight.labels(name).set(0)
        for name, stat in stats.items():
            self.work_queue_depth.labels(name).set(stat.depth)
            self.work_queue_in_flight.labels(name).set(stat.in_flight)
        self._queues_shown = set(stats)

    def watch_backend(self, backend, interval: float = 1.0):
        """Keep ``switchboard_backend_up{backend}`` current from a greenlet, every ``interval``.

        Under gunicorn each worker reports its own view (the gauge's multiprocess mode is
        ``livemin``: 0 if any live worker has lost Redis). Setting it only when /metrics
        is scraped would leave a stale value in every worker that was not scraped.
        ``backend.healthy`` is a flag the backend keeps, so this costs no I/O.

        Returns:
            The greenlet (kill it to stop watching).
        """
        import gevent

        gauge = self.backend_up.labels(backend.name)
        details = getattr(backend, "status", None)  # Redis: shards and counters, no I/O either

        def watch():
            while True:
                gauge.set(1 if backend.healthy else 0)
                if details is not None:
                    self.redis_status(details())
                gevent.sleep(interval)

        return gevent.spawn(watch)

    def redis_status(self, status: dict) -> None:
        """Copy the Redis backend's state into the gauges, and its counters' growth since the
        last look into the counters (the backend counts; Prometheus wants increments)."""
        for shard in status.get("shards", ()):
            self.redis_shard_up.labels(shard["node"]).set(1 if shard["state"] == "up" else 0)
        self.redis_topics_routed.set(status.get("topics_routed", 0))
        for name, counter in (
            ("resubscribes", self.redis_resubscribes),
            ("reconnects", self.redis_reconnects),
            ("failovers", self.redis_failovers),
        ):
            now = status.get(name, 0)
            if now > self._redis_counts[name]:
                counter.inc(now - self._redis_counts[name])
                self._redis_counts[name] = now

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric (all workers' under gunicorn)."""
        if multiprocess_enabled():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            for attempt in range(5):
                try:
                    return generate_latest(registry), CONTENT_TYPE_LATEST
                except struct.error:
                    # A worker that is starting has created its file but not yet sized it
                    # (prometheus-client opens, then truncates): read again in a moment.
                    if attempt == 4:
                        raise
                    time.sleep(0.01 * (attempt + 1))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class HubObserver:
    """Adapts the hub's events to metrics; the hub calls these and imports nothing here."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def subscribed(self, topic: str) -> None:
        self.metrics.subscriptions.inc()

    def unsubscribed(self, topic: str, reason: str) -> None:
        self.metrics.subscriptions.dec()
        if reason == "slow consumer":
            self.metrics.slow_consumer_drops.inc()

    def published(self, topic: str) -> None:
        self.metrics.published.inc()

    def gap(self, topic: str, slow: bool) -> None:
        self.metrics.gaps.labels("slow" if slow else "resume").inc()

    def replayed(self, count: int) -> None:
        self.metrics.replayed.inc(count)

    def queue_depth(self, depth: int) -> None:
        self.metrics.queue_depth(depth)

    def refused(self, limit: str) -> None:
        self.metrics.limit_rejections.labels(limit).inc()

    def presence(self, topic: str, action: str) -> None:
        self.metrics.presence.labels(action).inc()


class QueueObserver:
    """Adapts the queue store's events to metrics (app/hub/queues.py imports nothing here)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def acked(self, queue: str, count: int) -> None:
        self.metrics.queue_acked.labels(queue).inc(count)

    def redelivered(self, queue: str, count: int) -> None:
        self.metrics.queue_redeliveries.labels(queue).inc(count)

    def dead_lettered(self, queue: str, count: int) -> None:
        self.metrics.queue_dead_lettered.labels(queue).inc(count)

    def refused(self, limit: str) -> None:
        self.metrics.limit_rejections.labels(limit).inc()
