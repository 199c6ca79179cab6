"""Start, measure and stop the servers under test, each pinned to the server core.

Three kinds, one interface (:class:`Server`):

* :class:`Switchboard`: ``gunicorn -c gunicorn.conf.py wsgi:app`` from the app's own venv
  (``.venv``), one worker with the in-memory hub, or N workers over Redis.
* :class:`Nchan`: nginx with Debian's nchan module and ``bench/anchors/nchan.conf``.
* :class:`SocketIO`: ``bench/anchors/socketio_app.py`` under gunicorn with gevent-websocket's
  worker class, from the bench venv.

Every process is started under ``taskset -c <core>``; children inherit the affinity.
Memory is the resident set (VmRSS) summed over the whole process tree; CPU is user + system
time summed over the tree, read from /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run" / "bench"
APP_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = Path(sys.executable)
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# Every bench client connects from 127.0.0.1, where real users come from many addresses,
# so the per-address guards would measure the guard, not the server: they are lifted, and
# so is the per-worker stream cap (10,000 by default; the idle test holds 10,000 streams
# plus its warm-up). Nothing else is changed from the defaults.
BENCH_LIMITS = {
    "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT": "0",
    "SWITCHBOARD_PUBLISH_RATE": "0",
    "SWITCHBOARD_MAX_CONNECTIONS": "0",
}
#: Niceness for every server process (``run.py --nice``); 0 leaves the scheduler alone.
NICE = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_prefix(core: int | None) -> list[str]:
    """``taskset -c core`` when pinning is possible here (and ``nice`` if asked), else nothing."""
    prefix = ["nice", "-n", str(NICE)] if NICE else []
    if core is None or shutil.which("taskset") is None or core >= (os.cpu_count() or 1):
        return prefix
    return prefix + ["taskset", "-c", str(core)]


def core_busy() -> dict[int, float]:
    """Process time (user, nice, system, steal) per CPU from /proc/stat, in seconds.

    Interrupt and softirq time are left out: loopback traffic of the bench itself is
    processed there, and it is not "other processes"."""
    busy = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu") and line[3].isdigit():
                name, *fields = line.split()
                user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(v) for v in fields[:8])
                busy[int(name[3:])] = (user + nice + system + steal) / CLOCK_TICKS
    return busy


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    seen, todo = [], [pid]
    while todo:
        current = todo.pop()
        seen.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return seen


def rss_kb(pids: list[int]) -> int:
    """Resident memory of these processes, in KiB (VmRSS summed)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


