"""Prove that app.stomp is sans-I/O (STYLE.md rule 1).

Two checks: the package's source imports nothing but the standard library's
non-I/O modules and itself; and a fresh interpreter, with flask, gevent,
geventwebsocket, redis and socket made unimportable and the parent ``app``
package replaced by an empty stub, imports app.stomp and runs a whole session.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "app"
STOMP_DIR = APP_DIR / "stomp"
SOURCES = sorted(STOMP_DIR.glob("*.py"))

# The I/O stack, plus the modules through which a core could reach a clock,
# a thread or the network behind our back.
BLOCKED = frozenset(
    {
        "flask",
        "werkzeug",
        "gevent",
        "geventwebsocket",
        "redis",
        "socket",
        "_socket",
        "ssl",
        "select",
        "selectors",
        "asyncio",
    }
)
NEVER_IN_SOURCE = BLOCKED | {"app", "time", "datetime", "threading", "logging"}


def test_sources_found():
    assert {p.name for p in SOURCES} >= {"__init__.py", "errors.py", "frames.py", "parser.py", "session.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_source_imports_only_itself_and_pure_stdlib(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # from . import x is the package itself; from .. would reach app.
            assert node.level in (0, 1), f"{path.name}:{node.lineno} imports above app.stomp"
            names = [node.module or ""] if node.level == 0 else []
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in NEVER_IN_SOURCE, f"{path.name}:{node.lineno} imports {name}"


SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys
    import types

    BLOCKED = set(sys.argv[2].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"sans-I/O: {name} is blocked")
            return None

    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not already, f"loaded before the test started: {already}"
    sys.meta_path.insert(0, Blocker())

    # The real app/__init__.py may import Flask; a stub stands in for it, so
    # only app/stomp/ runs.
    stub = types.ModuleType("app")
    stub.__path__ = [sys.argv[1]]
    sys.modules["app"] = stub

    import app.stomp as stomp

    session = stomp.StompSession(stomp.StompConfig(heart_beat=(1000, 1000)), now=0.0)
    session.receive_data(
        b"CONNECT\\naccept-version:1.2\\nheart-beat:1000,1000\\n\\n\\x00"
        b"SUBSCRIBE\\nid:0\\ndestination:/topic/chat\\nack:client\\n\\n\\x00",
        now=0.0,
    )
    kinds = [type(r).__name__ for r in session.requests()]
    assert kinds == ["Connect"], kinds  # the SUBSCRIBE waits until the broker confirms the CONNECT
    session.confirm(0.0)
    kinds = [type(r).__name__ for r in session.requests()]
    assert kinds == ["Subscribe"], kinds
    session.confirm(0.0)
    message_id = session.deliver("0", b"hi", {"content-type": "text/plain"})
    session.receive_data(b"ACK\\nid:" + message_id.encode() + b"\\n\\n\\x00", now=0.5)
    session.confirm(0.5)
    session.tick(1.0)
    session.receive_data(b"DISCONNECT\\nreceipt:1\\n\\n\\x00", now=1.5)
    sent = session.data_to_send()
    assert sent[0].startswith(b"CONNECTED\\n") and sent[-1] == b"RECEIPT\\nreceipt-id:1\\n\\n\\x00", sent
    assert session.closed

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    others = sorted(m for m in sys.modules if m.startswith("app.") and not m.startswith("app.stomp"))
    assert not others, others
    assert not hasattr(stub, "create_app")
    print("sans-io ok")
    """
)


def test_imports_and_runs_with_io_modules_blocked():
    # -I: no user site, no PYTHONPATH, no cwd on sys.path; -S: no site-packages,
    # so nothing installed for the web stack can sneak in.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SCRIPT, str(APP_DIR), ",".join(sorted(BLOCKED))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sans-io ok"


def test_the_blocker_really_blocks():
    # Guard against a test that passes because the blocker does nothing.
    script = SCRIPT.split("import app.stomp")[0] + "import socket\n"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, str(APP_DIR), ",".join(sorted(BLOCKED))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "sans-I/O: socket is blocked" in result.stderr
