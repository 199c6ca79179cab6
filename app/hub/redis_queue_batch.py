"""A batch of queue messages and topic events (a STOMP COMMIT) in one script of the Redis
queue store (:mod:`app.hub.redis_queues`): all of it stored, or nothing.

The script (``COMMIT`` in :mod:`app.hub.redis_queue_scripts`) checks every bound first
(queue messages, bytes and count; the topic limit), then appends every queue entry and topic
event (topics with the event backend's own append, so history, trimming and the Pub/Sub
fan-out are the same as a single publish).

On a Redis Cluster a script is atomic within one slot only, so a batch must keep to one:
every destination's keys hash to the same slot (a queue's slot is its name's, without
``.dlq``; a topic's is its name's; :mod:`app.hub.redis_queue_keys`). A batch that spans
slots is refused whole before anything is done (:class:`CrossSlotBatch`). Within one slot,
the new queues are registered (``max_queues``) and the new topics counted (``max_topics``)
first, each by a command of its own in the registry's slot; the script then checks the rest.
"""

from __future__ import annotations

import json
import secrets
from typing import Sequence

from ..events import Cursor, Event, stored_extras
from . import TooManyTopics
from .batch import Publication
from .queues import QueueFull
from .redis import encode_body
from .redis_queue_keys import QUEUE_EPOCH, CrossSlotBatch

__all__ = ["commit_batch"]


def commit_batch(store, hub, items: Sequence[Publication]) -> list[Event]:
    """Store ``items`` through ``store`` (a :class:`~app.hub.redis_queues.RedisQueues`) and
    ``hub``'s event backend, atomically; their events, in order.

    Raises:
        CrossSlotBatch: a cluster, and the destinations hash to several slots.
        QueueFull, TooManyTopics: a bound refused it (nothing stored).
        BackendUnavailable: Redis cannot be reached.
    """
    if not items:
        return []
    backend = hub.backend
    keys = store.keys
    cluster = keys.cluster
    epoch_key = backend.keys.epoch("")
    if cluster:
        slots = {keys.slot(i.name) if i.kind == "queue" else backend.keys.slot(i.name) for i in items}
        if len(slots) > 1:
            raise CrossSlotBatch(list(dict.fromkeys(f"{i.kind} {i.name}" for i in items)))
        first = items[0]
        epoch_key = backend.keys.epoch(keys.tag(first.name) if first.kind == "queue" else first.name)
        for name in dict.fromkeys(i.name for i in items if i.kind == "queue"):
            store.register(name)  # max_queues: in the registry's own slot, before the script
        if backend.max_topics:
            for name in dict.fromkeys(i.name for i in items if i.kind == "topic"):
                backend._count_topic(name)
    ops, touched = [], [epoch_key]
    for item in items:
        body = encode_body({"type": item.type, "sender": item.sender, "data": item.data, **_extras(item)})
        text = body.decode("utf-8", "surrogatepass")
        if item.kind == "queue":
            stream, meta = keys.stream(item.name), keys.meta(item.name)
            ops.append({"k": "q", "name": item.name, "b": text, "s": _size(item), "sk": stream, "mk": meta})
            touched += [stream, meta]
        else:  # the event backend's own append, its KEYS and ARGV (app/hub/redis/scripts.py)
            topic_keys = [*backend._topic_keys(item.name), backend.keys.topics_for(item.name)]
            args = [
                secrets.token_hex(6),
                backend.history_size,
                backend._ttl_ms,
                backend.keys.channel(item.name),
                item.name,
                text,
                backend._key_lifetime_ms,
                backend.history_bytes or 0,
                0 if cluster else backend.max_topics,
                backend._publish_command,
            ]
            ops.append({"k": "t", "K": topic_keys, "A": args})
            touched += topic_keys[1:]
    spec = {
        "ops": ops,
        "max_queues": store.limits.max_queues,
        "max_messages": store.limits.max_messages,
        "max_bytes": store.limits.max_bytes,
        "max_topics": 0 if cluster else backend.max_topics,
        "topics_key": backend.keys.topics,
        "lifetime": backend._key_lifetime_ms,
    }
    if not cluster:
        spec["registry"] = keys.registry
    reply = store._call("commit", list(dict.fromkeys(touched)), [secrets.token_hex(6), json.dumps(spec)])
    status = reply[0].decode()
    if status == "full":
        bound = reply[2].decode()
        store.observer.refused("queues" if bound == "queues" else f"queue_{bound}")
        raise QueueFull(reply[1].decode(), bound, int(reply[3]))
    if status == "topics":
        hub.observer.refused("topics")
        raise TooManyTopics(backend.max_topics, int(reply[1]) / 1000)
    stored = []
    for item, raw_id in zip(items, reply[2:]):
        ms, seq = (int(part) for part in raw_id.decode().split("-"))
        if item.kind == "queue":
            cursor = Cursor(QUEUE_EPOCH, (ms, seq))
        else:  # one epoch per scope: the whole Redis, or (a cluster) the batch's one slot
            cursor = Cursor(backend._epoch_from(reply[1], item.name), (ms, seq))
        stored.append(
            Event(cursor, item.name, item.type, item.data, item.sender, ms / 1000, headers=item.headers, raw=item.raw)
        )
        if item.kind == "topic":
            hub.published += 1
            hub.observer.published(item.name)
    return stored


def _extras(item: Publication) -> dict:
    return stored_extras(item.headers, item.raw)


def _size(item: Publication) -> int:
    probe = Event(
        Cursor("0", (0,)), item.name, item.type, item.data, item.sender, 0.0, headers=item.headers, raw=item.raw
    )
    return probe.size
