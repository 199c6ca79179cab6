"""The Redis backend: history in one Stream per topic, live fan-out through Pub/Sub, on one
server, behind Sentinel, or on a cluster.

Several gunicorn workers, on one host or many, share one hub through Redis (DESIGN.md §1).
No sticky sessions are needed: every worker reads the same history and hears the events of
the topics it serves.

Numbering. A topic's stream ids are ``<ms>-<n>``: ``ms`` is Redis's clock at the append
(never going backwards within the topic), ``n`` the event's number in the topic, 1, 2, 3...
A read after cursor ``n`` must start with event ``n + 1``, or something between was trimmed:
gap detection is exact. The cursor is ``<epoch>-<ms>-<n>``; the epoch is created with "set if
absent" by the first script that finds none, so after a FLUSHALL (or a Redis that restarted
without its data) old cursors are answered with a gap, never matched by number. On a cluster
the epoch is per slot (a shard that restarts empty ends only its own slots' epochs).

Bounds. An append trims by count (``XADD ... MAXLEN ~``) and by age (``XTRIM MINID ~``); both
are approximate, so the reads apply both exactly. The byte bound is exact: each entry records
where it starts in the topic's byte count (field ``o``), and the append trims the entries
that start before ``bytes - history_bytes``. The newest event always stays.

Forgetting. A topic's keys expire a TTL plus a second after its last append: a topic that
comes back starts a new life numbered from 1, and its meta's ``born`` tells a cursor of the
old life (a gap). ``SWITCHBOARD_MAX_TOPICS`` counts the deployment's topics in one sorted
set: inside the append script on one server (exact); on a cluster, where that set lives in a
slot of its own, in a separate step before a topic's first append from this process and again
every half key lifetime while it publishes there (see :meth:`RedisBackend._count_topic`).

Atomicity. Each operation is one Lua script on one topic's slot (:mod:`app.hub.redis.scripts`):
an append stores the event *and* publishes it (with its id) in one step, so no subscriber
hears an event that history lacks, and every worker hears a topic's events in stream order.

Live fan-out (:mod:`app.hub.redis.feed`, :mod:`app.hub.redis.router`). Per-topic routing (the
default): a worker subscribes to ``<p>:events:{topic}`` while it has local subscribers of the
topic, so it spends nothing on the others; on a cluster with SSUBSCRIBE on the shard that owns
the topic, which is the only one an SPUBLISH costs. Shared routing (``routing="shared"``, the
former design, kept for comparison): one channel that every worker hears in full. Events reach
even the publishing worker's own subscribers through Redis, not directly: a local shortcut
could overtake another worker's earlier event still in flight.

Failures. A command that cannot reach Redis raises :class:`~app.hub.BackendUnavailable`
(HTTP 503 with Retry-After); so does an append that ``min_replicas`` replicas did not
confirm in time. Feeds reconnect and resync their topics from history.

Requires Redis 6.2 or newer (``XADD MINID``, exclusive ``XRANGE`` bounds); a cluster, Redis 7
(sharded Pub/Sub).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any, Callable

from ...events import Cursor, Event, RawBody, extras_from_stored, stored_extras
from .. import BackendUnavailable, TooManyTopics
from .client import RedisClient, RedisTarget
from .feed import Feed, FeedHooks
from .keys import KeySpace
from .presence import RedisPresence
from .router import Router

log = logging.getLogger(__name__)

_MAX_COUNTED = 100_000  # topics whose count this process remembers (cluster topic limit)


class RedisBackend(RedisPresence):
    """History in Redis Streams, live delivery through this process's feeds.

    Nothing connects before :meth:`start` (the hub calls it), so a gunicorn worker builds its
    own connections after the fork.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (any node of a cluster); not
            needed behind Sentinel.
        history_size: events kept per topic.
        history_ttl: seconds an event is kept (by Redis's clock).
        history_bytes: bytes of history kept per topic (stored bodies). ``None``: no bound.
        max_topics: topics the deployment holds at once; an append that would start one
            more raises :class:`~app.hub.TooManyTopics`. 0: no limit (nor count).
        prefix: the start of every key and channel; deployments sharing one Redis need
            different prefixes.
        socket_timeout: seconds a command may take before it counts as a failure.
        connect_timeout: seconds to establish a connection; also the longest a first
            subscriber of a topic waits for its SUBSCRIBE to be confirmed.
        max_connections: command connections per process (per node on a cluster).
        ping_interval: seconds of Pub/Sub silence after which a feed PINGs; no answer within
            as long again means the connection is dead.
        reconnect_base: first reconnect delay in seconds (doubling, with jitter).
        reconnect_cap: the longest reconnect delay in seconds.
        cluster: True for a Redis Cluster, False for one server, None: ask it at start.
        sentinels: ``(host, port)`` of the sentinels; with ``sentinel_master``, the primary
            is found (and followed through failovers) through them.
        sentinel_master: the name the sentinels know the primary by.
        min_replicas: an append is acknowledged only once this many replicas have it
            (``WAIT``, at most ``replica_timeout`` seconds; else 503).
        replica_timeout: seconds an append waits for its replicas.
        routing: ``"topic"`` (a channel per topic) or ``"shared"`` (one channel for all).
    """

    name = "redis"

    def __init__(
        self,
        url: str | None,
        history_size: int,
        history_ttl: float,
        *,
        history_bytes: int | None = None,
        max_topics: int = 0,
        prefix: str = "switchboard",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_connections: int = 64,
        ping_interval: float = 5.0,
        reconnect_base: float = 0.05,
        reconnect_cap: float = 2.0,
        cluster: bool | None = None,
        sentinels: tuple[tuple[str, int], ...] = (),
        sentinel_master: str | None = None,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        routing: str = "topic",
    ):
        if routing not in ("topic", "shared"):
            raise ValueError(f"routing must be 'topic' or 'shared', not {routing!r}")
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.history_bytes = history_bytes
        self.max_topics = max_topics
        self.prefix = prefix
        self.routing = routing
        self.epoch = ""  # the epoch last seen (the only one off a cluster); /healthz shows it
        self.epochs: dict[str, str] = {}  # epoch key -> the epoch this process knows
        self.dead_epochs: set[str] = set()  # epochs that ended (Redis was flushed)
        self.ping_interval = ping_interval
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self._ttl_ms = max(int(history_ttl * 1000), 1)
        # An idle topic's keys expire a second after its last event has: until then a
        # cursor into it is judged exactly (nothing missed, or a gap); after, it is a gap.
        self._key_lifetime_ms = self._ttl_ms + 1000
        self._connect_timeout = connect_timeout
        self._token = secrets.token_hex(16)  # this process's identity as a lock owner
        self._held_locks: set[str] = set()
        self._counted: dict[str, float] = {}  # cluster topic limit: topic -> when this process counted it
        self.client = RedisClient(
            RedisTarget(url, cluster, tuple(sentinels), sentinel_master),
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
        )
        self.keys = KeySpace(prefix, cluster=bool(cluster), per_topic=routing == "topic")
        self.router: Router | None = None
        self._deliver: Callable[[Event], None] = lambda event: None
        self._resync: Callable[..., int] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    def set_resync(self, resync: Callable[..., int]) -> None:
        """Take the hub's :meth:`~app.hub.Hub.resync_all`, called after each (re)subscribe."""
        self._resync = resync

    def start(self, deliver: Callable[[Event], None]) -> None:
        """Connect, and start one feed per primary, which hand each event heard to ``deliver``.

        Waits up to the connect timeout for the feeds, so that a request right after start-up
        already has a live feed; if Redis is down the process starts anyway (unhealthy,
        publishes answered 503) and the feeds keep trying.
        """
        self._deliver = deliver
        if self.router is not None:
            return  # started already (a second hub on this backend): only the receiver changes
        self.client.connect()
        if self.client.mode == "cluster" and not self.keys.cluster:
            self.keys = KeySpace(self.prefix, cluster=True, per_topic=self.routing == "topic")
        self.router = Router(self.client, self.keys, self._make_feed)
        self.router.start()
        self.router.wait_whole(self._connect_timeout)

    def _make_feed(self, node: str) -> Feed:
        router = self.router
        assert router is not None, "feeds are made by the router, which start() builds first"
        hooks = FeedHooks(
            connect=lambda: self.client.listen_connection(node),
            connected_to=self.client.connected_to,
            clock=lambda: self.client.time_ms(node),
            position=self._position,
            epoch_of=self._epoch_of,
            resync=self._resync_topics,
            deliver=lambda event: self._deliver(event),
            dead_epochs=self.dead_epochs,
            lost_topic=router.lost,
            cut=router.cut,
        )
        return Feed(
            node,
            self.keys,
            hooks,
            sharded=self.client.mode == "cluster",
            ping_interval=self.ping_interval,
            reconnect_base=self.reconnect_base,
            reconnect_cap=self.reconnect_cap,
            confirm_timeout=self._connect_timeout,
        )

    def close(self) -> None:
        """Stop the feeds, give up held locks, close the connections."""
        self._closed = True
        for name in list(self._held_locks):
            try:
                self.release_lock(name)
            except Exception:  # best effort: the lock also expires by itself
                log.debug("could not release lock %s", name, exc_info=True)
        if self.router is not None:
            self.router.close()
        self.client.close()

    @property
    def healthy(self) -> bool:
        """True while every feed is subscribed and the last command reached Redis."""
        return self.router is not None and self.router.whole and self.client.commands_ok

    def status(self) -> dict:
        """The mode, each feed (shard) and the counters, for /healthz and /metrics."""
        router = self.router
        return {
            "mode": self.client.mode,
            "routing": self.routing,
            "primary": self.client.primary,
            "shards": router.status() if router else [],
            "topics_routed": router.topics_routed if router else 0,
            "resubscribes": router.resubscribes if router else 0,
            "reconnects": self.reconnects,
            "failovers": self.client.failovers,
            "min_replicas": self.client.min_replicas,
        }

    @property
    def reconnects(self) -> int:
        """Times a feed came back after a cut."""
        return self.router.reconnects if self.router else 0

    @property
    def received(self) -> int:
        """Messages the feeds have read."""
        return self.router.received if self.router else 0

    # -- the hub's interest (per-topic routing) -------------------------------------------

    def watch(self, topic: str) -> None:
        """This process has a subscriber of ``topic``: carry it. Returns once Redis confirmed
        the subscription (bounded by the connect timeout), before the subscriber reads history."""
        if self.router is not None:
            self.router.watch(topic)

    def unwatch(self, topic: str) -> None:
        """The last local subscriber of ``topic`` left: stop hearing it."""
        if self.router is not None:
            self.router.unwatch(topic)

    @property
    def wildcards(self) -> bool:
        """Whether wildcard subscriptions can be served: not on a cluster with per-topic
        routing (sharded Pub/Sub has no pattern subscription, and a classic PUBLISH of every
        event to every node is what sharding avoids)."""
        return not (self.keys.cluster and self.keys.per_topic)

    def watch_pattern(self, pattern: str) -> None:
        """A local wildcard subscription of ``pattern`` starts: hear every topic it may match
        (PSUBSCRIBE; shared routing hears everything already). Returns once Redis confirmed it."""
        if self.router is not None and self.keys.per_topic and not self.keys.cluster:
            self.router.watch_pattern(self.keys.channel_glob(pattern))

    def unwatch_pattern(self, pattern: str) -> None:
        """A local wildcard subscription of ``pattern`` ended."""
        if self.router is not None and self.keys.per_topic and not self.keys.cluster:
            self.router.unwatch_pattern(self.keys.channel_glob(pattern))

    def _resync_topics(self, start_for: Callable[[str], Cursor], topics: list[str] | None) -> int:
        if self._resync is None:
            return 0
        return self._resync(start_for, topics)

    # -- history ------------------------------------------------------------------------

    def append(
        self,
        topic: str,
        type: str,
        data: Any,
        sender: str | None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        raw: RawBody | None = None,
    ) -> Event:
        """Store a new event at the end of the topic's stream and publish it, atomically.

        Raises:
            BackendUnavailable: Redis cannot be reached (nothing was stored, or, if the
                connection broke after the command left, it may have been), or fewer than
                ``min_replicas`` replicas confirmed it (stored, maybe lost in a failover).
            TooManyTopics: ``topic`` is new and the deployment holds ``max_topics``
                (nothing was stored).
        """
        body = encode_body({"type": type, "sender": sender, "data": data, **stored_extras(headers, raw)})
        in_script = self.max_topics if not self.keys.cluster else 0
        if self.max_topics and self.keys.cluster:
            self._count_topic(topic)
        reply = self.client.run_acknowledged(
            "append",
            [*self._topic_keys(topic), self.keys.topics_for(topic)],
            [
                secrets.token_hex(6),
                self.history_size,
                self._ttl_ms,
                self.keys.channel(topic),
                topic,
                body,
                self._key_lifetime_ms,
                self.history_bytes or 0,
                in_script,
                self._publish_command,
            ],
        )
        epoch = self._epoch_from(reply[0], topic)
        event_id = reply[1]
        if not event_id:
            raise TooManyTopics(self.max_topics, int(reply[2]) / 1000)
        ms, seq = id_parts(event_id)
        return Event(Cursor(epoch, (ms, seq)), topic, type, data, sender, ms / 1000, headers=headers, raw=raw)

    @property
    def _publish_command(self) -> str:
        return "SPUBLISH" if self.keys.cluster and self.keys.per_topic else "PUBLISH"

    def _count_topic(self, topic: str) -> None:
        """Cluster: count ``topic`` in the deployment's topic set before appending to it.

        Done again at most every half key lifetime per process while it publishes there, so
        the set's entry may lapse up to half a lifetime before the topic's keys: a topic
        idle that long may stop counting early (the limit is approximate by those topics).
        """
        now = time.monotonic()
        counted = self._counted.get(topic)
        if counted is not None and now - counted < self._key_lifetime_ms / 2000:
            return
        wait_ms = self.client.run("register", [self.keys.topics], [topic, self._key_lifetime_ms, self.max_topics])
        if wait_ms:
            raise TooManyTopics(self.max_topics, int(wait_ms) / 1000)
        if len(self._counted) >= _MAX_COUNTED:
            self._counted.clear()
        self._counted[topic] = now

    def read_after(self, topic: str, cursor: Cursor, limit: int) -> tuple[list[Event], bool]:
        """Events after ``cursor`` (at most ``limit``), and whether some were lost before them.

        A cursor from another epoch, from the future, or older than what history keeps is
        a gap: the answer then starts at the oldest retained event.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        if len(cursor.position) == 2:
            c_epoch, (c_ms, c_seq) = cursor.epoch, cursor.position
        else:  # not a stream position (an in-memory hub's cursor): always a gap
            c_epoch, c_ms, c_seq = "", 0, 0
        reply = self._run("after", topic, self.history_size, self._ttl_ms, c_epoch, c_ms, c_seq, max(limit, 0))
        epoch = self._epoch_from(reply[0], topic)
        return self._events(topic, epoch, reply, 2), bool(reply[1])

    def read_latest(self, topic: str, limit: int) -> list[Event]:
        """The newest ``limit`` retained events, oldest first.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        reply = self._run("latest", topic, self.history_size, self._ttl_ms, limit)
        events = self._events(topic, self._epoch_from(reply[0], topic), reply, 1)
        events.reverse()
        return events

    def last_cursor(self, topic: str) -> Cursor | None:
        """The cursor of the newest event ever published to the topic (even if expired).

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        epoch, ms, seq, _ = self._run("stat", topic, self.history_size, self._ttl_ms, 0)
        epoch = self._epoch_from(epoch, topic)
        return Cursor(epoch, (int(ms), int(seq))) if int(seq) else None

    def retained(self, topic: str) -> int:
        """How many events the topic's history holds now (by both bounds).

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        epoch, _, _, count = self._run("stat", topic, self.history_size, self._ttl_ms, 1)
        self._epoch_from(epoch, topic)
        return int(count)

    def topic_count(self) -> int | None:
        """Topics the deployment holds now (published to within the keys' lifetime), or
        ``None`` without ``max_topics``: they are counted only for the limit.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        if not self.max_topics:
            return None
        return int(self.client.run("topic_count", [self.keys.topics], [self._key_lifetime_ms]))

    def _position(self, topic: str, floor_ms: int) -> tuple[str, int, int]:
        """The position of the newest event older than ``floor_ms`` (a feed's resume point)."""
        epoch, ms, seq = self._run("position", topic, floor_ms)
        return self._epoch_from(epoch, topic), int(ms), int(seq)

    # -- locks --------------------------------------------------------------------------

    def acquire_lock(self, name: str, ttl: float) -> bool:
        """Hold ``name`` for ``ttl`` seconds across every process on this Redis.

        ``SET NX PX`` with this process's owner token; calling it again while holding the
        lock renews the lease. Returns False when another process holds it, or when
        Redis cannot be reached (the caller cannot know that it still leads). A lock is one
        key: on a cluster it lives on the shard of its slot.
        """
        try:
            granted = bool(self.client.run("acquire", [self.keys.lock(name)], [self._token, max(int(ttl * 1000), 1)]))
        except BackendUnavailable:
            log.debug("lock %s: Redis unavailable, not leading", name)
            granted = False
        if granted:
            self._held_locks.add(name)
        else:
            self._held_locks.discard(name)
        return granted

    def release_lock(self, name: str) -> None:
        """Give up ``name`` if this process holds it (someone else's lock is left alone).

        Raises:
            BackendUnavailable: Redis cannot be reached (the lock then expires by itself).
        """
        self._held_locks.discard(name)
        self.client.run("release", [self.keys.lock(name)], [self._token])

    def claim_once(self, name: str, ttl: float) -> bool:
        """True for the first claim of ``name`` on this Redis within ``ttl`` seconds.

        ``SET NX PX``: atomic across every worker and host, so a single-use ticket is
        used once in the whole deployment (one key: one slot on a cluster).

        Raises:
            BackendUnavailable: Redis cannot be reached (the caller must refuse, not allow).
        """
        key = self.keys.once(name)
        return bool(self.client.call(lambda: self.client.redis.set(key, b"1", nx=True, px=max(int(ttl * 1000), 1))))

    # -- plumbing -----------------------------------------------------------------------

    def _run(self, script: str, topic: str, *args):
        """Run a topic script: KEYS epoch, stream, meta; ARGV a new epoch candidate, then ``args``."""
        return self.client.run(script, self._topic_keys(topic), [secrets.token_hex(6), *args])

    def _topic_keys(self, topic: str) -> list[str]:
        return [self.keys.epoch(topic), self.keys.stream(topic), self.keys.meta(topic)]

    def _epoch_of(self, topic: str) -> str | None:
        return self.epochs.get(self.keys.epoch(topic))

    def _epoch_from(self, raw: bytes, topic: str) -> str:
        """Record the epoch a script saw for the topic's scope; the one it replaces has ended."""
        epoch = raw.decode("ascii")
        scope = self.keys.epoch(topic)
        known = self.epochs.get(scope)
        if epoch != known:
            if known:
                self.dead_epochs.add(known)
            self.epochs[scope] = epoch
        self.epoch = epoch
        return epoch

    @staticmethod
    def _events(topic: str, epoch: str, reply: list, start: int) -> list[Event]:
        events = []
        for i in range(start, len(reply), 2):
            ms, seq = id_parts(reply[i])
            fields = json.loads(reply[i + 1])
            events.append(
                Event(
                    Cursor(epoch, (ms, seq)),
                    topic,
                    fields["type"],
                    fields["data"],
                    fields["sender"],
                    ms / 1000,
                    **extras_from_stored(fields),
                )
            )
        return events


def encode_body(fields: dict) -> bytes:
    """The stored and published JSON: UTF-8, or ASCII escapes when the data holds a lone
    surrogate (a ``"\\ud800"`` escape in the published JSON has no UTF-8 form)."""
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def id_parts(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)
