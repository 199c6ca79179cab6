"""SockJS on the application: STOMP, the seed's endpoint, and the ``/ws`` JSON protocol.

Three :class:`~app.transports.sockjs_http.SockJSService` mounts, each the same
application as its WebSocket twin, with the same origin check, limits, access control
and metrics (``switchboard_open_connections{transport="sockjs-<transport>"}``):

=====================  ===========================================================
``/stomp-sockjs``      STOMP, the broker of ``/stomp`` (every feature: receipts,
                       acks, transactions, heart-beats, resume, limits)
``/websocket/stomp``   the seed's endpoint: STOMP with ``/sub`` and ``/pub`` and
                       the seed's chat body (:mod:`.sockjs_seed`)
``/ws-sockjs``         the ``/ws`` JSON ops (:mod:`.websocket`)
=====================  ===========================================================

Admission (:func:`admission`) for a session made by an HTTP request: one stream slot
(``SWITCHBOARD_MAX_CONNECTIONS*``) for the session's life and the request's credentials
(cookie, ``?ticket=``, ``Authorization``), as a WebSocket handshake is admitted.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

from flask import Flask, url_for

from ..auth import Access, AccessError
from ..identity import current_sender
from ..limits import Limits
from ..metrics import Metrics
from ..services import Services
from ..sockjs import SessionConfig
from . import stomp_ws, websocket
from .sockjs_channel import SockJSChannel
from .sockjs_http import SessionContext, SockJSService
from .sockjs_seed import seed_broker
from .stomp_ws import STOMP_PROTOCOLS

__all__ = ["STOMP_PROTOCOLS", "admission", "init_app"]


def admission(limits: Limits, access: Access):
    """The mounts' admission check (see :data:`app.transports.sockjs_http.Admission`)."""

    def admit(environ: Mapping, transport: str, session_id: str, take_slot: bool):
        slot = limits.open_stream(environ, "sockjs") if take_slot else None  # LimitExceeded refuses
        try:
            identity = access.credentials(environ)  # AccessError refuses
        except Exception:
            if slot is not None:
                slot.release()
            raise
        context = SessionContext(
            session_id,
            transport,
            current_sender(),
            identity,
            limits.client(environ),
            _same_user(access, identity, environ),
        )
        return context, (slot.release if slot is not None else _nothing)

    return admit


def _same_user(access: Access, identity, environ: Mapping) -> Callable[[Mapping], bool]:
    """Whether a later request of a session is its opener's: the same token subject again
    (cookie or Bearer), or the same ticket in the query (sockjs-client repeats the URL's query
    on every request; the ticket was spent opening the session, and logs redact it). An
    anonymous session has no one to prove, as Spring's sessions without a principal."""
    if identity is None or identity.sub is None:
        return _anyone
    if identity.via == "ticket":
        opened_with = _ticket_digest(environ)
        return lambda later: hmac.compare_digest(_ticket_digest(later), opened_with)
    subject = identity.sub

    def same_subject(later: Mapping) -> bool:
        try:
            proved = access.credentials(later)
        except AccessError:
            return False
        return proved is not None and proved.sub == subject

    return same_subject


def _ticket_digest(environ: Mapping) -> bytes:
    ticket = parse_qs(environ.get("QUERY_STRING", "")).get("ticket", [""])[0]
    return hashlib.sha256(ticket.encode("utf-8")).digest()


def _anyone(environ: Mapping) -> bool:
    return True


def _nothing() -> None:
    pass


def stomp_handler(broker: stomp_ws.Broker) -> Callable:
    """A STOMP session of ``broker`` on each SockJS session."""

    def handle(channel, context: SessionContext) -> None:
        on_connect = None
        if isinstance(channel, SockJSChannel):

            def on_connect(connect) -> None:
                # As Spring: once the server sends STOMP heart-beats, SockJS's own "h" frames
                # are redundant bytes.
                if connect.heart_beat[1] > 0:
                    channel.disable_heartbeat()

        broker.serve(
            channel,
            context.sender,
            context.client,
            context.identity,
            transport=f"sockjs-{context.transport}",
            on_connect=on_connect,
        )

    return handle


def ws_handler(hub, metrics: Metrics, limits: Limits, access: Access, grace: float, delivery=None) -> Callable:
    """A ``/ws`` JSON-ops connection on each SockJS session."""

    def handle(channel, context: SessionContext) -> None:
        identity = context.identity or access.anonymous(context.sender)
        connection = websocket.Connection(channel, hub, identity.sender, metrics, limits, context.client, delivery)
        connection.with_access(access, identity, grace)
        with metrics.connection(f"sockjs-{context.transport}"):
            connection.run()

    return handle


def init_app(app: Flask, services: Services) -> dict[str, tuple[str, ...]]:
    """Mount the three SockJS endpoints (the first shares /stomp's broker); return their WebSocket paths."""
    settings, hub, metrics = services.settings, services.hub, services.metrics
    limits, access, delivery = services.limits, services.access, services.delivery
    config = SessionConfig(settings.sockjs_heartbeat, settings.sockjs_disconnect_delay, settings.sockjs_response_limit)
    admit = admission(limits, access)
    seed = seed_broker(hub, settings, metrics=metrics, limits=limits, access=access)
    seed.delivery = delivery  # the worker's one fan-out
    common: dict[str, Any] = dict(
        max_body=settings.max_message_bytes,
        write_timeout=settings.write_timeout or None,
        sockjs_url="/static/vendor/sockjs-client/sockjs.min.js",
        origins=services.origins,
        limits=limits,
        metrics=metrics,
    )
    mounts = [
        SockJSService(
            "stomp",
            "/stomp-sockjs",
            stomp_handler(services.broker),
            admit,
            config,
            protocols=STOMP_PROTOCOLS,
            **common,
        ),
        SockJSService(
            "seed", "/websocket/stomp", stomp_handler(seed), admit, config, protocols=STOMP_PROTOCOLS, **common
        ),
        SockJSService(
            "ws",
            "/ws-sockjs",
            ws_handler(hub, metrics, limits, access, settings.auth_refresh_grace, delivery),
            admit,
            config,
            **common,
        ),
    ]
    for mount in mounts:
        mount.register(app)
    from .. import sockjs_page  # the /sockjs page: its client uses the seed's mount

    app.register_blueprint(sockjs_page.bp)
    services.shutdown.add("stomp-seed", seed.shutdown)  # ERROR frames first, as /stomp's
    services.shutdown.add("sockjs", lambda timeout: [mount.shutdown(timeout / len(mounts)) for mount in mounts])

    @app.context_processor
    def sockjs_urls() -> dict:
        # For the pages: where each SockJS mount is, with this app's URL prefix if any.
        return {"sockjs_urls": {mount.name: url_for(f"sockjs_{mount.name}_greeting") for mount in mounts}}

    paths: dict[str, tuple[str, ...]] = {}
    for mount in mounts:
        paths.update(mount.websocket_paths())
    return paths
