"""Commands to Redis, whichever engine serves them, and the failures that mean "unavailable".

Three ways to reach Redis, one surface for the backend:

* one server (``SWITCHBOARD_REDIS_URL``): a bounded blocking pool of command connections;
* Sentinel (``SWITCHBOARD_REDIS_SENTINELS`` and ``_SENTINEL_MASTER``): redis-py's
  Sentinel-managed pool, which asks the sentinels for the primary at each connect, so the
  connections that a failover broke come back on the new primary;
* Cluster (a URL of one node of a cluster, or ``SWITCHBOARD_REDIS_CLUSTER=1``): redis-py's
  cluster client, which routes each script by its keys' slot (all of one topic's keys share
  one, :mod:`app.hub.redis.keys`).

No command is retried here: an append that failed after reaching Redis must not be stored
twice; the caller gets :class:`~app.hub.BackendUnavailable` (HTTP 503 + Retry-After) and the
client decides. The Pub/Sub listeners get their own connections (:meth:`RedisClient.listen_connection`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, TypedDict
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import ConnectionInterface
from redis.exceptions import ClusterError, NoScriptError, ReadOnlyError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .. import BackendUnavailable
from . import scripts

log = logging.getLogger(__name__)

# Replies that mean "Redis cannot serve now" rather than "this code is wrong".
_UNAVAILABLE_REPLIES = (
    "OOM",
    "MISCONF",
    "BUSY",
    "MASTERDOWN",
    "LOADING",
    "TRYAGAIN",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
)
# Exceptions that mean the same (a broken connection, a failover in progress, a slot nobody serves).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterError, RedisClusterException, OSError)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is.

    Attributes:
        url: ``redis://``, ``rediss://`` or ``unix://``; on a cluster, any node's address.
        cluster: True for a cluster, False for one server; None: asked at start (``INFO cluster``).
        sentinels: ``(host, port)`` of each sentinel; with ``sentinel_master``, the primary
            is found through them and ``url`` is not needed.
        sentinel_master: the name the sentinels monitor the primary under.
    """

    url: str | None = None
    cluster: bool | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None

    @property
    def mode(self) -> str:
        if self.sentinels:
            return "sentinel"
        return "cluster" if self.cluster else "single"


class _ConnectionOptions(TypedDict, total=False):
    """The options every connection is made with (commands and listeners, every mode)."""

    protocol: int
    socket_timeout: float
    socket_connect_timeout: float
    health_check_interval: int
    socket_keepalive: bool


class NotAcknowledged(BackendUnavailable):
    """An append was stored on the primary but fewer than ``min_replicas`` replicas confirmed
    it in time: it may be lost in a failover, so it is not acknowledged (HTTP 503)."""


