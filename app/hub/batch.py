"""Several publishes that happen together or not at all (a STOMP COMMIT, one SEND to a handler).

:meth:`app.hub.Hub.publish_batch` checks every :class:`Publication` first (names, types,
the topic limit, queue bounds), then stores them all. With the in-memory backend nothing
yields in between, so no one sees a part of the batch, and nothing can fail half way. With
Redis the queue store (:mod:`app.hub.redis_queues`) runs the whole batch as one script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import RawBody, check_topic, check_type

__all__ = ["Publication", "check_publication"]


@dataclass(frozen=True)
class Publication:
    """One publish of a batch.

    Attributes:
        kind: ``topic`` (broadcast, kept in history) or ``queue`` (one consumer takes it).
        name: the topic or the queue.
        data: the event's data (any JSON value).
        type: the event type.
        sender: who sent it, as the transport established it.
        headers: user-defined headers (:func:`app.events.check_headers`).
        raw: a STOMP SEND's own octets and content-type, when ``data`` would not give them back.
    """

    kind: str
    name: str
    data: Any
    type: str = "message"
    sender: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    raw: RawBody | None = None


def check_publication(item: Publication) -> None:
    """Check what needs no backend: the kind, the name, the type.

    Raises:
        ValueError: an unknown kind.
        app.events.InvalidTopic, app.events.InvalidEventType: bad names.
    """
    if item.kind not in ("topic", "queue"):
        raise ValueError(f"a publication goes to a topic or a queue, not {item.kind!r}")
    check_topic(item.name)  # a queue name is a topic name (shorter: see app.hub.queues)
    check_type(item.type)
