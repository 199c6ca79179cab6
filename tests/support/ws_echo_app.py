"""A tiny WSGI application for testing ``app.transports.wsio`` under real gunicorn.

Run: ``gunicorn -k app.transports.wsio.Worker tests.support.ws_echo_app:app``.
Its policy (``switchboard_server``) comes from ``WS_ECHO_*`` environment variables (see
``policy_from_env``), so each test server can have its own limits and timings.

HTTP (no upgrade):
    ``GET /stats``: ``{"pid", "rss_bytes", "rss_peak_bytes", "open_websockets"}`` of
    the worker, so a test can watch memory and the socket registry from outside.
    Anything else: 200 ``{"ok": true, "path": ...}``.

WebSocket (``/ws``, ``/stomp``): every message is echoed with its type. ``/declined``
takes the upgrade but the application answers 404 without using the socket (as Flask
does for a route not declared with ``websocket=True``).
Text commands, for the tests that need the server to act:
    ``!protocol``: answer the negotiated sub-protocol (``-`` for none).
    ``!close <code> <reason>``: close with that code.
    ``!raise``: raise inside the application (the handler closes with 1011).
    ``!encoded``: send ``{"n":1}`` with ``send_encoded`` as text, then as binary.
    ``!burst <greenlets> <messages> <size>``: send from several greenlets at once;
    message ``i`` of greenlet ``g`` is ``"g:i:"`` padded with ``"x"`` to ``size`` bytes.
"""

from __future__ import annotations

import json
import os

import gevent

from app.server.hooks import ServerHooks
from app.transports.wsio import (
    ENVIRON_PROTOCOL,
    ENVIRON_WEBSOCKET,
    WebSocketPolicy,
    open_websockets,
)

STOMP_PROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


def policy_from_env(env=os.environ) -> WebSocketPolicy:
    origins = tuple(item for item in env.get("WS_ECHO_ALLOWED_ORIGINS", "").split(",") if item)
    return WebSocketPolicy(
        allowed_origins=origins,
        protocols={"/ws": (), "/stomp": STOMP_PROTOCOLS, "/declined": ()},
        max_message_bytes=int(env.get("WS_ECHO_MAX_BYTES", str(1024 * 1024))),
        ping_interval=float(env.get("WS_ECHO_PING_INTERVAL", "0")),
        ping_timeout=float(env.get("WS_ECHO_PING_TIMEOUT", "20")),
        close_timeout=float(env.get("WS_ECHO_CLOSE_TIMEOUT", "5")),
        trust_forwarded=env.get("WS_ECHO_TRUST_FORWARDED", "") == "1",
    )


def _memory() -> dict:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return {"rss_bytes": fields.get("VmRSS", 0), "rss_peak_bytes": fields.get("VmHWM", 0)}


class EchoApp:
    """The WSGI callable; one instance per worker process."""

    def __init__(self, policy: WebSocketPolicy):
        self.switchboard_server = ServerHooks(policy=policy)

    def __call__(self, environ, start_response):
        ws = environ.get(ENVIRON_WEBSOCKET)
        if ws is not None and environ.get("PATH_INFO") == "/declined":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such route"]
        if ws is not None:
            self._echo(ws, environ)
            return []
        path = environ.get("PATH_INFO", "")
        if path == "/stats":
            body = {"pid": os.getpid(), "open_websockets": open_websockets(environ), **_memory()}
        else:
            body = {"ok": True, "path": path}
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def _echo(self, ws, environ) -> None:
        while True:
            message = ws.receive()
            if message is None:
                return
            if isinstance(message, str) and message.startswith("!"):
                self._command(ws, environ, message)
            else:
                ws.send(message)

    def _command(self, ws, environ, message: str) -> None:
        name, _, rest = message.partition(" ")
        if name == "!protocol":
            ws.send(environ.get(ENVIRON_PROTOCOL) or "-")
        elif name == "!close":
            code, _, reason = rest.partition(" ")
            ws.close(int(code), reason)
        elif name == "!raise":
            raise RuntimeError("the test asked for it")
        elif name == "!encoded":
            ws.send_encoded(b'{"n":1}')
            ws.send_encoded(b'{"n":1}', binary=True)
        elif name == "!burst":
            greenlets, messages, size = (int(part) for part in rest.split())

            def sender(g: int) -> None:
                for i in range(messages):
                    head = f"{g}:{i}:"
                    ws.send(head + "x" * (size - len(head)))

            gevent.joinall([gevent.spawn(sender, g) for g in range(greenlets)], raise_error=True)
        else:
            ws.send(message)


def make_app(env=os.environ) -> EchoApp:
    return EchoApp(policy_from_env(env))


app = make_app()
