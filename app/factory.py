"""Assemble the Flask application: settings, hub, error handlers, blueprints."""

from __future__ import annotations

import logging
import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import api, errors, pages, security
from .config import ConfigError, Settings
from .hub import Hub
from .hub.memory import MemoryBackend
from .producers import start_producers
from .metrics import HubObserver, Metrics
from .transports import TRANSPORTS
from .transports.wsio import WebSocketPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_backend(settings: Settings):
    """The history/fan-out backend the settings ask for."""
    if settings.redis_url:
        try:
            from .hub.redis import RedisBackend
        except ImportError as exc:  # the Redis backend is optional until it lands
            raise ConfigError(f"SWITCHBOARD_REDIS_URL is set but the Redis backend is unavailable: {exc}") from None
        return RedisBackend(settings.redis_url, settings.history_size, settings.history_ttl)
    return MemoryBackend(settings.history_size, settings.history_ttl)


def build_app(test_config=None) -> Flask:
    """See :func:`app.create_app`."""
    settings = Settings.load(overrides=test_config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = Flask(__name__, root_path=ROOT, static_folder="static", template_folder="templates")
    app.secret_key = settings.signing_key()
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_message_bytes,
        SESSION_COOKIE_NAME="switchboard_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.json.compact = True

    metrics = Metrics()
    hub = Hub(make_backend(settings), queue_size=settings.queue_size, observer=HubObserver(metrics))
    app.extensions["switchboard.settings"] = settings
    app.extensions["switchboard.hub"] = hub
    app.extensions["switchboard.metrics"] = metrics

    errors.init_app(app)
    security.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    for transport in TRANSPORTS:
        transport.init_app(app)

    # Read by the WebSocket handler (app/transports/wsio.py) before it answers 101.
    app.switchboard_ws_policy = WebSocketPolicy(
        allowed_origins=settings.allowed_origins,
        protocols={"/ws": (), "/stomp": ("v12.stomp", "v11.stomp", "v10.stomp")},
        max_message_bytes=settings.max_message_bytes,
        ping_interval=settings.ws_ping_interval,
        ping_timeout=max(settings.ws_ping_interval, 1.0),
        trust_forwarded=settings.behind_proxy,
    )

    start_producers(app)  # the ticks demo producer; only under gevent (see app/producers.py)

    if settings.behind_proxy:
        # One trusted hop (nginx): X-Forwarded-For/-Proto/-Host become the request's own.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    return app
