"""A real redis-server for the tests: free port, temporary directory, no persistence by default.

    with RedisServer(tmp_path) as server:      # started; stopped at the end
        backend = RedisBackend(server.url, ...)
        server.kill(); server.restart()        # an outage, on the same port

``restart`` comes back on the same port and directory, so a client that knew the old
URL reconnects. With ``appendonly=True`` (``appendfsync always``) a killed server comes
back with every write it acknowledged; without it, it comes back empty (a new epoch).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import redis

from .servers import free_port
from .timing import scaled, wait_until


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (``url``) and a Unix socket (``unix_url``).

    Args:
        directory: its working directory (log, AOF files).
        port: the port; a free one by default.
        appendonly: keep an append-only file, fsynced before each reply.
        extra_args: more ``redis-server`` options (``--cluster-enabled yes``, ``--replicaof``...).
    """

    def __init__(
        self, directory: Path, port: int | None = None, appendonly: bool = False, extra_args: tuple[str, ...] = ()
    ):
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            raise RuntimeError("the tests need redis-server (Debian package redis-server; `make test` installs it)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        socket_path = self.dir / "redis.sock"
        # AF_UNIX paths are limited to 107 bytes; a deep temporary directory goes without.
        self.socket_path = socket_path if len(str(socket_path)) < 100 else None
        self.unix_url = f"unix://{socket_path}" if self.socket_path else None
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers PING."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            "--protected-mode",
            "no",
        ]
        if self.socket_path:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._ready, timeout=10, interval=0.01, message=f"redis-server on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with self.client(socket_timeout=1) as client:
                return client.ping()
        except redis.RedisError:
            return False

    def client(self, **kwargs) -> redis.Redis:
        """A plain client (RESP2, no retries) for the test's own checks."""
        return redis.Redis.from_url(self.url, protocol=2, retry=None, **kwargs)

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, no final save."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        self._signal(signal.SIGTERM)

    def restart(self) -> "RedisServer":
        """Stop if running, then start again on the same port and directory."""
        self.stop()
        return self.start()

    def _signal(self, sig: int) -> None:
        if not self.running:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(scaled(5))

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
