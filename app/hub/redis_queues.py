"""Work queues in Redis Streams with consumer groups: several workers and hosts share each queue.

The contract is :mod:`app.hub.queues`'; tests/unit/test_queue_contract.py runs it here and
in memory. Keys (``<p>`` the prefix, as the event backend's):

==========================  =============================================================
``<p>:q:<name>``            the queue: a Stream read through consumer group ``g``. Each
                            entry: ``b`` the message (type, sender, data, headers, raw),
                            ``s`` its size in bytes, ``t`` when it was first sent (ms),
                            ``n`` how often it was delivered before this copy, ``m`` the
                            message's id (the first copy's entry id; absent on the first).
``<p>:qm:<name>``           hash ``bytes``: the bytes the queue holds.
``<p>:queues``              the set of queues (for ``max_queues``, the metrics, the reaper).
``<p>:qw:<worker>``         a worker's heartbeat (``PX`` a few seconds, renewed): a worker
                            whose key is gone is dead, and what it held goes back.
==========================  =============================================================

Each worker is one consumer of group ``g`` (named by its random token). For every queue it
has local consumers of, one *fetcher* greenlet reads new entries with ``XREADGROUP ...
BLOCK``, as many as its consumers have room for, and hands them out round robin; Redis
gives each entry to exactly one worker (the one that asks first). ``XACK`` (then ``XDEL``)
acknowledges, in a script that first checks that the entry is still this worker's.

Putting a message back (NACK, a consumer that ends, the ack timeout, a dead worker) is one
script: the entry is acknowledged and deleted, and a copy with ``n + 1`` is appended to the
queue, where the next ``XREADGROUP`` of any worker finds it at once (or, delivered
``max_deliveries`` times, to ``<name>.dlq``). The copy keeps the message's id in ``m``, so
a consumer sees the same id on every delivery; it goes to the back of the queue.

Every worker runs a *reaper* every ``sweep_interval``: one script that, for every queue,
puts back the entries pending longer than the ack timeout (``XPENDING ... IDLE``) and
everything a dead worker held (its heartbeat key is gone: ``XINFO CONSUMERS``, then
``XPENDING`` of that consumer), and removes the dead consumer from the group. So a worker
killed with messages in flight (SIGKILL) loses none of them: within its heartbeat's TTL
they go to the consumers still there. (This is ``XAUTOCLAIM``'s job, done as claim and
re-append in one script so the message is delivered through the ordinary ``XREADGROUP``
path, with its delivery count, to whichever worker has room.)

A batch (:meth:`RedisQueues.commit`: a STOMP COMMIT, topics and queues mixed) is one script:
every bound is checked first (queue messages, bytes and count; the topic limit), then every
queue entry and topic event is appended (topics with the event backend's own append, so
history, trimming and the Pub/Sub fan-out are the same as a single publish).

The scripts themselves are in :mod:`app.hub.redis_queue_scripts`.

Unlike the event backend, this needs one Redis server or a Sentinel-managed primary, not a
Cluster: the scripts touch keys they compute, and a batch or the reaper spans many queues
(on a cluster every queue op is refused with a clear error, see :meth:`RedisQueues._check_not_cluster`).
Requires Redis 6.2 (``XPENDING ... IDLE``, ``XAUTOCLAIM``-era streams).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from typing import Sequence

import gevent
import gevent.event
import gevent.socket
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ..events import Cursor, Event, InvalidTopic, extras_from_stored, stored_extras
from . import BackendUnavailable, TooManyTopics
from .batch import Publication
from .queues import Consumer, Delivery, NullQueueObserver, QueueFull, QueueLimits, QueueObserver, QueueStats
from .redis import encode_body as _encode_body
from .redis_queue_scripts import ACK, COMMIT, PUT_BACK, REAP, STATS
from .subscription import SubscriptionClosed

__all__ = ["RedisQueues"]

log = logging.getLogger(__name__)

#: The epoch of queue message ids (``q-<ms>-<seq>``): a queue has no history to resume.
QUEUE_EPOCH = "q"


class _Local:
    """One queue's consumers in this worker, and the greenlet that fetches for them."""

    __slots__ = ("name", "consumers", "turn", "room", "fetcher", "deadlines")

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumers: list[Consumer] = []
        self.turn = 0
        self.room = gevent.event.Event()  # set when a consumer may have room again
        self.fetcher: gevent.Greenlet | None = None
        self.deadlines: dict[str, tuple[Consumer, str, float]] = {}  # entry id -> (holder, event id, deadline)


