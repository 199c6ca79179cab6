"""Presence in Redis (the backend half of :mod:`app.hub.presence`).

Each process holds one entry per (topic, sender) it has clients of, renewed every quarter
``SWITCHBOARD_PRESENCE_TTL`` and expiring a TTL after its last renewal. One script per topic
(``PRESENCE`` in :mod:`app.hub.redis.scripts`) adds, renews and drops a process's entries,
keeps the holder counts, and appends (with the append's own code, in the same script) a join
when a sender's count goes 0 -> 1 and a leave when it goes 1 -> 0: two workers cannot both
announce the same join, and the events are in the order of the changes. Every key it touches
is of the topic's slot, so it runs on one shard of a cluster.

Entries of a process that died are expired by the next script that touches the topic: every
process sweeps the topics whose earliest expiry has passed (the due set) every quarter TTL,
and a read of the topic's presence sweeps it first; so its users leave within 1.25 TTL of its
death. On a cluster the due set is per slot; a sweep visits the slots of the topics this
process serves plus a window of ``_SWEEP_SLOTS`` slots that moves on at each sweep, so a topic
nobody serves any more is swept within 16384 / ``_SWEEP_SLOTS`` sweeps of any one process
(the more processes, the sooner). The presence keys do not expire: a live deployment deletes
them when they empty.
"""

from __future__ import annotations

import random
import secrets
from typing import TYPE_CHECKING

from .keys import SLOTS
from .scripts import SWEEP_TOPICS

if TYPE_CHECKING:
    from .client import RedisClient
    from .keys import KeySpace
    from .router import Router

_SWEEP_SLOTS = 32  # cluster: slots one sweep visits besides those of the topics it serves


class RedisPresence:
    """The three presence methods of the Redis backend (a mixin of
    :class:`~app.hub.redis.backend.RedisBackend`, whose client, keys and bounds it uses)."""

    _sweep_from: int = -1

    if TYPE_CHECKING:  # what the mixin uses of RedisBackend, which sets or defines each of them
        client: RedisClient
        keys: KeySpace
        router: Router | None
        history_size: int
        history_bytes: int | None
        max_topics: int
        _ttl_ms: int
        _key_lifetime_ms: int
        _token: str

        @property
        def _publish_command(self) -> str: ...
        def _topic_keys(self, topic: str) -> list[str]: ...
        def _epoch_from(self, raw: bytes, topic: str) -> str: ...

    def presence_update(self, updates, ttl: float) -> list[tuple[str, str, str]]:
        """For each ``(topic, entering, leaving)``: this process holds (or renews) an entry of
        each entering sender for ``ttl`` seconds and drops those of the leaving ones; a
        sender's first entry in the deployment appends a join, its last a leave. One script
        per topic, all in one round trip (one per topic on a cluster).

        Returns:
            The events appended, as ``(topic, action, sender)`` (leaves of other processes'
            expired entries in these topics included).

        Raises:
            BackendUnavailable: Redis cannot be reached (some updates may have been applied).
        """
        ttl_ms = max(int(ttl * 1000), 1)
        return self._presence([(topic, list(entering), list(leaving)) for topic, entering, leaving in updates], ttl_ms)

    def presence_sweep(self) -> list[tuple[str, str, str]]:
        """Expire every process's entries whose time is up (a worker that died), in the topics
        the due sets name, at most ``SWEEP_TOPICS`` of them per due set; their leaves are
        appended.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        topics: list[str] = []
        for due in self._due_keys():
            topics += [topic.decode("utf-8") for topic in self.client.run("presence_due", [due], [SWEEP_TOPICS])]
        return self._presence([(topic, [], []) for topic in dict.fromkeys(topics)], 0)

    def _due_keys(self) -> list[str]:
        keys = self.keys
        if not keys.cluster:
            return [keys.due("")]
        if self._sweep_from < 0:
            self._sweep_from = random.randrange(SLOTS)
        start, self._sweep_from = self._sweep_from, (self._sweep_from + _SWEEP_SLOTS) % SLOTS
        slots = {(start + i) % SLOTS for i in range(_SWEEP_SLOTS)}
        if self.router is not None:
            slots |= {keys.slot(topic) for feed in self.router.feeds.values() for topic in feed.topics}
        return [keys.due_of_slot(slot) for slot in sorted(slots)]

    def presence_members(self, topic: str) -> list[tuple[str, float]]:
        """``(sender, joined at)`` of the topic's present senders, oldest join first; the
        topic's expired entries are swept first, so the answer agrees with the events.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        keys, args = self._presence_keys(topic), self._presence_args(topic, 0, [], [])
        members_key = self.keys.presence(topic)[1]
        if self.keys.cluster:  # a cluster pipeline does not load scripts: two steps, sweep first
            swept = self.client.run("presence", keys, args)
            members = self.client.call(lambda: self.client.redis.zrange(members_key, 0, -1, withscores=True))
        else:
            swept, members = self.client.run_then(
                "presence", keys, args, lambda pipe: pipe.zrange(members_key, 0, -1, withscores=True)
            )
        self._epoch_from(swept[0], topic)
        return [(sender.decode("utf-8"), score / 1000) for sender, score in members]

    def _presence(self, calls: list[tuple[str, list[str], list[str]]], ttl_ms: int) -> list[tuple[str, str, str]]:
        if not calls:
            return []
        replies = self.client.run_many(
            [
                ("presence", self._presence_keys(topic), self._presence_args(topic, ttl_ms, entering, leaving))
                for topic, entering, leaving in calls
            ]
        )
        announced = []
        for (topic, _, _), reply in zip(calls, replies):
            self._epoch_from(reply[0], topic)
            announced += [
                (topic, reply[i].decode("ascii"), reply[i + 1].decode("utf-8")) for i in range(1, len(reply), 2)
            ]
        return announced

    def _presence_keys(self, topic: str) -> list[str]:
        keys = self.keys
        return [*self._topic_keys(topic), keys.topics_for(topic), *keys.presence(topic), keys.due(topic)]

    def _presence_args(self, topic: str, ttl_ms: int, entering: list[str], leaving: list[str]) -> list:
        # On a cluster the script cannot count a topic in the deployment's set (another
        # slot): presence events do not count against SWITCHBOARD_MAX_TOPICS there.
        max_topics = 0 if self.keys.cluster else self.max_topics
        return [
            secrets.token_hex(6),
            self.history_size,
            self._ttl_ms,
            self.keys.channel(topic),
            topic,
            self._key_lifetime_ms,
            self.history_bytes or 0,
            max_topics,
            self._publish_command,
            self._token,
            ttl_ms,
            len(entering),
            *entering,
            *leaving,
        ]
