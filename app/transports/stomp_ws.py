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
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
from flask import Blueprint, Flask, current_app, request

from ..auth import Access, AccessError, Identity
from ..auth.demo import DEMO_QUEUES
from ..auth.web import access as app_access
from ..config import Settings
from ..errors import ApiError
from ..events import Cursor, InvalidCursor
from ..hub import BackendUnavailable, Hub, QueueFull, SubscriptionClosed
from ..identity import current_sender
from .. import limits as limits_module
from ..limits import Limits
from ..metrics import Metrics
from ..stomp import (
    Ack,
    TOKEN_EXPIRED,
    Closed,
    Commit,
    Connect,
    Nack,
    Send,
    StompConfig,
    StompSession,
    Subscribe,
    Unsubscribe,
)
from ..stomp import Limits as FrameLimits
from ..stomp_handlers import Handlers, default_handlers
from ..delivery import Delivery
from ..delivery.channel import ChannelOutbox
from .stomp_auth import StompGate, shared_login
from .stomp_delivery import StompTopicFramer, is_utf8
from .stomp_destinations import USER_SUB_RE, Destinations, user_topic
from .stomp_mapping import BINARY_TYPE, BodyError, decode_send_body, encode_message, message_tail
from .stomp_publish import RECONNECT_HINT, Refusal, StompPublisher
from .stomp_queues import QueuePump
from .stomp_queues import spawn as spawn_queue_pump
from .wsio import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    ENVIRON_WEBSOCKET,
    WebSocketError,
)

__all__ = [
    "BINARY_TYPE",
    "CLOSE_CODES",
    "SERVER_HEART_BEAT",
    "Broker",
    "BodyError",
    "Destinations",
    "bp",
    "decode_send_body",
    "encode_message",
    "init_app",
]

log = logging.getLogger(__name__)

PACE = 32
"""WebSocket messages a session reads before it lets delivery run (see ``_read``)."""

bp = Blueprint("stomp_ws", __name__)

EXTENSION = "switchboard.stomp"

#: The default CONNECTED ``heart-beat`` (sx, sy), in ms (``SWITCHBOARD_STOMP_HEARTBEAT_MS``
#: sets it). Both are floors, as the negotiation takes the larger of each pair (STOMP 1.2,
#: "Heart-beating"): the server never sends heart-beats more often than once a second,
#: and never asks a client for more than one a second; beyond that the client's offer
#: decides (stompjs asks 10000,10000).
SERVER_HEART_BEAT = (1000, 1000)

#: The WebSocket close code that follows each ERROR, by :attr:`StompError.kind`;
#: ``None`` is a session that ended without an error (DISCONNECT).
CLOSE_CODES: dict[str | None, int] = {
    None: CLOSE_NORMAL,
    # The client's bytes or frames break the protocol.
    "malformed-frame": CLOSE_PROTOCOL_ERROR,
    "bad-escape": CLOSE_PROTOCOL_ERROR,
    "bad-content-length": CLOSE_PROTOCOL_ERROR,
    "protocol-violation": CLOSE_PROTOCOL_ERROR,
    "missing-header": CLOSE_PROTOCOL_ERROR,
    "unsupported-version": CLOSE_PROTOCOL_ERROR,
    # Valid frames the server's policy refuses.
    "bad-destination": CLOSE_POLICY_VIOLATION,
    "auth": CLOSE_POLICY_VIOLATION,
    "forbidden": CLOSE_POLICY_VIOLATION,
    "limit-exceeded": CLOSE_POLICY_VIOLATION,
    "connect-timeout": CLOSE_POLICY_VIOLATION,
    # A silent peer is usually a dead network path, not a broken client: the same
    # code wsio uses when WebSocket pings go unanswered.
    "heartbeat-timeout": CLOSE_KEEPALIVE_TIMEOUT,
    # Broker errors carry their own code (Broker._fail); this is the fallback.
    "broker": CLOSE_POLICY_VIOLATION,
}

_RECONNECT_HINT = RECONNECT_HINT


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    # STOMP 1.2, "Repeated Header Entries": the first one wins.
    for key, value in headers:
        if key == name:
            return value
    return None