class RedisQueues:
    """The Redis queue store (see the module docstring).

    Args:
        url: the Redis URL (the event backend's).
        limits: bounds, ack timeout, deliveries before the dead-letter queue.
        observer: told of acks, redeliveries, dead letters and refusals.
        prefix: the key prefix (the event backend's).
        sweep_interval: seconds between reaper runs.
        heartbeat_ttl: seconds a worker's heartbeat lives without renewal: how soon a dead
            worker's messages go back.
        block_ms: how long one ``XREADGROUP`` waits (it is asked again right after).
        socket_timeout: seconds a command may take.
    """

    name = "redis"

    def __init__(
        self,
        url: str | None,
        limits: QueueLimits,
        observer: QueueObserver | None = None,
        *,
        prefix: str = "switchboard",
        sweep_interval: float = 1.0,
        heartbeat_ttl: float = 5.0,
        block_ms: int = 2000,
        socket_timeout: float = 5.0,
        sentinels: tuple[tuple[str, int], ...] = (),
        sentinel_master: str | None = None,
    ):
        self.url = url
        self.limits = limits
        self.observer = observer or NullQueueObserver()
        self.prefix = prefix
        self.token = secrets.token_hex(8)  # this worker's consumer name in every group
        self.sweep_interval = sweep_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.block_ms = block_ms
        options = dict(
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        if sentinels:  # the primary as the sentinels name it, followed through failovers
            sentinel = Sentinel(list(sentinels), socket_timeout=2.0, socket_connect_timeout=2.0, protocol=2)
            self._pool = SentinelConnectionPool(sentinel_master, sentinel, max_connections=32, **options)
            self._fetch_pool = SentinelConnectionPool(sentinel_master, sentinel, **options)
        else:
            self._pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=32, timeout=socket_timeout, **options
            )
            self._fetch_pool = redis.ConnectionPool.from_url(url, **options)  # one unpooled connection per fetcher
        self._redis = redis.Redis(connection_pool=self._pool)
        self._cluster: bool | None = None if not sentinels else False
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("ack", ACK),
                ("put_back", PUT_BACK),
                ("reap", REAP),
                ("stats", STATS),
                ("commit", COMMIT),
            )
        }
        self._locals: dict[str, _Local] = {}
        self._closed_reason: str | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._started = False

    # -- life ----------------------------------------------------------------------------

    def _check_not_cluster(self) -> None:
        """Refuse every queue op on a Redis Cluster (asked once, with ``INFO cluster``).

        Raises:
            InvalidTopic: the server is a cluster node (a 400 / an ERROR frame that says so).
        """
        if self._cluster is None:
            try:
                self._cluster = bool(self._redis.info("cluster").get("cluster_enabled"))
            except redis.RedisError as exc:
                raise BackendUnavailable(f"Redis cannot be reached: {exc}") from exc
        if self._cluster:
            raise InvalidTopic(
                "work queues need one Redis server or Sentinel; this deployment's Redis is a "
                "cluster, where only topics are available"
            )

    def _start(self) -> None:
        # Lazily, in the worker: the heartbeat exists before this worker first reads a group.
        self._check_not_cluster()
        if self._started:
            return
        self._started = True
        self._beat()
        self._greenlets = [gevent.spawn(self._heartbeat_forever), gevent.spawn(self._reap_forever)]

    def close(self, reason: str = "shutdown") -> None:
        """Close every local consumer (what they held goes back), stop, and say goodbye."""
        self._closed_reason = reason
        for local in list(self._locals.values()):
            for consumer in list(local.consumers):
                try:
                    consumer.close(reason)
                except BackendUnavailable:
                    pass  # the reaper of another worker puts them back once our heartbeat is gone
        self._stop_greenlets()
        try:
            self._redis.delete(self._worker_key())
        except redis.RedisError:
            pass
        self._pool.disconnect()
        self._fetch_pool.disconnect()

    def crash(self) -> None:
        """Stop dead, as a SIGKILL would: nothing released, nothing acknowledged (tests)."""
        self._closed_reason = "crashed"
        self._stop_greenlets()
        for local in self._locals.values():
            for consumer in local.consumers:
                consumer.close_reason = "crashed"
        self._pool.disconnect()
        self._fetch_pool.disconnect()

    def _stop_greenlets(self) -> None:
        fetchers = [local.fetcher for local in self._locals.values() if local.fetcher is not None]
        gevent.killall(self._greenlets + fetchers, block=True, timeout=2)

    def _worker_key(self) -> str:
        return f"{self.prefix}:qw:{self.token}"

    def _beat(self) -> None:
        self._redis.set(self._worker_key(), b"1", px=max(int(self.heartbeat_ttl * 1000), 100))

    def _heartbeat_forever(self) -> None:
        while True:
            gevent.sleep(self.heartbeat_ttl / 3)
            try:
                self._beat()
            except redis.RedisError as exc:
                log.warning("queue heartbeat failed: %s", exc)

    # -- sending ---------------------------------------------------------------------------

    def commit(self, hub, items: Sequence[Publication]) -> list[Event]:
        """Store a batch of queue messages and topic events in one script: all or nothing.

        Raises:
            QueueFull, TooManyTopics: a bound refused it (nothing stored).
            BackendUnavailable: Redis cannot be reached.
        """
        self._check_not_cluster()
        backend = hub.backend
        ops, bodies = [], []
        for item in items:
            body = _encode_body({"type": item.type, "sender": item.sender, "data": item.data, **_extras(item)})
            bodies.append(body)
            if item.kind == "queue":
                ops.append({"k": "q", "name": item.name, "b": body.decode("utf-8", "surrogatepass"), "s": _size(item)})
            else:  # the event backend's own append, its KEYS and ARGV (app/hub/redis/scripts.py)
                keys = [*backend._topic_keys(item.name), backend.keys.topics_for(item.name)]
                args = [
                    secrets.token_hex(6),
                    backend.history_size,
                    backend._ttl_ms,
                    backend.keys.channel(item.name),
                    item.name,
                    body.decode("utf-8", "surrogatepass"),
                    backend._key_lifetime_ms,
                    backend.history_bytes or 0,
                    backend.max_topics,
                    backend._publish_command,
                ]
                ops.append({"k": "t", "K": keys, "A": args})
        spec = {
            "prefix": self.prefix,
            "ops": ops,
            "max_queues": self.limits.max_queues,
            "max_messages": self.limits.max_messages,
            "max_bytes": self.limits.max_bytes,
            "max_topics": backend.max_topics,
            "topics_key": backend.keys.topics,
            "lifetime": backend._key_lifetime_ms,
        }
        reply = self._call("commit", [backend.keys.epoch("")], [secrets.token_hex(6), json.dumps(spec)])
        status = reply[0].decode()
        if status == "full":
            bound = reply[2].decode()
            self.observer.refused("queues" if bound == "queues" else f"queue_{bound}")
            raise QueueFull(reply[1].decode(), bound, int(reply[3]))
        if status == "topics":
            hub.observer.refused("topics")
            raise TooManyTopics(backend.max_topics, int(reply[1]) / 1000)
        epoch = backend._epoch_from(reply[1], "")  # one Redis: one epoch for every topic
        stored = []
        for item, raw_id in zip(items, reply[2:]):
            ms, seq = (int(part) for part in raw_id.decode().split("-"))
            if item.kind == "queue":
                stored.append(
                    Event(
                        Cursor(QUEUE_EPOCH, (ms, seq)),
                        item.name,
                        item.type,
                        item.data,
                        item.sender,
                        ms / 1000,
                        headers=item.headers,
                        raw=item.raw,
                    )
                )
            else:
                stored.append(
                    Event(
                        Cursor(epoch, (ms, seq)),
                        item.name,
                        item.type,
                        item.data,
                        item.sender,
                        ms / 1000,
                        headers=item.headers,
                        raw=item.raw,
                    )
                )
                hub.published += 1
                hub.observer.published(item.name)
        return stored

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, prefetch: int) -> Consumer:
        """A new local consumer of ``queue`` (see :meth:`app.hub.Hub.consume`)."""
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)
        try:
            self._start()
            self._ensure_queue(queue)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis cannot be reached: {exc}") from exc
        local = self._locals.get(queue)
        if local is None:
            local = self._locals[queue] = _Local(queue)
        consumer = Consumer(queue, prefetch, self._settle, self._closed)
        local.consumers.append(consumer)
        if local.fetcher is None or local.fetcher.dead:
            local.fetcher = gevent.spawn(self._fetch_forever, local)
        local.room.set()
        return consumer

    def _ensure_queue(self, queue: str) -> None:
        stream = f"{self.prefix}:q:{queue}"
        if not self._redis.sismember(f"{self.prefix}:queues", queue):
            if self._redis.scard(f"{self.prefix}:queues") >= self.limits.max_queues:
                self.observer.refused("queues")
                raise QueueFull(queue, "queues", self.limits.max_queues)
            self._redis.sadd(f"{self.prefix}:queues", queue)
        try:
            self._redis.xgroup_create(stream, "g", id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _closed(self, consumer: Consumer) -> None:
        local = self._locals.get(consumer.queue)
        if local is not None and consumer in local.consumers:
            local.consumers.remove(consumer)
            local.room.set()  # the fetcher looks again (and ends if no consumer is left)

    def _settle(self, consumer: Consumer, event_id: str, ref: object, how: str) -> bool:
        local = self._locals.get(consumer.queue)
        if local is not None:
            local.deadlines.pop(str(ref), None)
            local.room.set()
        if consumer.close_reason == "crashed":
            return False
        if how == "ack":
            done = bool(self._call("ack", [], [self.prefix, consumer.queue, ref, self.token]))
            if done:
                self.observer.acked(consumer.queue, 1)
            return done
        outcome = self._call(
            "put_back", [], [self.prefix, consumer.queue, ref, self.token, self.limits.max_deliveries]
        ).decode()
        self._count(consumer.queue, outcome)
        return outcome != "not-yours"

    def _count(self, queue: str, outcome: str) -> None:
        if outcome == "back":
            self.observer.redelivered(queue, 1)
        elif outcome == "dead":
            self.observer.dead_lettered(queue, 1)

    def _fetch_forever(self, local: _Local) -> None:
        """Read new entries for this worker's consumers of one queue, and hand them out."""
        stream = f"{self.prefix}:q:{local.name}"
        conn = None
        failures = 0
        try:
            while local.consumers and self._closed_reason is None:
                room = sum(max(c.room, 0) for c in local.consumers)
                if room <= 0:
                    local.room.clear()
                    local.room.wait(1.0)
                    continue
                try:
                    if conn is None:
                        conn = self._fetch_pool.make_connection()
                        conn.connect()
                    conn.send_command(
                        "XREADGROUP",
                        "GROUP",
                        "g",
                        self.token,
                        "COUNT",
                        room,
                        "BLOCK",
                        self.block_ms,
                        "STREAMS",
                        stream,
                        ">",
                    )
                    if not conn.can_read(0):
                        gevent.socket.wait_read(conn._sock.fileno(), self.block_ms / 1000 + 5)
                    reply = conn.read_response()
                    failures = 0
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the queue was deleted under us: make it again
                        self._ensure_queue(local.name)
                        continue
                    raise
                except (RedisConnectionError, RedisTimeoutError, OSError, socket.timeout) as exc:
                    if conn is not None:
                        conn.disconnect()
                    conn = None
                    failures += 1
                    if failures == 1:
                        log.warning("queue %s: fetching failed (%s); retrying", local.name, exc)
                    gevent.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
                    continue
                for entry_id, flat in reply[0][1] if reply else ():
                    self._hand_out(local, entry_id.decode(), flat)
        except Exception:  # a bug: log it; the reaper puts back what this worker holds
            log.error("queue %s: fetcher failed", local.name, exc_info=True)
        finally:
            if conn is not None:
                conn.disconnect()
            if local.fetcher is gevent.getcurrent():
                local.fetcher = None
            if not local.consumers and self._locals.get(local.name) is local:
                del self._locals[local.name]

    def _hand_out(self, local: _Local, entry_id: str, flat: list) -> None:
        fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        delivery = Delivery(_event(local.name, entry_id, fields), int(fields.get("n", b"0")) + 1)
        with_room = [c for c in local.consumers if c.room > 0]
        if not with_room:  # a consumer left meanwhile: back for someone else
            self._count(
                local.name,
                self._call(
                    "put_back", [], [self.prefix, local.name, entry_id, self.token, self.limits.max_deliveries]
                ).decode(),
            )
            return
        start = local.turn % len(local.consumers)
        order = local.consumers[start:] + local.consumers[:start]
        chosen = next(c for c in order if c.room > 0)
        local.turn = local.consumers.index(chosen) + 1
        local.deadlines[entry_id] = (chosen, delivery.event.id, time.monotonic() + self.limits.ack_timeout)
        chosen.give(delivery, entry_id)

    # -- the ack timeout and dead workers -----------------------------------------------------

    def reap(self) -> int:
        """Put back what this worker held past the ack timeout, then (every worker's job)
        what any worker held past it or held when it died. How many went back."""
        now = time.monotonic()
        moved = 0
        for local in list(self._locals.values()):
            for entry_id, (consumer, event_id, deadline) in list(local.deadlines.items()):
                if deadline <= now and consumer.take_back(event_id) is not None:
                    local.deadlines.pop(entry_id, None)
                    log.info(
                        "queue %s: message %s not acknowledged within %g s; put back",
                        local.name,
                        event_id,
                        self.limits.ack_timeout,
                    )
                    outcome = self._call(
                        "put_back", [], [self.prefix, local.name, entry_id, self.token, self.limits.max_deliveries]
                    ).decode()
                    self._count(local.name, outcome)
                    moved += 1
                    local.room.set()
        reply = self._call(
            "reap", [], [self.prefix, max(int(self.limits.ack_timeout * 1000), 1), self.limits.max_deliveries, 100]
        )
        for i in range(0, len(reply), 2):
            self._count(reply[i].decode(), reply[i + 1].decode())
            moved += 1
        return moved

    def _reap_forever(self) -> None:
        while True:
            gevent.sleep(self.sweep_interval)
            try:
                self.reap()
            except BackendUnavailable:
                pass  # said once by _call; the next round tries again
            except Exception:
                log.error("reaping queues failed", exc_info=True)

    # -- the rest ----------------------------------------------------------------------------

    def stats(self) -> dict[str, QueueStats]:
        """Every queue of the deployment: waiting and in-flight messages (none on a cluster)."""
        try:
            self._check_not_cluster()
        except InvalidTopic:
            return {}
        reply = self._call("stats", [], [self.prefix])
        stats = {}
        for i in range(0, len(reply), 3):
            length, pending = int(reply[i + 1]), int(reply[i + 2])
            stats[reply[i].decode()] = QueueStats(max(length - pending, 0), pending)
        return stats

    def _call(self, script: str, keys: list, args: list):
        try:
            return self._scripts[script](keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            raise BackendUnavailable(f"Redis cannot be reached: {exc}") from exc


def _extras(item: Publication) -> dict:
    return stored_extras(item.headers, item.raw)


def _size(item: Publication) -> int:
    probe = Event(
        Cursor("0", (0,)), item.name, item.type, item.data, item.sender, 0.0, headers=item.headers, raw=item.raw
    )
    return probe.size


def _event(queue: str, entry_id: str, fields: dict) -> Event:
    body = json.loads(fields["b"])
    first = fields.get("m")
    ms, seq = (int(part) for part in (first.decode() if first else entry_id).split("-"))
    sent = int(fields.get("t", b"0")) / 1000 or ms / 1000
    return Event(
        Cursor(QUEUE_EPOCH, (ms, seq)),
        queue,
        body["type"],
        body["data"],
        body["sender"],
        sent,
        **extras_from_stored(body),
    )
