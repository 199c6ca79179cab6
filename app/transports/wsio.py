"""The names the transports and the tests have used since the server layer was one module.

The server layer now lives in :mod:`app.server` (handshake policy, WebSocket engine, frame
codec, outbox, pywsgi handler and registry, worker lifecycle); this module only re-exports
it, so code written against ``app.transports.wsio`` (and ``worker_class =
"app.transports.wsio.Worker"`` in an older gunicorn.conf.py) keeps working.
"""

from __future__ import annotations

from ..server.frames import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_MANDATORY_EXTENSION,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
)
from ..server.handler import ENVIRON_CLIENT_GONE, ENVIRON_PROTOCOL, ENVIRON_WEBSOCKET, READ_BUFFER, Handler, Server
from ..server.handshake import (
    DEFAULT_POLICY,
    WEBSOCKET_VERSION,
    Acceptance,
    Refusal,
    WebSocketPolicy,
    is_websocket_request,
    negotiate,
    origin_allowed,
)
from ..server.lifecycle import Worker, graceful_shutdown, serve_dev
from ..server.registry import ENVIRON_REGISTRY, Registry, open_websockets
from ..server.websocket import CLOSE_KEEPALIVE_TIMEOUT, HIGH_WATER, ConnectionClosed, State, WebSocket, WebSocketError

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_DATA",
    "CLOSE_KEEPALIVE_TIMEOUT",
    "CLOSE_MANDATORY_EXTENSION",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NO_STATUS",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_POLICY",
    "ENVIRON_CLIENT_GONE",
    "ENVIRON_PROTOCOL",
    "ENVIRON_REGISTRY",
    "ENVIRON_WEBSOCKET",
    "HIGH_WATER",
    "READ_BUFFER",
    "WEBSOCKET_VERSION",
    "Acceptance",
    "ConnectionClosed",
    "Handler",
    "Refusal",
    "Registry",
    "Server",
    "State",
    "WebSocket",
    "WebSocketError",
    "WebSocketPolicy",
    "Worker",
    "graceful_shutdown",
    "is_websocket_request",
    "negotiate",
    "open_websockets",
    "origin_allowed",
    "serve_dev",
]
