"""Node client scripts (tests/js) as test objects: commands in as JSON lines, records out.

The records have the shapes of tests/js/stomp_client_v7.js (``open``, ``connected``,
``message``, ``receipt``, ``error``, ``heartbeat-in``, ``heartbeat-out``, ``close``);
:meth:`Records.expect` takes the first record of a kind not yet taken, waiting for it.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .timing import scaled

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node")


class Records:
    def __init__(self) -> None:
        self.records: list[dict] = []
        self._untaken: list[dict] = []
        self._queue: queue.Queue = queue.Queue()

    def put(self, record: dict | None) -> None:
        self._queue.put(record)

    def expect(
        self, kind: str, predicate=lambda record: True, timeout: float = 10, what: str = "", allow_error: bool = False
    ) -> dict:
        for record in self._untaken:
            if record["kind"] == kind and predicate(record):
                self._untaken.remove(record)
                return record
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                record = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {what or kind}; got {self.records!r}"[:4000]) from None
            if record is None:
                raise AssertionError(f"client ended: {self.stderr()}; got {self.records!r}"[:4000])
            self.records.append(record)
            assert record["kind"] not in ("exception", "unhandled"), record
            if record["kind"] == "error" and kind != "error" and not allow_error:
                raise AssertionError(f"ERROR frame while waiting for {what or kind}: {record}")
            if record["kind"] == kind and predicate(record):
                return record
            self._untaken.append(record)

    def count(self, kind: str) -> int:
        return sum(1 for record in self.records if record["kind"] == kind)

    def stderr(self) -> str:
        return ""


class NodeClient(Records):
    """``node <script> <args>`` in tests/js, commanded with JSON lines on stdin."""

    def __init__(self, script: str, *args: str) -> None:
        super().__init__()
        if NODE is None or not (JS_DIR / "node_modules" / "sockjs-client").is_dir():
            raise AssertionError("Node and tests/js/node_modules are required: run `make node-deps`")
        self.proc = subprocess.Popen(
            [NODE, script, *args],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.put(json.loads(line))
            except ValueError:
                self.put({"kind": "stdout", "line": line})
        self.put(None)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()[:2000]

    def command(self, op: str, **fields) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(scaled(5))
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