class RedisClient:
    """The backend's commands and scripts, on one server, a Sentinel primary or a cluster.

    Nothing connects before :meth:`connect`, so a gunicorn worker builds its own connections
    after the fork.

    Args:
        target: where Redis is.
        socket_timeout: seconds a command may take before it counts as a failure.
        connect_timeout: seconds to establish a connection.
        max_connections: command connections per process (per node on a cluster).
        min_replicas: appends wait until this many replicas have them (``WAIT``), at most
            ``replica_timeout`` seconds; 0: no wait.
    """

    def __init__(
        self,
        target: RedisTarget,
        *,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_connections: int = 64,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ):
        self.target = target
        self.mode = target.mode
        self.min_replicas = min_replicas
        self.replica_timeout_ms = max(int(replica_timeout * 1000), 1)
        self.commands_ok = True
        self.failovers = 0  # primaries seen to change (Sentinel) or slot owners that moved (Cluster)
        self.primary: str | None = None  # Sentinel: the primary's address as last seen
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._options = _ConnectionOptions(
            protocol=2, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, health_check_interval=0
        )
        if not (target.url or "").startswith("unix:"):
            self._options["socket_keepalive"] = True  # TCP only: a vanished peer is noticed
        self.redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._listen_pool: redis.ConnectionPool | None = None  # off a cluster: the listeners' connections
        self._owners: dict[int, str] = {}  # cluster: slot -> primary name, as last read
        self._refreshed = 0.0

    # -- connecting ---------------------------------------------------------------------

    def connect(self) -> None:
        """Build the clients; on a URL of unknown kind, ask the server whether it is a cluster
        (a server that cannot be reached now is taken for one server)."""
        options = self._options
        no_retry = Retry(NoBackoff(), 0)
        pool: redis.ConnectionPool
        if self.mode == "sentinel":
            self._sentinel = Sentinel(
                list(self.target.sentinels),
                socket_timeout=self._connect_timeout,
                socket_connect_timeout=self._connect_timeout,
                protocol=2,
            )
            pool = SentinelConnectionPool(
                self.target.sentinel_master,
                self._sentinel,
                max_connections=self._max_connections * 4,
                retry=no_retry,
                **options,
            )
            self.redis = redis.Redis(connection_pool=pool)
            self._listen_pool = SentinelConnectionPool(
                self.target.sentinel_master, self._sentinel, retry=no_retry, **options
            )
        else:
            url = self.target.url
            if url is None:
                raise ValueError("Redis needs a URL, or sentinels and the name of their primary")
            if self.target.cluster is None:
                self.mode = "cluster" if self._is_cluster(url) else "single"
            if self.mode == "cluster":
                parsed = urlparse(url)
                self.redis = RedisCluster(
                    startup_nodes=[ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379)],
                    retry=no_retry,
                    require_full_coverage=False,
                    max_connections=self._max_connections,
                    **options,
                )
            else:
                pool = redis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=self._max_connections,
                    timeout=self._socket_timeout,
                    retry=no_retry,
                    **options,
                )
                self.redis = redis.Redis(connection_pool=pool)
                self._listen_pool = redis.ConnectionPool.from_url(url, retry=no_retry, **options)
        self._scripts = {name: self.redis.register_script(source) for name, source in scripts.ALL.items()}

    def _is_cluster(self, url: str) -> bool:
        try:
            with redis.Redis.from_url(
                url,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._connect_timeout,
                protocol=2,
            ) as probe:
                return bool(probe.info("cluster").get("cluster_enabled"))
        except redis.RedisError as exc:
            log.warning(
                "redis: could not ask %s whether it is a cluster (%s); taking it for one server "
                "(set SWITCHBOARD_REDIS_CLUSTER to say)",
                url,
                exc,
            )
            return False

    def close(self) -> None:
        for closable in (self.redis, self._listen_pool):
            if closable is None:
                continue
            try:
                closable.close() if isinstance(closable, RedisCluster) else closable.disconnect()
            except Exception:  # best effort at shutdown
                log.debug("redis: closing failed", exc_info=True)
        if self.redis is not None and not isinstance(self.redis, RedisCluster):
            self.redis.connection_pool.disconnect()

    # -- commands -----------------------------------------------------------------------

    def run(self, script: str, keys: list[str], args: list) -> Any:
        """Run one script; Redis's unavailability raised as :class:`BackendUnavailable`."""
        return self.call(lambda: self._scripts[script](keys=keys, args=args))

    def run_acknowledged(self, script: str, keys: list[str], args: list) -> Any:
        """Run a script that writes, and with ``min_replicas`` wait for the replicas (``WAIT``
        on the same connection, so it counts this write).

        Raises:
            NotAcknowledged: fewer replicas confirmed it within the timeout.
        """
        if not self.min_replicas:
            return self.run(script, keys, args)
        pipe = self.redis.pipeline(transaction=False)
        self._scripts[script](keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)
        reply, replicas = self._execute(pipe)
        if int(replicas) < self.min_replicas:
            raise NotAcknowledged(f"the append reached {replicas} of {self.min_replicas} replicas in time")
        return reply

    def run_many(self, calls: list[tuple[str, list[str], list]]) -> list:
        """Run scripts in one round trip (one server), or one after another (a cluster,
        where they may live on different shards)."""
        if self.mode == "cluster":
            return [self.run(script, keys, args) for script, keys, args in calls]
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            self._scripts[script](keys=keys, args=args, client=pipe)
        return self._execute(pipe)

    def run_then(self, script: str, keys: list[str], args: list, then: Callable[[Any], Any]) -> tuple[Any, Any]:
        """A script and a command of the same slot, atomically (MULTI), e.g. a sweep and a read."""
        pipe = self.redis.pipeline(transaction=True)
        self._scripts[script](keys=keys, args=args, client=pipe)
        then(pipe)
        result = self._execute(pipe)
        return result[0], result[1]

    def call(self, command: Callable[[], Any]) -> Any:
        """Run ``command()`` (a redis-py call); failures as :class:`BackendUnavailable`."""
        try:
            reply = command()
        except NoScriptError:
            raise  # Script objects load and retry; a pipeline's NOSCRIPT is loaded in _execute
        except ResponseError as exc:
            if not str(exc).startswith(_UNAVAILABLE_REPLIES) and not isinstance(exc, ClusterError):
                raise
            self.failed(exc)
        except UNREACHABLE as exc:
            self.failed(exc)
        self.commands_ok = True
        return reply

    def _execute(self, pipe) -> list:
        try:
            return self.call(pipe.execute)
        finally:
            pipe.reset()

    def failed(self, exc: Exception):
        if self.commands_ok:
            log.warning("redis: %s", exc)
        self.commands_ok = False
        raise BackendUnavailable("Redis cannot be reached") from exc

    # -- topology (the Pub/Sub listeners') ----------------------------------------------

    def primaries(self) -> dict[str, tuple[str, int] | None]:
        """The nodes a listener connects to: ``{name: (host, port)}``; one ``main`` entry
        (address unknown until it connects) on one server or behind Sentinel."""
        if self.mode != "cluster":
            return {"main": None}
        return {node.name: (node.host, node.port) for node in self.redis.get_primaries()}

    def owner(self, slot: int) -> str:
        """The name of the node that serves ``slot`` (``main`` off a cluster)."""
        if self.mode != "cluster":
            return "main"
        owner = self._owners.get(slot)
        if owner is None:
            try:
                owner = self.redis.nodes_manager.get_node_from_slot(slot).name
            except UNREACHABLE:
                owner = next(iter(self.primaries()), "main")
            self._owners[slot] = owner
        return owner

    def refresh(self, min_interval: float = 0.5) -> bool:
        """Re-read the cluster's slot owners (at most every ``min_interval`` s). Returns
        whether any slot changed owner since the last read (each change counts as a failover)."""
        if self.mode != "cluster" or time.monotonic() - self._refreshed < min_interval:
            return False
        self._refreshed = time.monotonic()
        try:
            self.redis.nodes_manager.initialize()
        except UNREACHABLE as exc:
            log.debug("redis cluster: topology refresh failed: %s", exc)
            return False
        before = self._owners
        self._owners = {}
        moved = {slot for slot, name in before.items() if self.owner(slot) != name}
        if moved:
            self.failovers += 1
            log.warning("redis cluster: %d slot(s) of followed topics changed owner", len(moved))
        return bool(moved)

    def listen_connection(self, node: str) -> ConnectionInterface:
        """A new, unconnected connection for a Pub/Sub listener, never pooled."""
        if self.mode == "cluster":
            host, port = self.primaries().get(node) or node.rsplit(":", 1)
            return redis.Connection(host=host, port=int(port), retry=Retry(NoBackoff(), 0), **self._options)
        if self._listen_pool is None:
            raise RuntimeError("a listener connection was asked for before connect()")
        return self._listen_pool.make_connection()

    def connected_to(self, conn: ConnectionInterface) -> str:
        """The address a listener connection reached; behind Sentinel, a new one is a failover."""
        host = getattr(conn, "host", None)  # a TCP connection; a Unix socket's has a path instead
        address = f"{host}:{getattr(conn, 'port', None)}" if host else str(getattr(conn, "path", "unix"))
        if self.mode == "sentinel":
            if self.primary is not None and address != self.primary:
                self.failovers += 1
                log.warning("redis sentinel: the primary is now %s (was %s)", address, self.primary)
            self.primary = address
        return address

    def time_ms(self, node: str) -> int:
        """Redis's clock on ``node``, in ms."""
        if self.mode == "cluster":
            seconds, micros = self.call(lambda: self.redis.time(target_nodes=self.redis.get_node(node_name=node)))
        else:
            seconds, micros = self.call(self.redis.time)
        return int(seconds) * 1000 + int(micros) // 1000
