"""One Pub/Sub connection of a process and the greenlet that reads it: a *feed*.

A feed carries the topics this process has local subscribers for (per-topic routing: one
``SUBSCRIBE`` per topic, or ``SSUBSCRIBE`` on a cluster, on the channel ``<p>:events:{topic}``),
or the one shared channel (shared routing). A process has one feed per Redis primary: one on a
single server or behind Sentinel, one per shard on a cluster (:mod:`app.hub.redis.router`).

Seam. The hub calls :meth:`Feed.watch` before a subscription reads history. ``watch`` sends
the SUBSCRIBE and waits (bounded) for Redis to confirm it: from the confirmation on, every
append of the topic reaches this process (an append publishes in the same script), and
whatever came before is in history. A subscription that starts while its topic's SUBSCRIBE
is still unconfirmed waits for the same confirmation. One whose wait ran out (Redis slow or
gone) is resynced from history when the confirmation finally comes (or when the feed is
whole again after a reconnect), so nothing is missed either way.

Replies arrive in the order the commands were sent, so each topic keeps a queue of the
(un)subscribes it awaits: a topic dropped and taken again before Redis answered is only
live once its *second* SUBSCRIBE is confirmed. A ``sunsubscribe`` nobody asked for means the
cluster moved the topic's slot to another shard: the router re-homes the topic.

Failures. The feed notices a broken connection at once (EOF) or through a PING it sends
after ``ping_interval`` seconds of silence, reconnects with capped, jittered exponential
backoff, subscribes its topics again and, once Redis confirmed them all, asks the hub to
resync their subscriptions from history: no event that reached Redis is lost.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import gevent
import gevent.event
import gevent.lock
import gevent.socket
from redis.connection import ConnectionInterface
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...events import Cursor, Event, extras_from_stored
from .. import BackendUnavailable
from .keys import KeySpace

log = logging.getLogger(__name__)

# Topics whose last heard event a feed remembers between two subscribes (beyond that, a
# live-only subscription resumes from the coarser known-good point).
_MAX_HEARD = 10_000
_CHUNK = 500  # channels per (S)SUBSCRIBE command on a reconnect


@dataclass
class _Awaited:
    """A SUBSCRIBE or UNSUBSCRIBE sent for a topic, not yet answered."""

    kind: str  # "sub" or "unsub"
    done: gevent.event.Event = field(default_factory=gevent.event.Event)
    late: bool = False  # a subscription went on without it: resync the topic when it comes


@dataclass
class FeedHooks:
    """What a feed needs from its backend."""

    connect: Callable[[], ConnectionInterface]  # a new, unconnected redis-py Connection
    connected_to: Callable[[ConnectionInterface], str]  # the address reached (counts Sentinel failovers)
    clock: Callable[[], int]  # Redis's clock (ms) on this feed's node
    position: Callable[[str, int], tuple[str, int, int]]  # (epoch, ms, seq) before floor ms in a topic
    epoch_of: Callable[[str], str | None]  # the epoch this process knows for a topic's scope
    resync: Callable[[Callable[[str], Cursor], list[str] | None], int]  # Hub.resync_all
    deliver: Callable[[Event], None]
    dead_epochs: set[str]
    lost_topic: Callable[[str], None]  # the cluster took the topic's slot away from this node
    cut: Callable[["Feed"], None]  # the connection broke (a cluster re-reads its topology)


class Feed:
    """One listener connection (to one node) and the topics it carries.

    Args:
        name: the node's name (``main`` off a cluster, else ``host:port``).
        keys: channel names.
        hooks: the backend's side.
        sharded: SSUBSCRIBE (a cluster) rather than SUBSCRIBE, for per-topic channels.
        ping_interval: seconds of silence before a PING; as long again without an answer
            is a dead connection.
        reconnect_base, reconnect_cap: the reconnect backoff, seconds.
        confirm_timeout: longest :meth:`watch` waits for Redis to confirm a SUBSCRIBE.
    """

    def __init__(
        self,
        name: str,
        keys: KeySpace,
        hooks: FeedHooks,
        *,
        sharded: bool,
        ping_interval: float,
        reconnect_base: float,
        reconnect_cap: float,
        confirm_timeout: float,
    ):
        self.name = name
        self.keys = keys
        self.hooks = hooks
        self.per_topic = keys.per_topic
        self.ping_interval = ping_interval
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.confirm_timeout = confirm_timeout
        if sharded and self.per_topic:  # the shared channel is a classic one, even on a cluster
            self._sub, self._unsub, self._message = "SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage"
        else:
            self._sub, self._unsub, self._message = "SUBSCRIBE", "UNSUBSCRIBE", b"message"
        self._confirm, self._unconfirm = self._sub.lower().encode(), self._unsub.lower().encode()
        self.topics: set[str] = set()  # topics this feed should carry
        self.patterns: dict[str, int] = {}  # channel globs (PSUBSCRIBE) -> their local wildcard subscriptions
        self.state = "connecting"  # connecting, subscribing, up, down, closed
        self.address: str | None = None
        self.reconnects = 0  # times it came back after a cut
        self.resubscribes = 0  # topic SUBSCRIBEs sent again after a cut
        self.received = 0  # messages read
        self.up = gevent.event.Event()  # set while whole (every topic confirmed)
        self.heard: dict[str, Cursor] = {}  # the last event heard per topic since the last catch-up
        # A "known good" point: Redis's clock (ms) on this node when every event published
        # before it had reached this feed, and the epochs known then.
        self.floor_ms = int(time.time() * 1000)  # before the first catch-up: this host's clock
        self.floor_epochs: dict[str, str | None] = {}  # per topic; dropped with the topic
        self._awaited: dict[str, deque[_Awaited]] = {}
        self._pattern_awaited: dict[bytes, deque[_Awaited]] = {}
        self._initial = 0  # topic confirmations still awaited after a (re)connect
        self._conn: ConnectionInterface | None = None  # while connected
        self._writing = gevent.lock.Semaphore()
        self._greenlet: gevent.Greenlet | None = None
        self._failures = 0

    # -- the hub's side -----------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def close(self) -> None:
        self.state = "closed"
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
        self._drop_connection()

    def watch(self, topic: str, late: bool = False) -> None:
        """Carry ``topic``; return once Redis confirmed its SUBSCRIBE (or after the confirm
        timeout: the topic is then resynced when it comes). ``late``: return at once, and
        resync the topic's subscriptions on the confirmation (a topic moved here from
        another shard)."""
        if not self.per_topic:
            return
        if topic in self.topics:
            queue = self._awaited.get(topic)
            pending = next((a for a in reversed(queue) if a.kind == "sub"), None) if queue else None
            if pending is not None and not late:
                self._await(pending)
            return
        self.topics.add(topic)
        if self._conn is None or self.state not in ("subscribing", "up"):
            return  # the (re)connect subscribes it, and resyncs its subscriptions once whole
        pending = _Awaited("sub", late=late or self.state != "up")
        self._awaited.setdefault(topic, deque()).append(pending)  # before sending: the reply may come at once
        if self._send(self._sub, self.keys.channel(topic)) and not late:
            self._await(pending)

    def unwatch(self, topic: str) -> None:
        """Stop carrying ``topic`` (its last local subscriber left)."""
        if not self.per_topic or topic not in self.topics:
            return
        self.topics.discard(topic)
        self.heard.pop(topic, None)
        self.floor_epochs.pop(topic, None)
        if self._conn is None or self.state not in ("subscribing", "up"):
            return
        self._awaited.setdefault(topic, deque()).append(_Awaited("unsub"))
        self._send(self._unsub, self.keys.channel(topic))

    def forget(self, topic: str) -> None:
        """Drop ``topic`` without telling Redis (its slot is no longer this node's)."""
        self.topics.discard(topic)
        self.heard.pop(topic, None)
        for awaited in self._awaited.pop(topic, ()):
            awaited.done.set()

    def watch_pattern(self, glob: str) -> None:
        """Carry every channel matching ``glob`` (a wildcard subscription; classic Pub/Sub
        only); returns once Redis confirmed the PSUBSCRIBE (bounded, as :meth:`watch`)."""
        count = self.patterns.get(glob, 0)
        self.patterns[glob] = count + 1
        if count or self._conn is None or self.state not in ("subscribing", "up"):
            return  # already carried, or the (re)connect subscribes it
        pending = _Awaited("sub")
        self._pattern_awaited.setdefault(glob.encode(), deque()).append(pending)
        if self._send("PSUBSCRIBE", glob):
            self._await(pending)

    def unwatch_pattern(self, glob: str) -> None:
        """One wildcard subscription of ``glob`` fewer; the last one PUNSUBSCRIBEs."""
        count = self.patterns.get(glob, 0) - 1
        if count > 0:
            self.patterns[glob] = count
            return
        self.patterns.pop(glob, None)
        if self._conn is not None and self.state in ("subscribing", "up"):
            self._pattern_awaited.setdefault(glob.encode(), deque()).append(_Awaited("unsub"))
            self._send("PUNSUBSCRIBE", glob)

    def status(self) -> dict:
        return {
            "node": self.name,
            "address": self.address,
            "state": self.state,
            "topics": len(self.topics),
            "reconnects": self.reconnects,
            "resubscribes": self.resubscribes,
        }

    def _await(self, pending: _Awaited) -> None:
        if not pending.done.wait(self.confirm_timeout) and not pending.done.is_set():
            pending.late = True

    def _send(self, *args) -> bool:
        conn = self._conn
        if conn is None:
            log.debug("redis feed %s: no connection to send %s on; the listener reconnects", self.name, args[0])
            return False
        try:
            with self._writing:
                conn.send_command(*args)
            return True
        except (RedisConnectionError, RedisTimeoutError, OSError, AttributeError) as exc:
            log.debug("redis feed %s: sending %s failed (%s); the listener reconnects", self.name, args[0], exc)
            return False

    # -- the listener -------------------------------------------------------------------

    def _run(self) -> None:
        while self.state != "closed":
            try:
                self._pump(self._connect())
            except (RedisConnectionError, RedisTimeoutError, BackendUnavailable, OSError) as exc:
                if self._failures == 0 and self.state != "closed":
                    log.warning(
                        "redis feed %s: connection lost (%s); reconnecting",
                        self.name,
                        exc,
                        exc_info=log.isEnabledFor(logging.DEBUG),
                    )
            except Exception:  # a bug: log it, and keep the process's live feed alive
                log.error("redis feed %s failed; reconnecting", self.name, exc_info=True)
            self._drop_connection()
            if self.state == "closed":
                return
            self.state = "down"
            self._failures += 1
            try:
                self.hooks.cut(self)
            except Exception:
                log.error("redis feed %s: handling the cut failed", self.name, exc_info=True)
            gevent.sleep(self._backoff(self._failures))

    def _drop_connection(self) -> None:
        self.up.clear()
        conn, self._conn = self._conn, None
        # Whoever waits for a confirmation goes on; the reconnect resyncs their topics.
        for queue in (*self._awaited.values(), *self._pattern_awaited.values()):
            for awaited in queue:
                awaited.done.set()
        self._awaited, self._pattern_awaited = {}, {}
        if conn is not None:
            conn.disconnect()

    def _connect(self) -> ConnectionInterface:
        conn = self.hooks.connect()
        conn.connect()
        self.address = self.hooks.connected_to(conn)
        channels = [self.keys.control()] + ([] if self.per_topic else [self.keys.shared_channel])
        conn.send_command("SUBSCRIBE", *channels)
        for _ in channels:
            self._read_reply(conn, self.ping_interval, expect=b"subscribe")
        patterns = sorted(self.patterns)
        if patterns:  # wildcard subscriptions: live only, so no catch-up to wait for
            conn.send_command("PSUBSCRIBE", *patterns)
            for _ in patterns:
                self._read_reply(conn, self.ping_interval, expect=b"psubscribe")
        self._conn = conn
        self.state = "subscribing"
        topics = sorted(self.topics)
        self._awaited = {topic: deque([_Awaited("sub")]) for topic in topics}
        self._initial = len(topics)
        for i in range(0, len(topics), _CHUNK):
            chunk = topics[i : i + _CHUNK]
            with self._writing:
                conn.send_command(self._sub, *(self.keys.channel(topic) for topic in chunk))
        if self._failures:
            self.resubscribes += len(topics)
        if not topics:
            self._whole()
        return conn

    def _whole(self) -> None:
        """Every topic is confirmed: catch up on what the cut (or the start) hid."""
        now = self.hooks.clock()
        floor, epochs, heard = self.floor_ms, self.floor_epochs, self.heard
        topics = sorted(self.topics) if self.per_topic else None
        if topics is None or topics or self.patterns:  # the hub gives wildcard subscriptions a gap
            self.hooks.resync(lambda topic: self._start_for(topic, floor, epochs, heard), topics)
        if self._failures:
            log.warning(
                "redis feed %s: subscribed again after %d failed attempt(s); subscriptions resynced from history",
                self.name,
                self._failures,
            )
            self.reconnects += 1
        self._failures = 0
        self.floor_ms, self.heard = now, {}
        # The epochs as they stand now that the feed is whole (a topic watched later adds its own).
        self.floor_epochs = {topic: self.hooks.epoch_of(topic) for topic in self.topics}
        self.state = "up"
        self.up.set()

    def _backoff(self, failures: int) -> float:
        """Exponential delay capped at ``reconnect_cap``, half of it random ("equal jitter")."""
        delay = min(self.reconnect_cap, self.reconnect_base * 2 ** min(failures - 1, 16))
        return delay / 2 + random.uniform(0, delay / 2)

    def _pump(self, conn: ConnectionInterface) -> None:
        """Read replies on ``conn`` (the one :meth:`_connect` made) until it breaks (raises)."""
        ping_floor: int | None = None  # the clock read just before our PING
        since_yield = 0
        while True:
            reply = self._read_reply(conn, self.ping_interval)
            if reply is None:
                if ping_floor is not None:
                    raise RedisTimeoutError(f"no answer to PING within {self.ping_interval:g}s")
                ping_floor = self.hooks.clock()
                with self._writing:
                    conn.send_command("PING")
                continue
            kind = reply[0]
            if kind == self._message:
                self._on_message(reply[2])
                since_yield += 1
                if since_yield >= 100:  # a flood must not starve the worker's requests
                    since_yield = 0
                    gevent.sleep(0)
            elif kind == b"pmessage":
                self._on_message(reply[3])
            elif kind == self._confirm:
                self._confirmed(reply[1])
            elif kind in (b"psubscribe", b"punsubscribe"):
                queue = self._pattern_awaited.get(reply[1])
                if queue:
                    queue.popleft().done.set()
                    if not queue:
                        del self._pattern_awaited[reply[1]]
            elif kind == self._unconfirm:
                self._unconfirmed(reply[1])
            elif kind == b"pong" and ping_floor is not None:
                # Everything published before the PING arrived before this answer.
                self.floor_ms = max(self.floor_ms, ping_floor)
                ping_floor = None

    def _confirmed(self, channel: bytes) -> None:
        topic = self.keys.topic_of_channel(channel)
        if topic is None:
            return
        queue = self._awaited.get(topic)
        if not queue:
            return
        awaited = queue.popleft()
        if not queue:
            del self._awaited[topic]
        awaited.done.set()
        if self.state == "subscribing" and self._initial > 0:
            self._initial -= 1
            if self._initial == 0:
                self._whole()
        else:
            if awaited.late and topic in self.topics:
                self.hooks.resync(lambda t: self._start_for(t, self.floor_ms, {}, {}), [topic])
            self.floor_epochs[topic] = self.hooks.epoch_of(topic)

    def _unconfirmed(self, channel: bytes) -> None:
        topic = self.keys.topic_of_channel(channel)
        if topic is None:
            return
        queue = self._awaited.get(topic)
        if queue and queue[0].kind == "unsub":
            queue.popleft()
            if not queue:
                del self._awaited[topic]
        elif topic in self.topics:
            # Not asked for: the cluster moved the topic's slot to another shard.
            self.hooks.lost_topic(topic)

    def _read_reply(self, conn: ConnectionInterface, timeout: float, expect: bytes | None = None):
        """The next Pub/Sub reply, or None after ``timeout`` seconds of silence.

        Waits with gevent (not in the socket), so it yields to other greenlets whether or
        not the socket module is monkey-patched.
        """
        if not conn.can_read(0):
            try:
                # A gap in redis-py's types: ConnectionInterface declares no _sock, though every
                # connection it makes has one (AbstractConnection, where it is typed None).
                gevent.socket.wait_read(conn._sock.fileno(), timeout)  # type: ignore[attr-defined]
            except socket.timeout:
                if expect is not None:
                    raise RedisTimeoutError(f"no {expect.decode()} confirmation within {timeout:g}s") from None
                return None
        reply = conn.read_response()
        if expect is not None and (not isinstance(reply, list) or reply[0] != expect):
            raise RedisConnectionError(f"unexpected reply {reply!r} to {expect.decode()}")
        return reply

    def _on_message(self, payload: bytes) -> None:
        """Decode one published event (``topic\\ncursor\\nbody``) and hand it to the hub."""
        self.received += 1
        try:
            topic, cursor_text, body = payload.split(b"\n", 2)
            cursor = Cursor.parse(cursor_text.decode("ascii"))
            fields = json.loads(body)
            ms = cursor.position[0]
            event = Event(
                cursor,
                topic.decode("ascii"),
                fields["type"],
                fields["data"],
                fields["sender"],
                ms / 1000,
                **extras_from_stored(fields),
            )
        except (ValueError, KeyError) as exc:
            log.error("redis feed %s: dropped a malformed message (%s): %r", self.name, exc, payload[:200])
            return
        if cursor.epoch in self.hooks.dead_epochs:
            return  # published before a flush; its subscriptions get a gap from their next read
        last = self.heard.get(event.topic)
        if last is not None and last.epoch == cursor.epoch and cursor.position <= last.position:
            return  # heard already: its channel and a wildcard's pattern both carry it
        if ms > self.floor_ms:
            self.floor_ms = ms
        if len(self.heard) < _MAX_HEARD or event.topic in self.heard:
            self.heard[event.topic] = cursor
        try:
            self.hooks.deliver(event)
        except Exception:
            log.error("delivering an event failed", exc_info=True)

    def _start_for(self, topic: str, floor_ms: int, epochs: dict[str, str | None], heard: dict[str, Cursor]) -> Cursor:
        """Where a live-only subscription of ``topic`` that has received nothing resumes
        after a cut of the feed.

        After the last event of the topic heard before the cut, if there was one (exact).
        Otherwise just before the first event at or after the known-good point ``floor_ms``
        (events of the same millisecond as that point may come as extras: better than
        lost). If the topic's epoch changed meanwhile (Redis flushed, or restarted empty): a
        cursor of the old epoch, which the read answers with a gap and the new epoch's events.
        """
        last_heard = heard.get(topic)
        floor_epoch = last_heard.epoch if last_heard is not None else epochs.get(topic)
        epoch, ms, seq = self.hooks.position(topic, floor_ms)
        if floor_epoch is not None and floor_epoch != epoch:
            return Cursor(floor_epoch, (0, 0))
        if last_heard is not None and last_heard.epoch == epoch:
            return last_heard
        return Cursor(epoch, (int(ms), int(seq)))
