"""static/js/switchboard.js under Node against a real gunicorn (and redis-server).

The tests themselves are ``tests/js/client/*.test.mjs`` (node:test): each file starts the
servers it needs (``support.mjs``) and drives the library as an application would. This
module runs one file per test, so pytest reports and selects them like any other, and
passes its own Python so that the gunicorn they start is this checkout's.

Node 20 has no built-in WebSocket: the files hand the library the ``ws`` package (from
``tests/js/node_modules``, ``make node-deps``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TESTS = ROOT / "tests" / "js" / "client"
NODE = shutil.which("node")

# file -> (marks, seconds it may take at time scale 1)
FILES = {
    "basic.test.mjs": ((), 120),
    "restart.test.mjs": ((pytest.mark.redis,), 180),
    "access.test.mjs": ((), 120),
    "eventsource.test.mjs": ((), 120),
    "churn.test.mjs": ((pytest.mark.soak, pytest.mark.redis), 240),
}


def run_node_tests(name: str, budget: float) -> subprocess.CompletedProcess:
    if NODE is None or not (ROOT / "tests" / "js" / "node_modules" / "ws").is_dir():
        pytest.fail("Node and tests/js/node_modules are required: run `make node-deps`")
    env = {**os.environ, "SWITCHBOARD_PYTHON": sys.executable}
    return subprocess.run(
        # --test-force-exit: a handle a failed test left open must not hold the run for ever.
        [NODE, "--test", "--test-concurrency=1", "--test-force-exit", "--test-reporter=tap", str(CLIENT_TESTS / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(budget),
    )


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks) for name, (marks, _) in FILES.items()])
def test_switchboard_js(name):
    result = run_node_tests(name, FILES[name][1])
    report = result.stdout[-20000:] + result.stderr[-4000:]
    assert result.returncode == 0, report
    assert "# fail 0" in result.stdout, report
    assert "# pass 0" not in result.stdout, "no test ran:\n" + report
