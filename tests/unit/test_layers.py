"""The layers' import rules, read from the source (DESIGN.md §2):

* app/server/ imports nothing from the rest of the app (only the standard library,
  gevent, gevent-websocket, gunicorn and itself);
* it is the only package that imports gevent.pywsgi, geventwebsocket or gunicorn;
* the hub never imports the delivery layer, the server or a transport (it never touches a socket).
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
SERVER_ONLY = ("gevent.pywsgi", "geventwebsocket", "gunicorn")


def imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(APP.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module or "")
    return found


def test_server_imports_nothing_from_the_app():
    for path in sorted((APP / "server").glob("*.py")):
        for name in imports(path):
            if name == "app" or name.startswith("app."):
                assert name.startswith("app.server"), f"{path.name} imports {name}"


def test_only_the_server_imports_pywsgi_geventwebsocket_or_gunicorn():
    for path in sorted(APP.rglob("*.py")):
        if path.parent.name == "server":
            continue
        for name in imports(path):
            assert not name.startswith(SERVER_ONLY), f"{path.relative_to(APP)} imports {name}"


def test_the_hub_reaches_no_socket_layer():
    for path in sorted((APP / "hub").glob("*.py")):
        for name in imports(path):
            assert not name.startswith(("app.delivery", "app.server", "app.transports")), f"{path.name} imports {name}"
