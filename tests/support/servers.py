"""Real server processes for the tests: gunicorn with the real worker class, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from .timing import scaled, wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` as the README runs it, on a free port.

    Args:
        log_dir: where the server's output goes (shown when a test fails).
        env: extra environment variables (SWITCHBOARD_* settings).
        port: the port; a free one by default.
    """

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"gunicorn-{self.port}.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Gunicorn":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            wait_until(self._ready, timeout=30, interval=0.05, message=f"gunicorn on {self.url}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """PIDs of the master's worker processes."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the master and wait for it; kill the whole group if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(scaled(5))
        finally:
            self._log.close()

    def __enter__(self) -> "Gunicorn":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
