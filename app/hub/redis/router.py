"""Which feed carries which topic: one feed on a single server or behind Sentinel, one per
primary on a cluster (the shard that owns the topic's slot, where its SPUBLISH goes).

A cluster's topology changes when a shard fails over or a slot migrates. The router re-reads
it whenever a feed's connection breaks and when a shard unsubscribes a topic by itself
(Redis 7 does so when the topic's slot leaves the node), and moves each topic whose owner
changed to the new owner's feed, which resyncs it from history once subscribed there.
"""

from __future__ import annotations

import logging
from typing import Callable

from .client import RedisClient
from .feed import Feed
from .keys import KeySpace

log = logging.getLogger(__name__)


class Router:
    """The process's feeds, and the topic -> feed map.

    Args:
        client: the command client (topology, listener connections).
        keys: names and slots.
        make_feed: ``make_feed(node_name)`` builds an unstarted :class:`Feed`.
    """

    def __init__(self, client: RedisClient, keys: KeySpace, make_feed: Callable[[str], Feed]):
        self.client = client
        self.keys = keys
        self._make_feed = make_feed
        self.feeds: dict[str, Feed] = {}
        self._where: dict[str, Feed] = {}  # topic -> the feed carrying it
        self._closed = False

    def start(self) -> None:
        try:
            nodes = list(self.client.primaries())
        except Exception:  # a cluster that cannot be reached now: one feed per node once it can
            log.warning("redis: the cluster's nodes are unknown for now", exc_info=True)
            nodes = []
        if not self.keys.per_topic:
            nodes = nodes[:1]  # shared routing: one subscription to the one channel (PUBLISH reaches every node)
        for node in nodes or ["main"]:
            self._feed(node)

    def close(self) -> None:
        self._closed = True
        for feed in list(self.feeds.values()):
            feed.close()

    def _feed(self, node: str) -> Feed:
        feed = self.feeds.get(node)
        if feed is None:
            feed = self.feeds[node] = self._make_feed(node)
            if not self._closed:
                feed.start()
        return feed

    def feed_for(self, topic: str) -> Feed:
        if not self.keys.per_topic:
            return next(iter(self.feeds.values()))
        return self._feed(self.client.owner(self.keys.slot(topic)))

    # -- the hub's interest ---------------------------------------------------------------

    def watch(self, topic: str) -> None:
        feed = self._where.get(topic)
        if feed is None:
            feed = self._where[topic] = self.feed_for(topic)
        feed.watch(topic)

    def unwatch(self, topic: str) -> None:
        feed = self._where.pop(topic, None)
        if feed is not None:
            feed.unwatch(topic)

    def watch_pattern(self, glob: str) -> None:
        next(iter(self.feeds.values())).watch_pattern(glob)

    def unwatch_pattern(self, glob: str) -> None:
        next(iter(self.feeds.values())).unwatch_pattern(glob)

    # -- topology -------------------------------------------------------------------------

    def cut(self, feed: Feed) -> None:
        """A feed lost its connection: on a cluster, the topology may have changed."""
        if self.client.refresh():
            self._rehome()

    def lost(self, topic: str) -> None:
        """A shard dropped ``topic`` by itself: its slot moved."""
        self.client.refresh(min_interval=0)
        self._rehome()
        feed = self._where.get(topic)
        if feed is not None and feed is self.feed_for(topic):
            feed.forget(topic)  # still ours by the map: subscribe again, resynced on confirmation
            feed.watch(topic, late=True)

    def _rehome(self) -> None:
        for topic, feed in list(self._where.items()):
            owner = self.feed_for(topic)
            if owner is not feed:
                feed.forget(topic)
                self._where[topic] = owner
                owner.watch(topic, late=True)

    # -- state ----------------------------------------------------------------------------

    @property
    def whole(self) -> bool:
        """Every feed is connected with every topic confirmed."""
        return bool(self.feeds) and all(feed.state == "up" for feed in self.feeds.values())

    def wait_whole(self, timeout: float) -> None:
        for feed in list(self.feeds.values()):
            feed.up.wait(timeout)

    def status(self) -> list[dict]:
        return [feed.status() for feed in sorted(self.feeds.values(), key=lambda f: f.name)]

    @property
    def received(self) -> int:
        return sum(feed.received for feed in self.feeds.values())

    @property
    def reconnects(self) -> int:
        return sum(feed.reconnects for feed in self.feeds.values())

    @property
    def resubscribes(self) -> int:
        return sum(feed.resubscribes for feed in self.feeds.values())

    @property
    def topics_routed(self) -> int:
        return len(self._where)