# --------------------------------------------------------------------- the broker


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

    def __init__(self, hub: Hub, destinations: Destinations, config: StompConfig,
                 metrics: Metrics | None = None, limits: Limits | None = None, access: Access | None = None,
                 shared_login: tuple[str | None, str | None] = (None, None)) -> None:
        self.hub = hub
        self.destinations = destinations
        self.config = config
        self.metrics = metrics
        self.limits = limits
        self.access = access
        self.shared_login = shared_login
        self.connections: set[Connection] = set()
        self.delivery = Delivery()  # init_app gives it the application's (one fan-out per worker)
        # How an event becomes a MESSAGE; the seed's /websocket/stomp mount swaps both
        # (app/transports/sockjs_seed.py: its chat body is {"sender", "message"}).
        self.encode_message: Callable[[Event], tuple[bytes, tuple[tuple[str, str], ...]]] = encode_message
        self.message_tail: Callable[[Event, bool], bytes] = message_tail
        # Events this broker's subscribers never receive (None: all); the seed's mount has no
        # presence, as the seed's Spring server has none (sockjs_seed.py).
        self.withholds: Callable[[Event], bool] | None = None

    @classmethod
    def from_settings(cls, hub: Hub, settings: Settings, handlers: Handlers | None = None,
                      metrics: Metrics | None = None, limits: Limits | None = None,
                      access: Access | None = None) -> "Broker":
        """Build the broker the settings describe (prefixes, credentials, size limit)."""
        destinations = Destinations(settings.stomp_topic_prefix, settings.stomp_app_prefix,
                                    handlers if handlers is not None else default_handlers(),
                                    settings.stomp_queue_prefix, settings.stomp_user_prefix)
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
        return cls(hub, destinations, config, metrics, limits, access,
                   (settings.stomp_login, settings.stomp_passcode))

    def serve(self, ws, sender: str, client: str = "?", identity: Identity | None = None,
              transport: str = "stomp", on_connect: Callable[[Connect], None] | None = None) -> None:
        """Run one STOMP session on an open WebSocket until it ends; release everything.

        ``sender`` is the handshake session's guest name; ``identity`` what its cookie or
        ticket proved, if anything (CONNECT may prove more: see stomp_auth.py). ``ws`` is a
        WebSocket or anything with its receive/send/close surface (a SockJS session:
        app/transports/sockjs_channel.py); ``transport`` labels it in
        ``switchboard_open_connections``, and ``on_connect`` hears the CONNECT (SockJS turns
        its own heartbeats off when STOMP heart-beats are negotiated).
        """
        connection = Connection(self, ws, sender, client=client, identity=identity)
        connection.on_connect = on_connect
        self.connections.add(connection)
        try:
            if self.metrics is None:
                connection.run()
            else:
                with self.metrics.connection(transport):
                    connection.run()
        finally:
            self.connections.discard(connection)
        self._count_end(connection)

    def _count_end(self, connection: "Connection") -> None:
        error = connection.session.error
        if self.metrics is not None and error is not None:
            self.metrics.stomp_errors.labels(connection.error_kind or error.kind).inc()
            if error.message == TOKEN_EXPIRED and connection.session.principal is not None:
                # Ended by expiry mid-stream (the gate counted refusals at CONNECT itself).
                self.metrics.auth_refusals.labels("unauthorized", "stomp").inc()
        if self.limits is not None:
            if error is not None and error.message == "too many subscriptions":
                self.limits.rejected("subscriptions")
            elif (error is not None and error.message == "frame too large") or \
                    connection.ws.close_code == CLOSE_MESSAGE_TOO_BIG:
                self.limits.rejected("message_size")

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


