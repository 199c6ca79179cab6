"""Delivery: the one path from hub subscriptions to sockets, for every stream.

SSE, ``/ws`` and STOMP each give only their framing (a :class:`Framer`); this package
does the rest: the subscription to the connection, batching, gap and slow-consumer
signals, the end of a stream (shutdown, a dropped subscriber), metrics, and the writes
themselves: write-through with a non-blocking send, a writer greenlet only while a
connection has a backlog (:mod:`.stream`), one fan-out greenlet per worker
(:mod:`.fanout`). The hub still never touches a socket: this layer is a transport-side
consumer of it.
"""

from .fanout import BATCH, Delivery, Feed, Framer, Source
from .stream import Stream

__all__ = ["BATCH", "Delivery", "Feed", "Framer", "Source", "Stream"]