def http_get(url: str, timeout: float = 2.0, headers: dict | None = None) -> tuple[int, bytes]:
    """One GET to a local server: (status, body); (0, b"") when it is not answering."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


class Server:
    """One server under test. Subclasses set ``name``, ``transports`` and the commands."""

    name = "server"
    #: transport name -> what the client needs (paths, protocol); see bench/clients.py.
    transports: dict[str, dict] = {}

    def __init__(self, core: int | None = 0, log_dir: Path = RUN_DIR):
        self.core = core
        self.port = free_port()
        self.host = "127.0.0.1"
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- subclass hooks ------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return ROOT

    def ready(self) -> bool:
        return http_get(f"http://{self.host}:{self.port}/ready", timeout=1)[0] == 200

    def subscribers(self, topic: str) -> int:
        """Subscribers the server counts on ``topic`` (-1 if it cannot tell)."""
        return -1

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30) -> "Server":
        self._log = open(self.log_dir / f"{self.name}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            pin_prefix(self.core) + self.command(),
            cwd=self.cwd(),
            env=self.environment(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self._log.name}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start in {timeout} s; see {self._log.name}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Nothing to save and no client left: kill the whole process group at once.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        finally:
            if self._log:
                self._log.close()

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (not the master)."""
        return [pid for pid in self.pids() if pid != self.proc.pid]

    def rss_kb(self) -> int:
        return rss_kb(self.pids())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def wait_subscribers(self, topic: str, count: int, timeout: float, floor: int = 0) -> int:
        """Wait until the server counts ``count`` subscribers on ``topic``; the last count.

        Switchboard counts over all topics, and connections the bench closed earlier may
        still be counted (a stream learns its client is gone at its next write) and may go
        at any moment: so a count of at least ``floor`` that holds still for a second is
        taken as settled too.
        """
        deadline = time.monotonic() + timeout
        seen = self.subscribers(topic)
        changed = time.monotonic()
        while seen != -1 and seen < count and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.subscribers(topic)
            if now != seen:
                seen, changed = now, time.monotonic()
            elif floor and seen >= floor and time.monotonic() - changed > 1.0:
                break
        return seen

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Switchboard(Server):
    """Switchboard as the README runs it: gunicorn -c gunicorn.conf.py wsgi:app."""

    name = "switchboard"
    transports = {
        "sse": {"kind": "sse", "path": "/api/topics/{topic}/stream", "format": "switchboard"},
        "websocket": {"kind": "ws", "path": "/ws", "format": "switchboard"},
        "stomp": {"kind": "stomp", "path": "/stomp", "format": "switchboard"},
        "long-polling": {"kind": "longpoll", "path": "/api/topics/{topic}/long-poll", "format": "switchboard"},
        "polling": {"kind": "poll", "path": "/api/topics/{topic}/events", "format": "switchboard"},
    }
    publish_path = "/api/topics/{topic}/events"

    def __init__(
        self,
        core: int | None = 0,
        log_dir: Path = RUN_DIR,
        workers: int = 1,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
    ):
        super().__init__(core, log_dir)
        self.workers = workers
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        if redis_url:
            self.name = f"switchboard-redis-{workers}w"

    def command(self) -> list[str]:
        return [str(APP_PYTHON), "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]

    def environment(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(self.workers),
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
            "SWITCHBOARD_TICKS": "0",
            "PYTHONUNBUFFERED": "1",
            **BENCH_LIMITS,
        }
        if self.redis_url:
            env["SWITCHBOARD_REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env

    def ready(self) -> bool:
        return http_get(f"http://{self.host}:{self.port}/healthz", timeout=1)[0] == 200

    def subscribers(self, topic: str) -> int:
        if self.workers > 1:
            return -1  # /healthz counts one worker's subscribers only
        status, body = http_get(f"http://{self.host}:{self.port}/healthz")
        return json.loads(body)["subscribers"] if status == 200 else -1


class Nchan(Server):
    """nginx + nchan with bench/anchors/nchan.conf, one worker."""

    name = "nchan"
    transports = {
        "sse": {"kind": "sse", "path": "/sse?id={topic}", "format": "raw"},
        "websocket": {"kind": "ws", "path": "/ws?id={topic}", "format": "raw"},
        "long-polling": {"kind": "longpoll", "path": "/lp?id={topic}", "format": "raw"},
        "polling": {"kind": "poll", "path": "/poll?id={topic}", "format": "raw"},
    }
    publish_path = "/pub?id={topic}"

    def __init__(self, core: int | None = 0, log_dir: Path = RUN_DIR):
        super().__init__(core, log_dir)
        self.prefix = RUN_DIR / f"nginx-{self.port}"

    @staticmethod
    def available() -> bool:
        return NCHAN_MODULE.exists() and (shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists())

    def command(self) -> list[str]:
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        text = (ROOT / "bench" / "anchors" / "nchan.conf").read_text()
        text = text.replace("__PORT__", str(self.port)).replace("__MODULE__", str(NCHAN_MODULE))
        (self.prefix / "nchan.conf").write_text(text)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", str(self.prefix) + "/", "-c", "nchan.conf", "-e", "error.log"]

    def subscribers(self, topic: str) -> int:
        status, body = http_get(f"http://{self.host}:{self.port}/pub?id={topic}", headers={"Accept": "text/json"})
        if status == 404:
            return 0
        if status != 200:
            return -1
        return int(json.loads(body)["subscribers"])

    def stop(self, timeout: float = 15) -> None:
        super().stop(timeout)
        shutil.rmtree(self.prefix, ignore_errors=True)


class SocketIO(Server):
    """Flask-SocketIO (async_mode="gevent") under gunicorn with gevent-websocket's worker."""

    name = "flask-socketio"
    transports = {
        "websocket": {"kind": "socketio", "path": "/socket.io/?EIO=4&transport=websocket", "format": "switchboard"},
    }
    publish_path = "/publish/{topic}"

    def command(self) -> list[str]:
        return [
            str(BENCH_PYTHON),
            "-m",
            "gunicorn",
            "-k",
            "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
            "-w",
            "1",
            "--worker-connections",
            "20000",
            "--backlog",
            "4096",
            "-b",
            f"{self.host}:{self.port}",
            "--log-level",
            "warning",
            "--keep-alive",
            "60",
            "socketio_app:app",
        ]

    def cwd(self) -> Path:
        return ROOT / "bench" / "anchors"

    def subscribers(self, topic: str) -> int:
        status, body = http_get(f"http://{self.host}:{self.port}/count/{topic}")
        return json.loads(body)["subscribers"] if status == 200 else -1


class Redis(Server):
    """A throwaway redis-server (no persistence) for the Redis-backend fan-out."""

    name = "redis"

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None
