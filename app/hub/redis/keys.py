"""Key and channel names of the Redis backend, and the slot rule that keeps a cluster's
scripts on one shard.

``<p>`` is the prefix (``SWITCHBOARD_REDIS_PREFIX``); ``{t}`` is the topic as a hash tag,
so every key of one topic, and its channel, hash to the same slot:

==============================  ==========================================================
``<p>:stream:{t}``              the topic's events (a Stream, ids ``<ms>-<n>``)
``<p>:meta:{t}``                hash: newest id (``ms``, ``seq``), ``born``, ``bytes``, ``kept``
``<p>:presence:{t}``            presence entries ``<process>:<sender>``, scored by expiry
``<p>:members:{t}``             present senders, scored by their join
``<p>:holders:{t}``             entries per sender (one per process)
``<p>:events:{t}``              the topic's Pub/Sub channel (per-topic routing)
``<p>:events``                  the one channel of shared routing (every worker hears all)
``<p>:epoch``                   the history's epoch (one Redis, Sentinel)
``<p>:epoch:{s<n>}``            cluster: the epoch of slot ``n`` (``s<n>`` is a tag chosen
                                to hash to slot ``n``): a shard that restarts empty starts
                                new epochs for its own slots only
``<p>:topics``                  the topic limit's sorted set (``SWITCHBOARD_MAX_TOPICS``)
``<p>:presence-due``            topics with a presence entry to expire (cluster: one per
                                slot, ``<p>:presence-due:{s<n>}``)
``<p>:lock:<name>``             leadership locks; ``<p>:once:<name>`` single-use claims
==============================  ==========================================================

The prefix cannot hold ``{`` or ``}``, and a topic only as one ``{tag}`` (app/events.py), so
the tag is exactly the topic, except on a cluster for a topic that names a tag of its own
(``orders.{eu}``): its keys are ``<p>:stream:orders.{eu}`` and so on, unwrapped, and Redis
hashes them by ``eu``; every name with that tag, topic or queue (app/hub/redis_queue_keys.py),
shares its slot, which is what lets a STOMP transaction on a cluster touch several of them.
"""

from __future__ import annotations

import functools
from binascii import crc_hqx

SLOTS = 16384


def hash_tag(name: str) -> str:
    """What decides ``name``'s slot: the ``{tag}`` it holds, else the whole name."""
    start = name.find("{")
    if start < 0:
        return name
    end = name.find("}", start + 1)
    return name[start + 1 : end] if end > start + 1 else name


def key_slot(tag: str) -> int:
    """The cluster slot of a hash tag (CRC16/XMODEM mod 16384, as Redis Cluster computes it)."""
    return crc_hqx(tag.encode("utf-8"), 0) % SLOTS


@functools.cache  # built once per process (~30 ms), by the first cluster KeySpace
def _slot_tags() -> list[str]:
    """For each slot, a short tag that hashes to it (``s<n>`` for the first ``n`` that does)."""
    tags = [""] * SLOTS  # "" until the slot has its tag
    missing, n = SLOTS, 0
    while missing:
        tag = f"s{n}"
        slot = key_slot(tag)
        if not tags[slot]:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tags


class KeySpace:
    """The names one deployment uses.

    Args:
        prefix: the start of every key and channel.
        cluster: per-slot epochs and due sets, so no script touches two slots.
        per_topic: one channel per topic (workers subscribe to what they serve); else the
            one shared channel every worker hears in full.
    """

    def __init__(self, prefix: str, *, cluster: bool = False, per_topic: bool = True):
        self.prefix = prefix
        self.cluster = cluster
        self.per_topic = per_topic
        self.shared_channel = f"{prefix}:events"
        self.topics = f"{prefix}:topics"
        self._tags = _slot_tags() if cluster else []  # a tag per slot (only a cluster's keys name slots)

    def slot(self, topic: str) -> int:
        return key_slot(hash_tag(topic))

    def _tagged(self, topic: str) -> str:
        """The topic as its keys end: ``{topic}``, or on a cluster a topic with a ``{tag}``
        of its own as it is (Redis hashes the first ``{...}``)."""
        return topic if self.cluster and "{" in topic else f"{{{topic}}}"

    def stream(self, topic: str) -> str:
        return f"{self.prefix}:stream:{self._tagged(topic)}"

    def meta(self, topic: str) -> str:
        return f"{self.prefix}:meta:{self._tagged(topic)}"

    def epoch(self, topic: str) -> str:
        """The epoch key that the topic's cursors name (its scope)."""
        if not self.cluster:
            return f"{self.prefix}:epoch"
        return f"{self.prefix}:epoch:{{{self._tags[self.slot(topic)]}}}"

    def topics_for(self, topic: str) -> str:
        """The topics key the append script is given: the real one on a single Redis; on a
        cluster a key of the topic's slot that the script leaves alone (max topics 0 there)."""
        return self.topics if not self.cluster else f"{self.prefix}:topics:{self._tagged(topic)}"

    def due(self, topic: str) -> str:
        return self.due_of_slot(self.slot(topic)) if self.cluster else f"{self.prefix}:presence-due"

    def due_of_slot(self, slot: int) -> str:
        return f"{self.prefix}:presence-due:{{{self._tags[slot]}}}"

    def presence(self, topic: str) -> list[str]:
        """Entries, members, holders."""
        return [f"{self.prefix}:{kind}:{self._tagged(topic)}" for kind in ("presence", "members", "holders")]

    def channel(self, topic: str) -> str:
        return f"{self.prefix}:events:{self._tagged(topic)}" if self.per_topic else self.shared_channel

    def channel_glob(self, pattern: str) -> str:
        """A PSUBSCRIBE glob for the channels of every topic a wildcard (app/hub/wildcard.py:
        dot-separated words, ``*`` one word, ``#`` as the last word any number) matches;
        broader than the wildcard (a glob ``*`` also crosses dots), the hub filters exactly.
        Topic words hold no glob character (``[A-Za-z0-9_:-]``), nor does the prefix."""
        words = pattern.split(".")
        if words[-1] == "#":
            glob = ".".join(words[:-1]) + "*"  # chat.# also matches chat itself
        else:
            glob = pattern
        return f"{self.prefix}:events:{{{glob}}}"

    def topic_of_channel(self, channel: bytes) -> str | None:
        """The topic a per-topic channel carries (None for any other channel)."""
        text = channel.decode("utf-8", "replace")
        head = f"{self.prefix}:events:"
        if not text.startswith(head) or len(text) == len(head):
            return None
        rest = text[len(head) :]
        if rest.startswith("{") and rest.endswith("}"):
            return rest[1:-1]
        return rest if self.cluster and "{" in rest else None

    def control(self) -> str:
        """A channel nobody publishes on: every listener connection subscribes to it first,
        so it is in Pub/Sub mode (and answers PING alike) even with no topic."""
        return f"{self.prefix}:listener"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def once(self, name: str) -> str:
        return f"{self.prefix}:once:{name}"