class Connection:
    """One WebSocket's STOMP session, driven by the reader, a timer and the worker's delivery layer.

    Args:
        broker: the application's broker.
        ws: the open WebSocket (``environ["wsgi.websocket"]``).
        sender: the identity stamped on what this connection publishes.
        clock: a monotonic clock in seconds.
    """

    def __init__(self, broker: Broker, ws, sender: str, clock: Callable[[], float] = time.monotonic,
                 client: str = "?", identity: Identity | None = None) -> None:
        self.broker = broker
        self.hub = broker.hub
        self.ws = ws
        self._guest = sender
        self.client = client
        self.error_kind: str | None = None  # a finer kind than "broker" for the ERRORs we raise, for metrics
        self.on_connect: Callable[[Connect], None] | None = None  # told of the CONNECT (see Broker.serve)
        bucket = broker.limits.publish_bucket() if broker.limits is not None else None
        self._published = broker.metrics.publishes.labels("stomp") if broker.metrics is not None else None
        self._clock = clock
        self.gate: StompGate | None = None
        if broker.access is not None:
            self.gate = StompGate(broker.access, broker.destinations.resolve, identity, sender, *broker.shared_login,
                                  metrics=broker.metrics)
            self.session = StompSession(broker.config, now=clock(), authenticate=self.gate.authenticate,
                                        authorize=self.gate.authorize)
        else:
            self.session = StompSession(broker.config, now=clock())
        self.publisher = StompPublisher(self.hub, broker.destinations, lambda: self.sender, self._identity, bucket,
                                        self.gate)
        self._lock = gevent.lock.Semaphore()
        self._pumps: dict[str, StompTopicFramer | QueuePump] = {}
        # Topic subscriptions are feeds of the worker's delivery layer (stomp_delivery.py);
        # every frame, theirs and the reader's, leaves through one outbox.
        outbox = getattr(ws, "outbox", None)
        self.raw = outbox is not None  # a WebSocket; else a SockJS session (messages, not frames)
        self._channel = None if self.raw else ChannelOutbox(ws)
        self.stream = broker.delivery.stream(outbox if self.raw else self._channel, "stomp", client)
        self.deferred: set = set()  # feeds that found the session busy (see StompTopicFramer.room)
        self._wake_timer = gevent.event.Event()
        self._close_code: int | None = None
        self._socket_dead = False
        self._delivered = broker.metrics.delivered.labels("stomp") if broker.metrics is not None else None
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Connect: self._on_connect,
            Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe,
            Send: self._on_send,
            Commit: self._on_commit,
            Ack: self._on_ack,
            Nack: self._on_nack,
            Closed: self._on_closed,
        }

    @property
    def sender(self) -> str:
        """The name stamped on what this connection publishes: its identity's, once connected."""
        principal = self.session.principal
        return principal.sender if isinstance(principal, Identity) else self._guest

    def _identity(self) -> Identity | None:
        principal = self.session.principal
        return principal if isinstance(principal, Identity) else None

    # -- the three drivers ---------------------------------------------------------

    def run(self) -> None:
        """Read until the session or the socket ends, then release every greenlet and subscription."""
        timer = gevent.spawn(self._timer)
        try:
            self._read()
        finally:
            self.session.connection_lost("connection closed")
            for request in self.session.requests():  # at most the Closed: no I/O needed
                if isinstance(request, Closed):
                    self._on_closed(request)
            self._release()
            self.stream.close()
            greenlets = [timer, *(p.greenlet for p in self._pumps.values() if getattr(p, "greenlet", None) is not None)]
            self._pumps.clear()
            gevent.killall(greenlets, block=True, timeout=5)

    def _read(self) -> None:
        session = self.session
        handled = 0
        while not session.closed:
            message = self.ws.receive()
            if message is None:  # closed by the peer, by us, or lost
                session.connection_lost(f"WebSocket closed ({self.ws.close_code})")
                self._drain()
                return
            # Text messages arrive as str; the session reads bytes (STOMP is octets).
            data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
            session.receive_data(data, self._clock())
            self._drain()
            handled += 1
            if handled % PACE == 0:
                # A bounded batch read: let delivery write what it published before the
                # next one (a flood must not starve the subscribers).
                self.broker.delivery.pace()

    def _timer(self) -> None:
        session = self.session
        while not session.closed:
            self._wake_timer.clear()
            deadline = session.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            if timeout != 0.0:
                self._wake_timer.wait(timeout)  # woken early by CONNECT and by the end
            if session.closed:
                return
            session.tick(self._clock())
            self._drain()

    def _count_delivered(self, count: int) -> None:
        if self._delivered is not None:
            self._delivered.inc(count)

    # -- requests and writes, one greenlet at a time ------------------------------

    def _drain(self) -> None:
        """Act on the session's requests, confirm them, write what it queued, until all is done.

        A request refused with an ERROR ends the session: nothing of that frame happens,
        and no request after it is looked at (the session handles no frame after it).
        """
        session = self.session
        with self._lock:
            while True:
                requests = session.requests()
                for request_ in requests:
                    if session.closed and not isinstance(request_, Closed):
                        continue  # STOMP 1.2, "ERROR": nothing after it
                    self._dispatch[type(request_)](request_)
                if requests:
                    session.confirm(self._clock())
                chunks = session.data_to_send()
                self._write(chunks)
                if not requests and not chunks:
                    break
            if session.closed and not self._socket_dead:
                self._close_socket()
        if self.deferred:  # feeds that found the session busy: their turn now
            deferred, self.deferred = self.deferred, set()
            for feed in deferred:
                feed.set()

    def _write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if self._socket_dead:
                return
            try:
                # One message per frame or heart-beat; binary only for a non-UTF-8 body.
                if self._channel is not None:
                    self._channel.send(chunk)  # in order with the delivery layer's MESSAGEs
                else:
                    self.ws.send_encoded(chunk, binary=not is_utf8(chunk))
            except WebSocketError:
                self._socket_dead = True
                self.session.connection_lost("connection lost while sending")

    def _close_socket(self) -> None:
        error = self.session.error
        code = self._close_code or CLOSE_CODES.get(error.kind if error else None, CLOSE_POLICY_VIOLATION)
        reason = error.message if error is not None else (self.session.close_reason or "")
        self._socket_dead = True
        self.ws.close(code, reason)

    def fail_and_drain(self, message: str, detail: str, kind: str | None) -> None:
        """End the session from a delivery's news (a slow consumer, the shutdown, the store
        down): ERROR with a reconnect hint, written after what is queued, then the close."""
        code = {"slow-consumer": CLOSE_POLICY_VIOLATION, "shutdown": CLOSE_GOING_AWAY}.get(kind or "",
                                                                                         CLOSE_INTERNAL_ERROR)
        self._fail(message, detail + _RECONNECT_HINT, code, kind=kind)
        self._drain()

    def shutdown(self) -> None:
        """End the session for a server shutdown: ERROR with a reconnect hint, then 1001."""
        self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, kind="shutdown")
        self._drain()

    def _fail(self, message: str, detail: str, code: int, receipt_id: str | None = None,
              kind: str | None = None) -> None:
        """End the session from the broker's side with an ERROR; the socket closes with ``code``.

        ``kind`` names the error in ``switchboard_stomp_errors_total`` (else "broker").
        """
        if not self.session.closed:
            self.error_kind = kind
            self._close_code = code
            self.session.send_error(message, detail, receipt_id=receipt_id)

    # -- request handlers -----------------------------------------------------------

    def _on_connect(self, request_: Connect) -> None:
        log.debug("STOMP %s connected: version %s, heart-beat %s", request_.session_id, request_.version,
                  request_.heart_beat)
        self._wake_timer.set()  # heart-beat deadlines exist from now on
        if self.on_connect is not None:
            self.on_connect(request_)

    def _on_subscribe(self, request_: Subscribe) -> None:
        receipt = _first(request_.headers, "receipt")
        target = self.broker.destinations.resolve(request_.destination)  # the session validated it
        since = request_.last_event_id or None
        if target.kind == "app":
            prefix = self.broker.destinations.topic_prefix
            self._fail("cannot subscribe to an application destination",
                       f"{request_.destination!r} takes SEND frames only; subscribe to {prefix}/<topic>.",
                       CLOSE_POLICY_VIOLATION, receipt)
            return
        if target.kind == "user" and target.user is not None:
            own = f"{self.broker.destinations.user_prefix}{self.broker.destinations.queue_prefix}/{target.name}"
            self._fail("cannot subscribe to another user's destination",
                       f"{request_.destination!r} takes SEND frames only; subscribe to {own}, your own.",
                       CLOSE_POLICY_VIOLATION, receipt)
            return
        if since is not None and target.kind == "pattern":
            self._fail("a wildcard subscription takes no last-event-id",
                       f"{request_.destination!r} follows several topics, live: there is no one position to resume "
                       "from. Subscribe to each topic with its own last-event-id to resume.",
                       CLOSE_POLICY_VIOLATION, receipt)
            return
        if since is not None:
            try:
                Cursor.parse(since)
            except InvalidCursor as exc:
                self._fail("invalid last-event-id", f"{exc}. Resume with an event-id header of a MESSAGE.",
                           CLOSE_POLICY_VIOLATION, receipt)
                return
        if target.kind == "queue":
            self._consume(request_, target.name, receipt)
            return
        destination = None
        try:
            if target.kind == "pattern":
                subscription = self.hub.subscribe_pattern(target.name)
                prefix = self.broker.destinations.topic_prefix
                destination = lambda event: f"{prefix}/{event.topic}"  # noqa: E731 - the concrete topic
            elif target.kind == "user":
                user = self.user_key()
                if user is None or not USER_SUB_RE.match(user):
                    self._fail("no user destination for this identity",
                               "/user destinations are named after the signed-in user's sub, which must be 1-64 "
                               "characters of A-Z a-z 0-9 _ : -.", CLOSE_POLICY_VIOLATION, receipt)
                    return
                subscription = self.hub.subscribe(user_topic(user, target.name), since=since)
            else:
                subscription = self.hub.subscribe(target.name, since=since, member=self.sender)
        except SubscriptionClosed:
            self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, receipt)
            return
        framer = self._pumps[request_.sub_id] = StompTopicFramer(self, request_.sub_id, subscription, destination)
        framer.feed = self.broker.delivery.attach(self.stream, subscription, framer, subscription.topic)

    def _consume(self, request_: Subscribe, queue: str, receipt: str | None) -> None:
        if request_.last_event_id:
            self._fail("a queue subscription takes no last-event-id",
                       f"{request_.destination!r} is a work queue: it keeps what no consumer has acknowledged, "
                       "so there is nothing to resume.", CLOSE_POLICY_VIOLATION, receipt)
            return
        try:
            consumer = self.hub.consume(queue, request_.window)
        except SubscriptionClosed:
            self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, receipt)
            return
        except QueueFull as exc:
            self._fail("queue full", f"{exc}. Nothing was subscribed.", CLOSE_POLICY_VIOLATION, receipt,
                       kind="queue-full")
            return
        except BackendUnavailable as exc:
            self._fail("backend unavailable", f"The queue store is unavailable: {exc}. " + _RECONNECT_HINT,
                       CLOSE_INTERNAL_ERROR, receipt)
            return
        pump = self._pumps[request_.sub_id] = QueuePump(request_.sub_id, consumer, request_.ack_mode == "auto")
        spawn_queue_pump(pump, self.session, self._drain_written, self._clock, self._fail_internal,
                         self._count_delivered)

    def _drain_written(self) -> bool:
        self._drain()
        return not self._socket_dead

    def _fail_internal(self, message: str, detail: str) -> None:
        self._fail(message, detail, CLOSE_INTERNAL_ERROR)
        self._drain()

    def user_key(self) -> str | None:
        """Whose ``/user/queue/...`` this connection reads: its token's sub, or without access
        control its guest name."""
        identity = self._identity()
        if identity is not None and identity.sub is not None:
            return identity.sub
        if self.broker.access is None or not self.broker.access.enabled:
            return self.sender
        return None

    def _on_unsubscribe(self, request_: Unsubscribe) -> None:
        pump = self._pumps.pop(request_.sub_id, None)
        if pump is not None:
            pump.stop()

    def _on_send(self, request_: Send) -> None:
        try:
            self._count_published(self.publisher.publish(self.publisher.prepare(request_)))
        except Refusal as refusal:
            self._refuse(refusal, request_.receipt)

    def _on_commit(self, request_: Commit) -> None:
        # Every SEND of the transaction is checked before any is published; one batch then
        # stores them all or none (app/transports/stomp_publish.py).
        sends = [item for item in request_.items if isinstance(item, Send)]
        publications = []
        try:
            for number, item in enumerate(sends, 1):
                try:
                    publications += self.publisher.prepare(item)
                except Refusal as refusal:
                    raise refusal.within(f"COMMIT of transaction {request_.transaction!r} published nothing: "
                                         f"SEND {number} of {len(sends)} (to {item.destination}) failed") from None
            try:
                self._count_published(self.publisher.publish(publications))
            except Refusal as refusal:
                raise refusal.within(f"COMMIT of transaction {request_.transaction!r} published nothing") from None
        except Refusal as refusal:
            self._refuse(refusal, request_.receipt)
            return
        for item in request_.items:
            if isinstance(item, Ack):
                self._on_ack(item)
            elif isinstance(item, Nack):
                self._on_nack(item)

    def _refuse(self, refusal: Refusal, receipt: str | None) -> None:
        if refusal.limit is not None and self.broker.limits is not None:
            self.broker.limits.rejected(refusal.limit)
        code = CLOSE_INTERNAL_ERROR if refusal.internal else CLOSE_POLICY_VIOLATION
        self._fail(refusal.message, refusal.detail, code, receipt, kind=refusal.kind)

    def _count_published(self, count: int) -> None:
        if self._published is not None and count:
            self._published.inc(count)

    def _on_ack(self, request_: Ack) -> None:
        pump = self._pumps.get(request_.sub_id)
        if isinstance(pump, QueuePump):
            pump.ack(request_.message_ids)  # acknowledged in the queue store
        elif pump is not None:
            pump.window()

    def _on_nack(self, request_: Nack) -> None:
        pump = self._pumps.get(request_.sub_id)
        if isinstance(pump, QueuePump):
            pump.nack(request_.message_ids)  # back to the queue, for another consumer
        elif pump is not None and request_.dropped:
            pump.window()  # a topic message NACKed too often: dropped, its slot is free
        # Otherwise the session sent the topic messages again itself; the window is unchanged.

    def _on_closed(self, request_: Closed) -> None:
        if request_.error_kind is not None:
            log.info("STOMP session %s ended: %s (%s)", self.session.session_id, request_.reason,
                     request_.error_kind)
        self._release()
        self._wake_timer.set()

    def _release(self) -> None:
        for pump in self._pumps.values():
            pump.stop()


