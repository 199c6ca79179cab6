"""Work queues in Redis Streams with consumer groups: several workers and hosts share each queue.

The contract is :mod:`app.hub.queues`'; tests/unit/test_queue_contract.py runs it here (one
Redis and a three-primary cluster) and in memory. The keys are in :mod:`app.hub.redis_queue_keys`;
each entry of a queue's stream holds: ``b`` the message (type, sender, data, headers, raw),
``s`` its size in bytes, ``t`` when it was first sent (ms), ``n`` how often it was delivered
before this copy, ``m`` the message's id (the first copy's entry id; absent on the first).

Each worker is one consumer of group ``g`` (named by its random token). For every queue it
has local consumers of, one *fetcher* greenlet reads new entries with ``XREADGROUP ...
BLOCK``, as many as its consumers have room for, and hands them out round robin; Redis
gives each entry to exactly one worker (the one that asks first). ``XACK`` (then ``XDEL``)
acknowledges, in a script that first checks that the entry is still this worker's.

Putting a message back (NACK, a consumer that ends, the ack timeout, a dead worker) is one
script: the entry is acknowledged and deleted, and a copy with ``n + 1`` is appended to the
queue, where the next ``XREADGROUP`` of any worker finds it at once (or, delivered
``max_deliveries`` times, to ``<name>.dlq``, which is then registered). The copy keeps the
message's id in ``m``, so a consumer sees the same id on every delivery; it goes to the back
of the queue.

Every worker runs a *reaper* every ``sweep_interval`` that, for every registered queue, puts
back the entries pending longer than the ack timeout (``XPENDING ... IDLE``) and everything
a dead worker held (its heartbeat key is gone: ``XINFO CONSUMERS``, then ``XPENDING`` of that
consumer), and removes the dead consumer from the group. So a worker killed with messages in
flight (SIGKILL) loses none of them: within its heartbeat's TTL they go to the consumers
still there. (This is ``XAUTOCLAIM``'s job, done as claim and re-append in one script so the
message is delivered through the ordinary ``XREADGROUP`` path, with its delivery count, to
whichever worker has room.) On one Redis that is one script for all queues; on a cluster the
registry and the heartbeats live in other slots than a queue, so they are read first (one
pipeline each) and one script per queue that needs it runs in its slot, given the dead.

A batch (a STOMP COMMIT) is one script, see :mod:`app.hub.redis_queue_batch`. On a cluster
every script touches one slot (:mod:`app.hub.redis_queue_keys`) and is routed by its keys; a
fetcher's blocking ``XREADGROUP`` has its own connection to the node owning its queue's slot,
made again (after re-reading the slot map) when that node fails or answers ``MOVED``
(:mod:`app.hub.redis_queue_clients`).
``max_queues`` is kept by the registry set, checked and added to by one script of its own
(:meth:`RedisQueues.register`) before a queue's first use.

The scripts themselves are in :mod:`app.hub.redis_queue_scripts`. Requires Redis 6.2
(``XPENDING ... IDLE``); a cluster, Redis 7.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from typing import Any, Sequence

import gevent
import gevent.event
import gevent.lock
import gevent.socket
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from ..events import Cursor, Event, extras_from_stored
from . import BackendUnavailable
from .batch import Publication
from .queues import Consumer, Delivery, NullQueueObserver, QueueFull, QueueLimits, QueueObserver, QueueStats, dlq_name
from .redis_queue_batch import commit_batch
from .redis_queue_clients import REDIRECTS, UNREACHABLE, connect, disconnect, fetch_connection, refresh
from .redis_queue_keys import QUEUE_EPOCH, QueueKeys
from .redis_queue_scripts import ACK, COMMIT, PUT_BACK, REAP, REAP_QUEUE, REGISTER, STATS, STATS_QUEUE
from .subscription import SubscriptionClosed

__all__ = ["RedisQueues"]

log = logging.getLogger(__name__)

_SCRIPTS = {
    "ack": ACK,
    "put_back": PUT_BACK,
    "reap": REAP,
    "reap_queue": REAP_QUEUE,
    "register": REGISTER,
    "stats": STATS,
    "stats_queue": STATS_QUEUE,
    "commit": COMMIT,
}


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
        url: the Redis URL (the event backend's; any node of a cluster).
        limits: bounds, ack timeout, deliveries before the dead-letter queue.
        observer: told of acks, redeliveries, dead letters and refusals.
        prefix: the key prefix (the event backend's).
        sweep_interval: seconds between reaper runs.
        heartbeat_ttl: seconds a worker's heartbeat lives without renewal: how soon a dead
            worker's messages go back.
        block_ms: how long one ``XREADGROUP`` waits (it is asked again right after).
        socket_timeout: seconds a command may take.
        cluster: True for a Redis Cluster, False for one server; None: asked at first use.
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
        cluster: bool | None = None,
    ):
        self.url = url
        self.limits = limits
        self.observer = observer or NullQueueObserver()
        self.prefix = prefix
        self.token = secrets.token_hex(8)  # this worker's consumer name in every group
        self.sweep_interval = sweep_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.block_ms = block_ms
        self._socket_timeout = socket_timeout
        self._options: dict[str, Any] = dict(
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._sentinels = sentinels
        self._sentinel_master = sentinel_master
        self._cluster = False if sentinels else cluster
        self.keys = QueueKeys(prefix, cluster=bool(self._cluster))
        self._redis: Any = None  # built at first use (in the worker, after the fork)
        self._fetch_pool: Any = None
        self._scripts: dict[str, Any] = {}
        self._locals: dict[str, _Local] = {}
        self._closed_reason: str | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._started = False
        self._connecting = gevent.lock.Semaphore()

    # -- life ----------------------------------------------------------------------------

    @property
    def cluster(self) -> bool:
        return self.keys.cluster

    def _connect(self) -> None:
        """Build the clients, once; on a URL of unknown kind ask it (``INFO cluster``).

        Raises:
            BackendUnavailable: Redis cannot be reached to ask.
        """
        with self._connecting:  # one client, though several greenlets ask first at once
            if self._redis is None:
                self._build_clients()

    def _build_clients(self) -> None:
        self._redis, self._fetch_pool, cluster = connect(
            self.url, self._cluster, self._sentinels, self._sentinel_master, self._options, self._socket_timeout
        )
        self._cluster = cluster
        self.keys = QueueKeys(self.prefix, cluster=cluster)
        self._scripts = {name: self._redis.register_script(source) for name, source in _SCRIPTS.items()}

    def _start(self) -> None:
        # Lazily, in the worker: the heartbeat exists before this worker first reads a group.
        self._connect()
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
        if self._redis is not None:
            try:
                self._redis.delete(self.keys.worker(self.token))
            except redis.RedisError:
                pass
        self._disconnect()

    def crash(self) -> None:
        """Stop dead, as a SIGKILL would: nothing released, nothing acknowledged (tests)."""
        self._closed_reason = "crashed"
        self._stop_greenlets()
        for local in self._locals.values():
            for consumer in local.consumers:
                consumer.close_reason = "crashed"
        self._disconnect()

    def _disconnect(self) -> None:
        disconnect(self._redis, self._fetch_pool)

    def _stop_greenlets(self) -> None:
        fetchers = [local.fetcher for local in self._locals.values() if local.fetcher is not None]
        gevent.killall(self._greenlets + fetchers, block=True, timeout=2)

    def _beat(self) -> None:
        self._redis.set(self.keys.worker(self.token), b"1", px=max(int(self.heartbeat_ttl * 1000), 100))

    def _heartbeat_forever(self) -> None:
        while True:
            gevent.sleep(self.heartbeat_ttl / 3)
            try:
                self._beat()
            except redis.RedisError as exc:
                log.warning("queue heartbeat failed: %s", exc)

    # -- sending ---------------------------------------------------------------------------

    def commit(self, hub, items: Sequence[Publication]) -> list[Event]:
        """Store a batch of queue messages and topic events in one script: all or nothing
        (see :func:`app.hub.redis_queue_batch.commit_batch`).

        Raises:
            QueueFull, TooManyTopics: a bound refused it (nothing stored).
            CrossSlotBatch: a cluster, and the batch spans slots (nothing stored).
            BackendUnavailable: Redis cannot be reached.
        """
        self._connect()
        return commit_batch(self, hub, items)

    def register(self, queue: str) -> None:
        """Count ``queue`` in the registry unless it is there (one script on the registry's key).

        Raises:
            QueueFull: a new queue, and the deployment holds ``max_queues``.
        """
        if not self._call("register", [self.keys.registry], [queue, self.limits.max_queues]):
            self.observer.refused("queues")
            raise QueueFull(queue, "queues", self.limits.max_queues)

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
        self.register(queue)
        try:
            self._redis.xgroup_create(self.keys.stream(queue), "g", id="0", mkstream=True)
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
            queue = consumer.queue
            done = bool(self._call("ack", [self.keys.stream(queue), self.keys.meta(queue)], [ref, self.token]))
            if done:
                self.observer.acked(consumer.queue, 1)
            return done
        outcome = self._put_back(consumer.queue, str(ref))
        return outcome != "not-yours"

    def _put_back(self, queue: str, entry_id: str) -> str:
        outcome = self._call("put_back", self.keys.of(queue), [entry_id, self.token, self.limits.max_deliveries])
        outcome = outcome.decode()
        self._count(queue, outcome)
        return outcome

    def _count(self, queue: str, outcome: str) -> None:
        if outcome == "back":
            self.observer.redelivered(queue, 1)
        elif outcome == "dead":
            self.observer.dead_lettered(queue, 1)
            # Registered after the move (a dead letter is never refused, max_queues or not).
            try:
                self._redis.sadd(self.keys.registry, dlq_name(queue))
            except redis.RedisError as exc:  # found again by the next dead letter or consumer
                log.warning("queue %s: registering its dead-letter queue failed: %s", queue, exc)

    def _fetch_forever(self, local: _Local) -> None:
        """Read new entries for this worker's consumers of one queue, and hand them out."""
        stream = self.keys.stream(local.name)
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
                        conn = fetch_connection(
                            self._redis, self._fetch_pool, self.keys.slot(local.name), self._options
                        )
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
                    if not conn.can_read(0) and conn._sock is not None:  # connected: it is not None
                        gevent.socket.wait_read(conn._sock.fileno(), self.block_ms / 1000 + 5)
                    reply = conn.read_response()
                    failures = 0
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the queue was deleted under us: make it again
                        self._ensure_queue(local.name)
                        continue
                    if not isinstance(exc, REDIRECTS):
                        raise
                    conn, failures = self._fetch_failed(local.name, conn, failures, exc)
                    continue
                except (*UNREACHABLE, OSError, socket.timeout) as exc:
                    conn, failures = self._fetch_failed(local.name, conn, failures, exc)
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

    def _fetch_failed(self, queue: str, conn, failures: int, exc: Exception) -> tuple[None, int]:
        """Drop the fetcher's connection, back off; on a cluster re-read which node serves
        what (a failover or a moved slot), so the next connection goes to the new owner."""
        if conn is not None:
            conn.disconnect()
        failures += 1
        if failures == 1:
            log.warning("queue %s: fetching failed (%s); retrying", queue, exc)
        gevent.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
        try:
            refresh(self._redis)
        except (*UNREACHABLE, OSError) as again:
            log.debug("queue %s: reading the cluster's slots failed: %s", queue, again)
        return None, failures

    def _hand_out(self, local: _Local, entry_id: str, flat: list) -> None:
        fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        delivery = Delivery(_event(local.name, entry_id, fields), int(fields.get("n", b"0")) + 1)
        with_room = [c for c in local.consumers if c.room > 0]
        if not with_room:  # a consumer left meanwhile: back for someone else
            self._put_back(local.name, entry_id)
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
                    self._put_back(local.name, entry_id)
                    moved += 1
                    local.room.set()
        timeout_ms = max(int(self.limits.ack_timeout * 1000), 1)
        if not self.cluster:
            reply = self._call("reap", [], [self.prefix, timeout_ms, self.limits.max_deliveries, 100])
            outcomes = [(reply[i].decode(), reply[i + 1].decode()) for i in range(0, len(reply), 2)]
        else:
            outcomes = self._reap_each(timeout_ms)
        for queue, outcome in outcomes:
            self._count(queue, outcome)
            moved += 1
        return moved

    def _reap_each(self, timeout_ms: int) -> list[tuple[str, str]]:
        """A cluster: read every registered queue's consumers and whether it holds an entry
        past the ack timeout, then the heartbeats of those consumers (keys of other slots; each
        read one pipeline, one round trip per shard), then run one script per queue that has
        a dead consumer or a late entry, in its slot, given the dead consumers' names."""
        queues = [raw.decode() for raw in self._redis_call(self._redis.smembers, self.keys.registry)]
        if not queues:
            return []
        pipe = self._redis.pipeline()
        for queue in queues:
            pipe.xinfo_consumers(self.keys.stream(queue), "g")
            pipe.xpending_range(self.keys.stream(queue), "g", "-", "+", 1, idle=timeout_ms)
        replies = self._redis_call(pipe.execute, raise_on_error=False)
        held: dict[str, list[str]] = {}
        for queue, consumers in zip(queues, replies[::2]):
            if not isinstance(consumers, Exception):  # else no stream or no group yet: nothing held
                held[queue] = [_text(c["name"]) for c in consumers]
        others = sorted({name for names in held.values() for name in names} - {self.token})
        pipe = self._redis.pipeline()
        for name in others:
            pipe.exists(self.keys.worker(name))
        alive = dict(zip(others, self._redis_call(pipe.execute))) if others else {}
        outcomes = []
        for queue, late in zip(queues, replies[1::2]):
            dead = [name for name in held.get(queue, ()) if name != self.token and not alive.get(name)]
            if dead or (late and not isinstance(late, Exception)):
                args = [timeout_ms, self.limits.max_deliveries, 100, *dead]
                outcomes += [(queue, o.decode()) for o in self._call("reap_queue", self.keys.of(queue), args)]
        return outcomes

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
        """Every queue of the deployment: waiting and in-flight messages."""
        self._connect()
        if not self.cluster:
            reply = self._call("stats", [], [self.prefix])
            rows = [(reply[i].decode(), reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]
        else:  # one script per queue, each in its slot
            rows = []
            for raw in self._redis_call(self._redis.smembers, self.keys.registry):
                length, pending = self._call("stats_queue", [self.keys.stream(raw.decode())], [])
                rows.append((raw.decode(), length, pending))
        return {name: QueueStats(max(int(length) - int(pending), 0), int(pending)) for name, length, pending in rows}

    def _call(self, script: str, keys: list, args: list):
        return self._redis_call(self._scripts[script], keys=keys, args=args)

    @staticmethod
    def _redis_call(command, *args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ResponseError as exc:
            if isinstance(exc, REDIRECTS):
                raise BackendUnavailable(f"Redis cannot serve now: {exc}") from exc
            raise
        except UNREACHABLE as exc:
            raise BackendUnavailable(f"Redis cannot be reached: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
