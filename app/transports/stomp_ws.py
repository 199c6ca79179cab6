"""STOMP over WebSocket: the broker between STOMP sessions and the hub (DESIGN.md §6).

A thin I/O adapter around the sans-I/O :class:`app.stomp.StompSession`:

* WebSocket messages (text or binary) -> ``session.receive_data``;
* ``session.data_to_send()`` -> one WebSocket message per chunk, text when the chunk
  is UTF-8, else binary (a MESSAGE whose body is not UTF-8);
* session requests -> the hub: SUBSCRIBE to a topic opens a hub subscription delivered
  as a feed of the worker's delivery layer (:mod:`app.transports.stomp_delivery`, no
  greenlet of its own; a work queue's consumer keeps its greenlet, stomp_queues.py), SEND
  publishes (or calls an application handler), ACK reopens a prefetch window, the end of
  the session releases everything;
* hub events -> ``session.deliver``; a timer greenlet calls ``session.tick`` at
  ``session.next_deadline()`` (heart-beats, silent clients, CONNECT timeout).

One lock serialises "act on the session's requests, confirm them, then write what it
queued", so frames leave in the order the session produced them, a publish happens before
the RECEIPT of its SEND goes out, an ERROR is the last frame (the session looks at no frame
sent after a refused one), and a greenlet that queued a frame waits until it is written (a
slow socket slows its own session, nobody else).

This module holds the :class:`Broker` (one per app) and the ``/stomp`` view; one
connection's reader, timer and request handlers are :mod:`app.transports.stomp_connection`'.
Destinations are :mod:`app.transports.stomp_destinations`' (topics, wildcards, queues,
``/user``, ``/app``); the frame <-> event mapping is :mod:`app.transports.stomp_mapping`'
(bodies and user headers pass through); what a SEND or a COMMIT publishes, checked first
and stored all together or not at all, is :mod:`app.transports.stomp_publish`'.

Resume and gaps: SUBSCRIBE with ``last-event-id`` replays what came after it, then
goes live, exactly once and in order (the hub's seam rule). A cursor too old (or
from before a restart) first gets a MESSAGE with ``gap:true`` and an empty body. A
subscriber that falls behind its queue and history both gets that MESSAGE, then
ERROR "slow consumer", and is closed (1008).

Flow control: in ``client``/``client-individual`` ack modes at most
``prefetch-count`` (capped by the session) messages are unacknowledged; while the
window is full the delivery layer takes nothing from the hub, whose bounded
queue and history catch-up absorb the backlog (or end in the slow-consumer rule).

Closing: every ERROR is written, then the WebSocket closes with a code chosen by the
error's kind (:data:`CLOSE_CODES`): 1002 for broken frames and protocol violations,
1008 for refused credentials, destinations, bodies and limits, 1011 (as wsio's
keepalive) when a client stops sending heart-beats, 1000 after DISCONNECT.

Access control (:mod:`app.transports.stomp_auth`): CONNECT proves who the client is
(a token as ``passcode`` or ``Authorization: Bearer``, the handshake's cookie or ticket,
or the shared login), each SUBSCRIBE and SEND destination is authorized, and the token's
expiry ends the session (ERROR "token expired"). Refusals are ERROR frames, then 1008.

Limits (``app/limits.py``): at most ``SWITCHBOARD_MAX_SUBSCRIPTIONS`` subscriptions
per session; SENDs beyond ``SWITCHBOARD_PUBLISH_RATE``/``_BURST`` for the connection
get ERROR "publish rate exceeded" (nothing published) and 1008; a SEND to a new topic
beyond ``SWITCHBOARD_MAX_TOPICS`` gets ERROR "too many topics" (nothing published) and
1008. Shutdown (DESIGN.md §8): every session gets ERROR "server shutting down" with a
reconnect hint, then 1001 (:meth:`Broker.shutdown`, run by the app's shutdown hook
before wsio's own 1001).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import gevent.event
import gevent.lock
import gevent.pool
from flask import Blueprint, Flask, request

from ..auth import Access, AccessError, Identity
from ..auth.demo import DEMO_QUEUES
from ..config import Settings
from ..delivery import Delivery
from ..errors import ApiError
from ..events import Event
from ..hub import Hub
from ..identity import current_sender
from ..limits import Limits
from ..metrics import Metrics
from ..services import Services, services
from ..stomp import (
    TOKEN_EXPIRED,
    Connect,
    StompConfig,
)
from ..stomp import Limits as FrameLimits
from ..stomp_handlers import Handlers, default_handlers
from .stomp_auth import shared_login
from .stomp_connection import CLOSE_CODES, PACE, Connection
from .stomp_destinations import Destinations
from .stomp_mapping import BINARY_TYPE, BodyError, decode_send_body, encode_message, message_tail
from .wsio import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    ENVIRON_WEBSOCKET,
)

__all__ = [
    "BINARY_TYPE",
    "CLOSE_CODES",
    "PACE",
    "SERVER_HEART_BEAT",
    "STOMP_PROTOCOLS",
    "Broker",
    "Connection",
    "BodyError",
    "Destinations",
    "bp",
    "decode_send_body",
    "encode_message",
    "init_app",
]

log = logging.getLogger(__name__)


bp = Blueprint("stomp_ws", __name__)

# The sub-protocols of /stomp and its SockJS mounts, highest version first (DESIGN.md §5).
STOMP_PROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")

#: The default CONNECTED ``heart-beat`` (sx, sy), in ms (``SWITCHBOARD_STOMP_HEARTBEAT_MS``
#: sets it). Both are floors, as the negotiation takes the larger of each pair (STOMP 1.2,
#: "Heart-beating"): the server never sends heart-beats more often than once a second,
#: and never asks a client for more than one a second; beyond that the client's offer
#: decides (stompjs asks 10000,10000).
SERVER_HEART_BEAT = (1000, 1000)


class Broker:
    """The application's STOMP broker: one per app, shared by its connections.

    Args:
        hub: the event hub.
        destinations: the destination rules.
        config: the session settings (limits, heart-beats, login hook, destination hook).
        metrics: where to count connections, deliveries and ERROR frames, if anywhere.
        limits: the publish-rate limit per connection, and where refusals are counted.
        access: access control; without it the config's login hook alone decides.
        shared_login: the shared ``(login, passcode)`` (SWITCHBOARD_STOMP_LOGIN/_PASSCODE).
    """

    def __init__(
        self,
        hub: Hub,
        destinations: Destinations,
        config: StompConfig,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        access: Access | None = None,
        shared_login: tuple[str | None, str | None] = (None, None),
    ) -> None:
        self.hub = hub
        self.destinations = destinations
        self.config = config
        self.metrics = metrics
        self.limits = limits
        self.access = access
        self.shared_login = shared_login
        self.connections: set[Connection] = set()
        self.delivery = Delivery()  # create_app gives it the application's (one fan-out per worker)
        # How an event becomes a MESSAGE; the seed's /websocket/stomp mount swaps both
        # (app/transports/sockjs_seed.py: its chat body is {"sender", "message"}).
        self.encode_message: Callable[[Event], tuple[bytes, tuple[tuple[str, str], ...]]] = encode_message
        self.message_tail: Callable[[Event, bool], bytes] = message_tail
        # Events this broker's subscribers never receive (None: all); the seed's mount has no
        # presence, as the seed's Spring server has none (sockjs_seed.py).
        self.withholds: Callable[[Event], bool] | None = None

    @classmethod
    def from_settings(
        cls,
        hub: Hub,
        settings: Settings,
        handlers: Handlers | None = None,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        access: Access | None = None,
    ) -> "Broker":
        """Build the broker the settings describe (prefixes, credentials, size limit)."""
        destinations = Destinations(
            settings.stomp_topic_prefix,
            settings.stomp_app_prefix,
            handlers if handlers is not None else default_handlers(),
            settings.stomp_queue_prefix,
            settings.stomp_user_prefix,
        )
        config = StompConfig(
            # One limit for a WebSocket message and a STOMP frame: a frame that fits in one
            # message fits the parser too; one spread over several messages is cut at the same size.
            limits=FrameLimits(max_frame_bytes=settings.max_message_bytes),
            heart_beat=settings.stomp_heartbeat_ms,
            authenticate=shared_login(settings.stomp_login, settings.stomp_passcode),
            validate_destination=destinations.problem,
            max_subscriptions=settings.max_subscriptions,
            shared_queue=destinations.shared_queue,
            max_deliveries=settings.queue_max_deliveries,
        )
        return cls(hub, destinations, config, metrics, limits, access, (settings.stomp_login, settings.stomp_passcode))

    def serve(
        self,
        ws,
        sender: str,
        client: str = "?",
        identity: Identity | None = None,
        transport: str = "stomp",
        on_connect: Callable[[Connect], None] | None = None,
    ) -> None:
        """Run one STOMP session on an open WebSocket until it ends; release everything.

        ``sender`` is the handshake session's guest name; ``identity`` what its cookie or
        ticket proved, if anything (CONNECT may prove more: see stomp_auth.py). ``ws`` is a
        WebSocket or anything with its receive/send/close surface (a SockJS session:
        app/transports/sockjs_channel.py); ``transport`` labels it in
        ``switchboard_open_connections``, and ``on_connect`` hears the CONNECT (SockJS turns
        its own heartbeats off when STOMP heart-beats are negotiated).
        """
        connection, end = self._open(ws, sender, client, identity, transport, on_connect)
        try:
            connection.run()
        finally:
            end()

    def serve_events(self, ws, sender: str, client: str = "?", identity: Identity | None = None) -> None:
        """As :meth:`serve`, but return at once: the socket hands each message over as it
        comes (``ws.serve_events``), and an idle session costs no greenlet."""
        connection, end = self._open(ws, sender, client, identity, "stomp", None)

        def ended() -> None:
            try:
                connection.end()
            finally:
                end()

        connection.start()
        ws.serve_events(connection.on_message, ended)

    def _open(self, ws, sender, client, identity, transport, on_connect) -> tuple["Connection", Callable[[], None]]:
        """A new session's connection, counted, and what to run once it ended."""
        connection = Connection(self, ws, sender, client=client, identity=identity)
        connection.on_connect = on_connect
        self.connections.add(connection)
        gauge = self.metrics.connections.labels(transport) if self.metrics is not None else None
        if gauge is not None:
            gauge.inc()

        def end() -> None:
            self.connections.discard(connection)
            if gauge is not None:
                gauge.dec()
            self._count_end(connection)

        return connection, end

    def count_error(self, connection: "Connection") -> None:
        """The session's ERROR in the metrics and the limits' refusals, once. The connection
        calls it before its close goes out, so a client that saw the close finds it counted."""
        error = connection.session.error
        if error is None or connection.error_counted:
            return
        connection.error_counted = True
        if self.metrics is not None:
            self.metrics.stomp_errors.labels(connection.error_kind or error.kind).inc()
            if error.message == TOKEN_EXPIRED and connection.session.principal is not None:
                # Ended by expiry mid-stream (the gate counted refusals at CONNECT itself).
                self.metrics.auth_refusals.labels("unauthorized", "stomp").inc()
        if self.limits is not None:
            if error.message == "too many subscriptions":
                self.limits.rejected("subscriptions")
            elif error.message == "frame too large":
                self.limits.rejected("message_size")

    def _count_end(self, connection: "Connection") -> None:
        error = connection.session.error
        self.count_error(connection)
        if self.limits is not None and connection.ws.close_code == CLOSE_MESSAGE_TOO_BIG:
            if error is None or error.message not in ("too many subscriptions", "frame too large"):
                self.limits.rejected("message_size")  # a message over the WebSocket limit, cut by the server

    def shutdown(self, timeout: float) -> None:
        """End every session with ERROR "server shutting down" (and a reconnect hint), then 1001.

        Waits at most ``timeout`` seconds for the frames to be written; a session whose
        peer reads nothing is left to wsio, which cuts it.
        """
        connections = list(self.connections)
        if not connections:
            return
        log.info("STOMP: ending %d session(s) for shutdown", len(connections))
        group = gevent.pool.Group()
        for connection in connections:
            group.spawn(connection.shutdown)
        group.join(timeout=timeout)
        group.kill(block=False)


