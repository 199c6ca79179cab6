"""The SockJS protocol test suite's services, on the SockJS layer alone (not the production app).

Run: ``gunicorn -k app.server.lifecycle.Worker tests.support.sockjs_test_app:app``.

sockjs-protocol-0.3.3.py expects, under one base URL:

* ``/echo``: every message comes back;
* ``/close``: the session closes at once with ``c[3000,"Go away!"]``;
* ``/disabled_websocket_echo``: ``/echo`` with WebSockets off (``/info`` says so);
* ``/cookie_needed_echo``: ``/echo`` setting ``JSESSIONID`` (``/info``: ``cookie_needed``).

Streaming responses end after 4096 bytes here (the suite's ``response_limit`` tests);
timings come from ``SOCKJS_TEST_HEARTBEAT`` and ``SOCKJS_TEST_DISCONNECT_DELAY`` (seconds),
so a test can watch heartbeats and timeouts without waiting 25 s.
"""

from __future__ import annotations

import os
from dataclasses import replace

from flask import Flask

from app.server.handshake import WebSocketPolicy
from app.server.hooks import ServerHooks
from app.sockjs import GO_AWAY, SessionConfig
from app.transports.sockjs_http import SessionContext, SockJSService


def _admit(environ, transport, session_id, take_slot):
    return SessionContext(session_id, transport, "tester", None, environ.get("REMOTE_ADDR", "?")), lambda: None


def echo(channel, context) -> None:
    while True:
        message = channel.receive()
        if message is None:
            return
        channel.send(message)


def close(channel, context) -> None:
    channel.close(*GO_AWAY)


def create_app(env=os.environ) -> Flask:
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # as the production app: '//' is no greeting
    config = SessionConfig(
        heartbeat_interval=float(env.get("SOCKJS_TEST_HEARTBEAT", "25")),
        disconnect_delay=float(env.get("SOCKJS_TEST_DISCONNECT_DELAY", "5")),
        response_limit=4096,
    )
    allowed = tuple(item for item in env.get("SOCKJS_TEST_ALLOWED_ORIGINS", "*").split(",") if item)
    origins = WebSocketPolicy(allowed_origins=allowed)
    services = [
        SockJSService("echo", "/echo", echo, _admit, config, origins=origins),
        SockJSService("close", "/close", close, _admit, config, origins=origins),
        SockJSService("wsoff", "/disabled_websocket_echo", echo, _admit, config, websocket=False, origins=origins),
        SockJSService("cookie", "/cookie_needed_echo", echo, _admit, config, cookie_needed=True, origins=origins),
    ]
    protocols: dict[str, tuple[str, ...]] = {}
    for service in services:
        service.register(app)
        protocols.update(service.websocket_paths())
    # What the server layer reads of an application (app/server/hooks.py).
    app.switchboard_server = ServerHooks(policy=replace(origins, protocols=protocols, ping_interval=0))
    app.sockjs_services = services
    return app


app = create_app()
