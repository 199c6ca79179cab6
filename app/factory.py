"""Assemble the Flask application: settings, hub, error handlers, blueprints."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Callable

from flask import Flask
from gevent import monkey
from gevent.event import Event as StopFlag
from werkzeug.middleware.proxy_fix import ProxyFix

from . import api, doctor_api, errors, i18n, pages, queues_api, security
from . import limits as limits_module
from .auth import Access, AccessError, Unauthorized
from .auth import demo as auth_demo
from .auth import web as auth_web
from .auth.patterns import PatternSet
from .config import Settings
from .delivery import Delivery
from .hub import Hub
from .hub.memory import MemoryBackend
from .hub.memory_queues import MemoryQueues
from .hub.queues import QueueLimits
from .limits import LimitExceeded, Limits
from .metrics import STREAMING, HubObserver, Metrics, QueueObserver
from .producers import start_producers
from .server.handshake import Refusal, WebSocketPolicy
from .server.hooks import ServerHooks
from .services import EXTENSION, Services
from .session_cookie import SessionCookies
from .transports import TRANSPORTS
from .transports.stomp_ws import Broker

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_backend(settings: Settings):
    """The history/fan-out backend the settings ask for."""
    if settings.redis_enabled:
        from .hub.redis import RedisBackend

        return RedisBackend(
            settings.redis_url,
            settings.history_size,
            settings.history_ttl,
            history_bytes=settings.history_bytes,
            max_topics=settings.max_topics,
            prefix=settings.redis_prefix,
            cluster=settings.redis_cluster,
            sentinels=settings.redis_sentinels,
            sentinel_master=settings.redis_sentinel_master,
            min_replicas=settings.redis_min_replicas,
            replica_timeout=settings.redis_replica_timeout,
            routing=settings.redis_routing,
        )
    return MemoryBackend(
        settings.history_size,
        settings.history_ttl,
        history_bytes=settings.history_bytes,
        max_topics=settings.max_topics,
    )


def make_queues(settings: Settings, observer=None):
    """The work-queue store the settings ask for (app/hub/queues.py): in memory, or Redis Streams."""
    limits = QueueLimits(
        max_messages=settings.queue_max_messages,
        max_bytes=settings.queue_max_bytes,
        max_queues=settings.max_queues,
        ack_timeout=settings.queue_ack_timeout,
        max_deliveries=settings.queue_max_deliveries,
    )
    if settings.redis_enabled:
        from .hub.redis_queues import RedisQueues

        return RedisQueues(
            settings.redis_url,
            limits,
            observer=observer,
            prefix=settings.redis_prefix,
            sentinels=settings.redis_sentinels,
            sentinel_master=settings.redis_sentinel_master,
            cluster=settings.redis_cluster,
        )
    return MemoryQueues(limits, observer=observer)


class Shutdown:
    """What the application does when its server process begins a graceful stop.

    ``create_app`` hands one of these to the server (``app.switchboard_server``, :mod:`app.server.hooks`); the gunicorn
    worker class (app/server/lifecycle.py) calls it on SIGTERM, before it sends 1001 to
    the WebSockets still open. Callbacks run in the order they were added, each given
    the seconds left; one that fails is logged and the next still runs. Transports add
    theirs in ``init_app``; the hub's closing comes last (see :func:`build_app`).
    ``stopping`` is set before the first callback runs (held doctor responses wait on it).
    """

    def __init__(self) -> None:
        self._callbacks: list[tuple[str, Callable[[float], None]]] = []
        self.started = False
        self.stopping = StopFlag()

    def add(self, name: str, callback: Callable[[float], None]) -> None:
        """Run ``callback(seconds_left)`` on shutdown; it should return within that time."""
        self._callbacks.append((name, callback))

    def __call__(self, timeout: float) -> None:
        """Run every callback once (later calls do nothing), within about ``timeout`` seconds."""
        if self.started:
            return
        self.started = True
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for name, callback in self._callbacks:
            try:
                callback(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.error("shutdown step %r failed", name, exc_info=True)


def _websocket_admission(limits: Limits, access: Access, metrics: Metrics):
    """The WebSocket policy's ``admit`` hook, before the 101: the stream limits, then the
    handshake's credentials (cookie, ``?ticket=``, ``Authorization``; a token in the URL
    is 400). The identity is kept in the environ, so the view after the 101 reads the same
    one: a ticket is spent here, once. A handshake without credentials is admitted (an
    anonymous ``/ws`` client may still send op ``auth``; STOMP CONNECT may carry a token)."""

    def admit(environ):
        try:
            slot = limits.open_stream(environ, "websocket")
        except LimitExceeded as exc:
            return Refusal(exc.status, exc.code, exc.message, tuple(exc.headers.items()))
        try:
            access.credentials(environ)
        except AccessError as exc:
            slot.release()
            transport = "stomp" if environ.get("PATH_INFO") == "/stomp" else "websocket"
            metrics.auth_refusals.labels(exc.code, transport).inc()
            return Refusal(exc.status, exc.code, exc.message, _refusal_headers(exc))
        return slot.release

    return admit


def _refusal_headers(exc: AccessError) -> tuple[tuple[str, str], ...]:
    # As the HTTP error handler (app/auth/web.py) answers the same errors.
    if isinstance(exc, Unauthorized):
        return (("WWW-Authenticate", exc.www_authenticate()),)
    if exc.status == 503:
        return (("Retry-After", "1"),)
    return ()


def build_app(test_config=None) -> Flask:
    """See :func:`app.create_app`."""
    settings = Settings.load(overrides=test_config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = Flask(__name__, root_path=ROOT, static_folder="static", template_folder="templates")
    app.secret_key = settings.signing_key()
    app.session_interface = SessionCookies()  # the guest's signed cookie, verified and signed once per value
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_message_bytes,
        SESSION_COOKIE_NAME="switchboard_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.json.compact = True
    # Werkzeug would answer /api/topics/a%2F/events (PATH_INFO .../a//events) with a 308
    # to /api/topics/a/events: a POST re-sent to another topic, and an HTML body. A
    # path that is not a route is a JSON 404. Set before any rule is added.
    app.url_map.merge_slashes = False

    metrics = Metrics()
    presence_topics = PatternSet(settings.presence_topics).allows if settings.presence_topics else None
    hub = Hub(
        make_backend(settings),
        queue_size=settings.queue_size,
        observer=HubObserver(metrics),
        queue_bytes=settings.queue_bytes,
        queues=make_queues(settings, QueueObserver(metrics)),
        presence_topics=presence_topics,
        presence_ttl=settings.presence_ttl,
    )
    limits = Limits(settings, metrics)
    shutdown = Shutdown()
    # The worker's one fan-out from subscriptions to sockets (app/delivery/).
    delivered = {name: metrics.delivered.labels(name) for name in STREAMING}
    latency = {name: metrics.delivery_latency.labels(name) for name in STREAMING}
    delivery = Delivery(
        delivered=lambda transport, count: delivered[transport].inc(count),
        observe_latency=lambda transport, seconds: latency[transport].observe(seconds),
    )

    access = Access(
        settings, app.secret_key, hub.claim_once, count_hook=lambda result: metrics.auth_hook.labels(result).inc()
    )
    broker = Broker.from_settings(hub, settings, metrics=metrics, limits=limits, access=access)
    broker.delivery = delivery
    services = Services(
        settings=settings,
        hub=hub,
        metrics=metrics,
        limits=limits,
        access=access,
        delivery=delivery,
        broker=broker,
        origins=WebSocketPolicy(allowed_origins=settings.allowed_origins, trust_forwarded=settings.behind_proxy),
        shutdown=shutdown,
    )
    app.extensions[EXTENSION] = services  # the one place they are kept (app/services.py)

    errors.init_app(app)
    security.init_app(app)
    i18n.init_app(app)  # the pages' language (cookie, else Accept-Language) and the switch
    auth_web.init_app(app, metrics)
    auth_demo.init_app(app, settings)  # POST /api/demo/session, only with SWITCHBOARD_DEMO_USERS
    limits_module.init_app(app, limits)
    app.register_blueprint(api.bp)
    app.register_blueprint(queues_api.bp)
    app.register_blueprint(pages.bp)
    doctor_api.init_app(app)  # the proxy doctor's endpoints (/api/doctor/...)
    protocols: dict[str, tuple[str, ...]] = {}  # /ws, /stomp and SockJS's WebSocket URLs
    for transport in TRANSPORTS:
        protocols.update(transport.init_app(app, services))

    # Read by the WebSocket handler (app/server/handler.py) before it answers 101.
    policy = replace(
        services.origins,
        protocols=protocols,
        max_message_bytes=settings.max_message_bytes,
        ping_interval=settings.ws_ping_interval,
        ping_timeout=max(settings.ws_ping_interval, 1.0),
        admit=_websocket_admission(limits, access, metrics),
        write_timeout=settings.write_timeout or None,
    )

    producers = start_producers(services)  # the ticks demo producer; only under gevent (see app/producers.py)
    if monkey.is_module_patched("socket"):  # a gunicorn worker or `python wsgi.py`: greenlets run
        metrics.watch_backend(hub.backend)

    # Graceful stop (DESIGN.md §8). The transports added their steps in init_app (STOMP:
    # an ERROR frame to every session). Then the producers give up their lock, so a
    # worker that stays takes over at once, and the hub closes every subscription with
    # reason "shutdown": SSE streams end with a last jittered retry:, parked long polls
    # answer 204, /ws subscriptions end; the worker (app/server/lifecycle.py) then sends 1001 to the WebSockets left.
    shutdown.add("producers", lambda timeout: [producer.stop() for producer in producers])
    # The backend stays open: a publish or a poll still in flight may need it until the
    # process exits (closing Redis's pool under them would fail them, or lose the answer
    # of a publish that was stored).
    shutdown.add("hub", lambda timeout: hub.close("shutdown", backend=False))
    app.switchboard_server = ServerHooks(policy=policy, shutdown=shutdown)  # what the server reads of us

    if settings.behind_proxy:
        # One trusted hop (nginx): X-Forwarded-For/-Proto/-Host become the request's own.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    return app
