"""Redis deployments for the tests, of real redis-server processes on loopback ports:

    with RedisClusterServers(tmp_path) as cluster:   # three primaries, slots spread by redis-cli
        backend = RedisBackend(cluster.url, ..., cluster=True)
        cluster.kill(1); cluster.restart(1)          # one shard out, then back (empty)

    with SentinelGroup(tmp_path) as group:           # a primary, two replicas, three sentinels
        backend = RedisBackend(None, ..., sentinels=group.sentinels, sentinel_master=group.master_name)
        group.kill_primary(); group.wait_failover()

Everything lives in the given directory and is stopped at the end; nothing is kept.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from .redis_server import RedisServer
from .servers import free_port
from .timing import scaled, wait_until


class RedisClusterServers:
    """A Redis Cluster of ``primaries`` cluster-enabled servers and no replicas.

    A shard that is down leaves the others serving (``cluster-require-full-coverage no``),
    and one restarted on its port and directory rejoins with its slots (from its
    ``nodes.conf``): empty, or with its data when ``appendonly`` (AOF, fsynced before each
    reply).
    """

    def __init__(self, directory: Path, primaries: int = 3, appendonly: bool = False):
        self.dir = Path(directory)
        # The cluster bus gets a free port of its own (not the default port + 10000, which is
        # over 65535 for many of the ports the system hands out).
        self.nodes = [
            RedisServer(
                self.dir / f"node{i}",
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-allow-reads-when-down",
                    "no",
                ),
                appendonly=appendonly,
            )
            for i in range(primaries)
        ]
        self.url = ""
        self.addresses: list[str] = []

    def start(self) -> "RedisClusterServers":
        for node in self.nodes:
            node.start()
        self.addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        self.url = f"redis://{self.addresses[0]}/0"
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *self.addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=scaled(30),
        )
        wait_until(self._ok, timeout=20, interval=0.1, message="cluster_state:ok on every node")
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            if not node.running:
                continue
            with node.client(socket_timeout=1) as client:
                try:
                    if client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                        return False
                except redis.RedisError:
                    return False
        return True

    def client(self, **kwargs) -> RedisCluster:
        """A cluster client for the test's own checks (RESP2, no retries)."""
        host, port = self.addresses[0].split(":")
        live = [ClusterNode("127.0.0.1", node.port) for node in self.nodes if node.running]
        return RedisCluster(
            startup_nodes=live or [ClusterNode(host, int(port))], protocol=2, require_full_coverage=False, **kwargs
        )

    def node_of(self, key: str) -> int:
        """The index of the node that owns ``key``'s slot."""
        with self.client() as client:
            owner = client.get_node_from_key(key)
        return self.addresses.index(f"{owner.host}:{owner.port}")

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        self.nodes[index].start()
        wait_until(self._ok, timeout=20, interval=0.1, message="the cluster whole again")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "RedisClusterServers":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()


# A replica's first full sync starts at once (the default waits 5 s for more replicas to
# share one diskless transfer), so the group is whole, and WAIT can be met, within a second.
_REPLICATION = ("--repl-diskless-sync-delay", "0")


class SentinelGroup:
    """A primary, ``replicas`` replicas and three sentinels that fail it over quickly
    (down after 1 s); ``kill_primary`` is a SIGKILL, and ``wait_failover`` waits until the
    sentinels name a new primary."""

    master_name = "switchboard"

    def __init__(self, directory: Path, replicas: int = 2):
        self.dir = Path(directory)
        self.servers = [RedisServer(self.dir / "redis0", extra_args=_REPLICATION)]
        self._replicas = replicas
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = tuple(("127.0.0.1", port) for port in self.sentinel_ports)
        self._sentinel_procs: list[subprocess.Popen] = []

    def start(self) -> "SentinelGroup":
        primary = self.servers[0].start()
        for i in range(1, self._replicas + 1):
            self.servers.append(
                RedisServer(
                    self.dir / f"redis{i}", extra_args=(*_REPLICATION, "--replicaof", "127.0.0.1", str(primary.port))
                ).start()
            )
        wait_until(self._replicated, timeout=20, interval=0.1, message="the replicas in sync")
        binary = self.servers[0].binary
        for port in self.sentinel_ports:
            directory = self.dir / f"sentinel{port}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        "protected-mode no",
                        f"dir {directory}",
                        f"sentinel monitor {self.master_name} 127.0.0.1 {primary.port} 2",
                        f"sentinel down-after-milliseconds {self.master_name} 1000",
                        f"sentinel failover-timeout {self.master_name} 5000",
                        f"sentinel parallel-syncs {self.master_name} 2",
                        "",
                    ]
                )
            )
            self._sentinel_procs.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel", "--logfile", str(directory / "sentinel.log")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        wait_until(self._sentinels_know_all, timeout=20, interval=0.1, message="the sentinels see the replicas")
        return self

    def _replicated(self) -> bool:
        with self.servers[0].client(socket_timeout=1) as client:
            info = client.info("replication")
        return [info.get(f"slave{i}", {}).get("state") for i in range(self._replicas)] == ["online"] * self._replicas

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=1, decode_responses=True)

    def _sentinels_know_all(self) -> bool:
        try:
            for port in self.sentinel_ports:
                with self._sentinel(port) as sentinel:
                    master = sentinel.sentinel_master(self.master_name)
                    if (
                        int(master.get("num-slaves", 0)) < self._replicas
                        or int(master.get("num-other-sentinels", 0)) < 2
                    ):
                        return False
            return True
        except (redis.RedisError, OSError):
            return False

    def primary_port(self) -> int | None:
        """The primary's port, as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                with self._sentinel(port) as sentinel:
                    return int(sentinel.sentinel_get_master_addr_by_name(self.master_name)[1])
            except (redis.RedisError, OSError, TypeError):
                continue
        return None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def client(self, **kwargs) -> redis.Redis:
        """A plain client of the current primary."""
        return self.primary().client(**kwargs)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (restart it to have it rejoin as a replica)."""
        victim = self.primary()
        victim.kill()
        return victim

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        """Wait until the sentinels name another primary than ``old_port`` and it takes writes."""

        def promoted():
            port = self.primary_port()
            if port is None or port == old_port:
                return None
            try:
                with self.primary().client(socket_timeout=1) as client:
                    return port if client.info("replication").get("role") == "master" else None
            except redis.RedisError:
                return None

        return wait_until(promoted, timeout=timeout, interval=0.1, message="a new primary")

    def stop(self) -> None:
        for proc in self._sentinel_procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(scaled(5))
                except subprocess.TimeoutExpired:
                    proc.kill()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> "SentinelGroup":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()