# -------------------------------------------------------------------------- view


@bp.route("/stomp", websocket=True)
def stomp_socket():
    """Speak STOMP on the upgraded WebSocket until the session ends."""
    ws = request.environ.get(ENVIRON_WEBSOCKET)
    if ws is None:  # only the wsio handler routes upgrades here
        raise ApiError(426, "upgrade_required", "GET /stomp with Upgrade: websocket")
    app_services = services()
    try:
        # Checked before the 101 (app/factory.py) and kept in the environ: this reads it back.
        identity = app_services.access.credentials(request.environ)
    except AccessError as exc:  # only if no admission hook ran (a server without our policy)
        ws.close(CLOSE_POLICY_VIOLATION, exc.message[:120])
        return "", 204
    args = (ws, current_sender(), app_services.limits.client(request.environ), identity)
    # Messages are handed over once this view has returned, by a greenlet that exists only
    # while there is something to read (app/server/reader.py).
    if hasattr(ws, "serve_events"):
        app_services.broker.serve_events(*args)
    else:
        app_services.broker.serve(*args)
    return "", 204


def init_app(app: Flask, services: Services) -> dict[str, tuple[str, ...]]:
    """Register ``/stomp``, served by the app's broker (``services.broker``)."""
    broker, settings = services.broker, services.settings
    app.register_blueprint(bp)
    services.shutdown.add("stomp", broker.shutdown)  # before the hub closes: ERROR frames, then 1001

    @app.context_processor
    def stomp_chat_destinations() -> dict:
        # For the STOMP page: where the demo chat listens and sends, and the work queue its
        # two consumers share, with this app's prefixes.
        destinations = broker.destinations
        queue = f"{destinations.queue_prefix}/{DEMO_QUEUES['stomp']}"
        return {
            "stomp_chat": {"subscribe": f"{destinations.topic_prefix}/chat", "send": f"{destinations.app_prefix}/chat"},
            "stomp_queue": {
                "destination": queue,
                "dlq": f"{queue}.dlq",
                "max_deliveries": settings.queue_max_deliveries,
            },
        }

    return {"/stomp": STOMP_PROTOCOLS}
