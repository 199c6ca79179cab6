"""Key names of the Redis queue store (:mod:`app.hub.redis_queues`), and the slot rule that
keeps each of its scripts on one shard of a cluster.

``<p>`` is the prefix (the event backend's). One Redis server or Sentinel:

==========================  =============================================================
``<p>:q:<name>``            the queue: a Stream read through consumer group ``g``
``<p>:qm:<name>``           hash ``bytes``: the bytes the queue holds
``<p>:queues``              the registry: the set of queues (``max_queues``, the metrics,
                            the reaper)
``<p>:qw:<worker>``         a worker's heartbeat (``PX`` a few seconds, renewed)
==========================  =============================================================

On a Redis Cluster every key of one queue carries a hash tag, so it lives in one slot:
``<p>:q:{<name>}`` and ``<p>:qm:{<name>}``. The tag is the name without its ``.dlq``
suffixes, so a queue's dead-letter queue shares its slot (``<p>:q:{jobs}.dlq``) and the
script that moves a message there touches one slot only. A name with a ``{tag}`` of its own
(``orders.{eu}``, app/events.py) is left as it is (``<p>:q:orders.{eu}``, and its
``<p>:q:orders.{eu}.dlq``): Redis hashes it by ``eu``, as it does a topic with that tag (the
event backend tags a topic's keys the same way, :mod:`app.hub.redis.keys`). So a queue and
a topic of the same name, or of the same ``{tag}``, share a slot. The registry and the heartbeats live in slots of their own:
no script reads them together with a queue's keys (the reaper asks for them first, in
separate commands; see :mod:`app.hub.redis_queues`).
"""

from __future__ import annotations

from ..events import InvalidTopic
from .queues import DLQ_SUFFIX
from .redis.keys import hash_tag, key_slot

__all__ = ["QUEUE_EPOCH", "CrossSlotBatch", "QueueKeys"]

#: The epoch of queue message ids (``q-<ms>-<seq>``): a queue has no history to resume.
QUEUE_EPOCH = "q"


class CrossSlotBatch(InvalidTopic):
    """A batch (a STOMP COMMIT) on a Redis Cluster whose destinations hash to more than one
    slot: it is refused whole (nothing stored), since only one slot is atomic there.
    HTTP 400; STOMP an ERROR that names the rule."""

    def __init__(self, names: list[str]):
        if len(names) > 4:
            names = [*names[:4], "..."]
        super().__init__(
            "a transaction on a Redis Cluster must keep to one hash slot, and its destinations "
            f"({', '.join(names)}) hash to several: name them with a common {{tag}} (orders.{{eu}} "
            "and audit.{eu}: the tag decides the slot), or send them separately"
        )


class QueueKeys:
    """The queue store's key names.

    Args:
        prefix: the start of every key.
        cluster: tag each queue's keys so they share its slot.
    """

    def __init__(self, prefix: str, *, cluster: bool = False):
        self.prefix = prefix
        self.cluster = cluster
        self.registry = f"{prefix}:queues"

    @staticmethod
    def tag(queue: str) -> str:
        """The queue's hash tag: the ``{tag}`` it names, else its name without the ``.dlq``
        suffixes (``jobs`` for ``jobs``, ``jobs.dlq`` and ``jobs.dlq.dlq``)."""
        if "{" in queue:
            return hash_tag(queue)
        while queue.endswith(DLQ_SUFFIX) and len(queue) > len(DLQ_SUFFIX):
            queue = queue[: -len(DLQ_SUFFIX)]
        return queue

    def slot(self, queue: str) -> int:
        """The cluster slot of every key of ``queue`` (and of its dead-letter queue)."""
        return key_slot(self.tag(queue))

    def _tagged(self, queue: str) -> str:
        if not self.cluster or "{" in queue:
            return queue
        tag = self.tag(queue)
        return f"{{{tag}}}{queue[len(tag) :]}"

    def stream(self, queue: str) -> str:
        return f"{self.prefix}:q:{self._tagged(queue)}"

    def meta(self, queue: str) -> str:
        return f"{self.prefix}:qm:{self._tagged(queue)}"

    def of(self, queue: str) -> list[str]:
        """A queue's keys and its dead-letter queue's, as the scripts take them: stream,
        meta, dead-letter stream, dead-letter meta."""
        dead = queue + DLQ_SUFFIX
        return [self.stream(queue), self.meta(queue), self.stream(dead), self.meta(dead)]

    def worker(self, token: str) -> str:
        return f"{self.prefix}:qw:{token}"
