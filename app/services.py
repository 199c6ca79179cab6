"""The objects ``create_app`` builds, and the one way to reach them.

``create_app`` (app/factory.py) builds one :class:`Services` and keeps it on the app; the
blueprints' ``init_app`` and the objects built at start-up are handed it, and a view
reaches it with :func:`services`. Nothing else keeps a service on the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:  # the web stack's types; importing them here would load it all
    from .auth import Access
    from .config import Settings
    from .delivery import Delivery
    from .factory import Shutdown
    from .hub import Hub
    from .limits import Limits
    from .metrics import Metrics
    from .producers import TicksProducer
    from .server.handshake import WebSocketPolicy
    from .transports.sse_keeper import SseKeeper
    from .transports.stomp_ws import Broker

EXTENSION = "switchboard"


@dataclass(frozen=True)
class Services:
    """What a request or a transport needs of the application, built once per app.

    Attributes:
        settings: every setting (app/config.py).
        hub: publish, subscribe, history, presence and queues.
        metrics: the Prometheus counters.
        limits: the connection, rate and size limits.
        access: who a request is, and what it may do.
        delivery: the worker's one fan-out from subscriptions to sockets (app/delivery/).
        broker: the STOMP broker of ``/stomp`` and its SockJS mount.
        origins: the WebSocket policy's Origin rules (allowed origins, trusted forwarded
            headers), which a SockJS session checks too.
        shutdown: the steps of a graceful stop; ``shutdown.stopping`` is set once it begins.
        producers: the demo producers running (none outside gevent, or without ticks).
        sse_keeper: the worker's one timer of its SSE streams (heartbeats, expiry, each
            stream's end: app/transports/sse_keeper.py).
    """

    settings: Settings
    hub: Hub
    metrics: Metrics
    limits: Limits
    access: Access
    delivery: Delivery
    broker: Broker
    origins: WebSocketPolicy
    shutdown: Shutdown
    producers: list[TicksProducer] = field(default_factory=list)
    sse_keeper: SseKeeper = field(default_factory=lambda: _sse_keeper())


def _sse_keeper() -> SseKeeper:
    from .transports.sse_keeper import SseKeeper  # the web stack: loaded with the app, not here

    return SseKeeper()


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the current request's app."""
    return (current_app if app is None else app).extensions[EXTENSION]