# -------------------------------------------------------------------------- view


@bp.route("/stomp", websocket=True)
def stomp_socket():
    """Speak STOMP on the upgraded WebSocket until the session ends."""
    ws = request.environ.get(ENVIRON_WEBSOCKET)
    if ws is None:  # only the wsio handler routes upgrades here
        raise ApiError(426, "upgrade_required", "GET /stomp with Upgrade: websocket")
    broker: Broker = current_app.extensions[EXTENSION]
    try:
        # Checked before the 101 (app/factory.py) and kept in the environ: this reads it back.
        identity = app_access().credentials(request.environ)
    except AccessError as exc:  # only if no admission hook ran (a server without our policy)
        ws.close(CLOSE_POLICY_VIOLATION, exc.message[:120])
        return "", 204
    broker.serve(ws, current_sender(), limits_module.current().client(request.environ), identity)
    return "", 204


def init_app(app: Flask) -> None:
    """Build the app's broker from its hub and settings; register ``/stomp``."""
    hub = app.extensions["switchboard.hub"]
    settings = app.extensions["switchboard.settings"]
    metrics = app.extensions.get("switchboard.metrics")
    limits = app.extensions.get(limits_module.EXTENSION)
    access = app.extensions.get("switchboard.access")
    broker = app.extensions[EXTENSION] = Broker.from_settings(hub, settings, metrics=metrics, limits=limits,
                                                              access=access)
    delivery = app.extensions.get("switchboard.delivery")
    if delivery is not None:
        broker.delivery = delivery
    app.register_blueprint(bp)
    shutdown = app.extensions.get("switchboard.shutdown")
    if shutdown is not None:
        shutdown.add("stomp", broker.shutdown)  # before the hub closes: ERROR frames, then 1001

    @app.context_processor
    def stomp_chat_destinations() -> dict:
        # For the STOMP page: where the demo chat listens and sends, and the work queue its
        # two consumers share, with this app's prefixes.
        destinations = broker.destinations
        queue = f"{destinations.queue_prefix}/{DEMO_QUEUES['stomp']}"
        return {"stomp_chat": {"subscribe": f"{destinations.topic_prefix}/chat",
                               "send": f"{destinations.app_prefix}/chat"},
                "stomp_queue": {"destination": queue, "dlq": f"{queue}.dlq",
                                "max_deliveries": settings.queue_max_deliveries}}
