"""The Redis queue store's connections (:mod:`app.hub.redis_queues`): one server, a
Sentinel-managed primary, or a Redis Cluster.

Commands and scripts go through one client (on a cluster redis-py's cluster client, which
routes each by its keys' slot). Each fetcher's blocking ``XREADGROUP`` has a connection of its
own, never pooled: to the primary, or on a cluster to the node that serves its queue's slot as
the client last read the slot map (re-read by :func:`refresh` after a failure or ``MOVED``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel, SentinelConnectionPool

from . import BackendUnavailable

__all__ = ["REDIRECTS", "UNREACHABLE", "connect", "disconnect", "fetch_connection", "refresh"]

#: Failures that mean "Redis cannot serve now" (a cluster: also a slot nobody serves).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterError, RedisClusterException)
#: Cluster replies that mean "ask the slot's new owner" (MOVED is an AskError).
REDIRECTS = (AskError, TryAgainError, ClusterDownError)


def connect(
    url: str | None,
    cluster: bool | None,
    sentinels: tuple[tuple[str, int], ...],
    sentinel_master: str | None,
    options: dict[str, Any],
    socket_timeout: float,
) -> tuple[Any, Any, bool]:
    """The command client, the pool fetcher connections come from (None on a cluster), and
    whether it is a cluster (``cluster`` None: asked of the server, ``INFO cluster``).

    Raises:
        BackendUnavailable: Redis cannot be reached to ask.
    """
    if sentinels:  # the primary as the sentinels name it, followed through failovers
        sentinel = Sentinel(list(sentinels), socket_timeout=2.0, socket_connect_timeout=2.0, protocol=2)
        pool = SentinelConnectionPool(sentinel_master, sentinel, max_connections=32, **options)
        return redis.Redis(connection_pool=pool), SentinelConnectionPool(sentinel_master, sentinel, **options), False
    if url is None:
        raise ValueError("a Redis URL, or sentinels and the primary's name, are needed")
    try:
        if cluster is None:
            with redis.Redis.from_url(url, **options) as probe:
                cluster = bool(probe.info("cluster").get("cluster_enabled"))
        if cluster:
            parsed = urlparse(url)
            node = ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379)
            client = RedisCluster(startup_nodes=[node], require_full_coverage=False, max_connections=32, **options)
            return client, None, True
    except (*UNREACHABLE, OSError) as exc:
        raise BackendUnavailable(f"Redis cannot be reached: {exc}") from exc
    commands = redis.BlockingConnectionPool.from_url(url, max_connections=32, timeout=socket_timeout, **options)
    return redis.Redis(connection_pool=commands), redis.ConnectionPool.from_url(url, **options), False


def fetch_connection(client: Any, fetch_pool: Any, slot: int, options: dict[str, Any]) -> redis.Connection:
    """A new, unconnected connection for one fetcher of a queue in ``slot``."""
    if fetch_pool is not None:
        return fetch_pool.make_connection()
    node = client.nodes_manager.get_node_from_slot(slot)
    return redis.Connection(host=node.host, port=node.port, **options)


def refresh(client: Any) -> None:
    """Re-read a cluster's slot map (nothing off a cluster).

    Raises:
        redis.RedisError, OSError: the cluster cannot be asked now.
    """
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()


def disconnect(client: Any, fetch_pool: Any) -> None:
    if isinstance(client, RedisCluster):
        client.close()
    elif client is not None:
        client.connection_pool.disconnect()
    if fetch_pool is not None:
        fetch_pool.disconnect()
