"""One STOMP-over-WebSocket connection: its reader, its timer, and the broker's answers to its requests.

:class:`Connection` drives one :class:`app.stomp.StompSession` for the
:class:`~app.transports.stomp_ws.Broker`: WebSocket messages go into the session (at most
:data:`PACE` before delivery may run), each request the session makes is acted on by one
handler of the dispatch table (CONNECT, SUBSCRIBE, UNSUBSCRIBE, SEND, COMMIT, ACK, NACK,
the end of the session), and what the session queues is written, then the socket closes
with the code :data:`CLOSE_CODES` gives the error's kind. The module docstring of
:mod:`app.transports.stomp_ws` describes the behaviour as a whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool

from ..auth import Identity
from ..delivery.channel import ChannelOutbox
from ..events import Cursor, InvalidCursor
from ..hub import BackendUnavailable, QueueFull, SubscriptionClosed
from ..stomp import (
    Ack,
    Closed,
    Commit,
    Connect,
    Nack,
    Send,
    StompSession,
    Subscribe,
    Unsubscribe,
)
from .stomp_auth import StompGate
from .stomp_delivery import StompTopicFramer, is_utf8
from .stomp_destinations import USER_SUB_RE, user_topic
from .stomp_publish import RECONNECT_HINT, Refusal, StompPublisher
from .stomp_queues import QueuePump
from .stomp_queues import spawn as spawn_queue_pump
from .wsio import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    WebSocketError,
)

if TYPE_CHECKING:
    from .stomp_ws import Broker

log = logging.getLogger(__name__)

PACE = 32
"""WebSocket messages a session reads before it lets delivery run (see ``_read``)."""

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


# --------------------------------------------------------------------- the broker


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    # STOMP 1.2, "Repeated Header Entries": the first one wins.
    for key, value in headers:
        if key == name:
            return value
    return None


class Connection:
    """One WebSocket's STOMP session, driven by the reader, a timer and the worker's delivery layer.

    Args:
        broker: the application's broker.
        ws: the open WebSocket (``environ["wsgi.websocket"]``).
        sender: the identity stamped on what this connection publishes.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        broker: Broker,
        ws,
        sender: str,
        clock: Callable[[], float] = time.monotonic,
        client: str = "?",
        identity: Identity | None = None,
    ) -> None:
        self.broker = broker
        self.hub = broker.hub
        self.ws = ws
        self._guest = sender
        self.client = client
        self.error_kind: str | None = None  # a finer kind than "broker" for the ERRORs we raise, for metrics
        self.error_counted = False  # the ERROR is in the metrics (Broker.count_error)
        self.on_connect: Callable[[Connect], None] | None = None  # told of the CONNECT (see Broker.serve)
        bucket = broker.limits.publish_bucket() if broker.limits is not None else None
        self._published = broker.metrics.publishes.labels("stomp") if broker.metrics is not None else None
        self._clock = clock
        self.gate: StompGate | None = None
        if broker.access is not None:
            self.gate = StompGate(
                broker.access,
                broker.destinations.resolve,
                identity,
                sender,
                *broker.shared_login,
                metrics=broker.metrics,
            )
            self.session = StompSession(
                broker.config, now=clock(), authenticate=self.gate.authenticate, authorize=self.gate.authorize
            )
        else:
            self.session = StompSession(broker.config, now=clock())
        self.publisher = StompPublisher(
            self.hub, broker.destinations, lambda: self.sender, self._identity, bucket, self.gate
        )
        self._lock = gevent.lock.Semaphore()
        self._pumps: dict[str, StompTopicFramer | QueuePump] = {}
        # Topic subscriptions are feeds of the worker's delivery layer (stomp_delivery.py);
        # every frame, theirs and the reader's, leaves through one outbox.
        outbox = getattr(ws, "outbox", None)
        self.raw = outbox is not None  # a WebSocket; else a SockJS session (messages, not frames)
        self._channel = None if self.raw else ChannelOutbox(ws)
        self.stream = broker.delivery.stream(outbox if self.raw else self._channel, "stomp", client)
        self.deferred: set = set()  # feeds that found the session busy (see StompTopicFramer.room)
        # The session's next deadline (heart-beats, a silent client, the CONNECT timeout) is a
        # timer of the event loop, not a greenlet that waits: an idle session costs one
        # greenlet, its reader; a due deadline runs in a short greenlet of its own (_tick).
        self._timer = None
        self._handled = 0  # messages read, for pacing
        self._close_code: int | None = None
        self._socket_dead = False
        self._delivered = broker.metrics.delivered.labels("stomp") if broker.metrics is not None else None

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
        self.start()
        try:
            while not self.session.closed:
                message = self.ws.receive()
                if message is None or not self.on_message(message):
                    break
        finally:
            self.end()

    def start(self) -> None:
        """Before the first message: the CONNECT timeout's timer."""
        self._arm()

    def on_message(self, message: str | bytes) -> bool:
        """Feed one WebSocket message to the session and act on it; whether to read on."""
        # Text messages arrive as str; the session reads bytes (STOMP is octets).
        data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        self.session.receive_data(data, self._clock())
        self._drain()
        self._handled += 1
        if self._handled % PACE == 0:
            # A bounded batch read: let delivery write what it published before the
            # next one (a flood must not starve the subscribers).
            self.broker.delivery.pace()
        return not self.session.closed

    def end(self) -> None:
        """The socket or the session ended: release every greenlet and subscription."""
        session = self.session
        try:
            if not session.closed:  # closed by the peer, by us, or lost
                session.connection_lost(f"WebSocket closed ({self.ws.close_code})")
                self._drain()
        finally:
            session.connection_lost("connection closed")
            for request in session.requests():  # at most the Closed: no I/O needed
                if isinstance(request, Closed):
                    self._on_closed(request)
            self._release()
            self._disarm()
            self.stream.close()
            greenlets = [p.greenlet for p in self._pumps.values() if getattr(p, "greenlet", None) is not None]
            self._pumps.clear()
            gevent.killall(greenlets, block=True, timeout=5)

    def _arm(self) -> None:
        """Set the timer for the session's next deadline (none: no timer)."""
        self._disarm()
        if self.session.closed:
            return
        deadline = self.session.next_deadline()
        if deadline is not None:
            self._timer = gevent.get_hub().loop.timer(max(0.0, deadline - self._clock()))
            self._timer.start(gevent.spawn, self._tick)  # the callback runs in the hub: it must not wait

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _tick(self) -> None:
        """A deadline is due: heart-beats out, a silent client ended; then the next one."""
        if self.session.closed:
            return
        self.session.tick(self._clock())
        self._drain()
        self._arm()

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
                    _DISPATCH[type(request_)](self, request_)
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
        self.broker.count_error(self)  # counted before the peer can see the close
        self.ws.close(code, reason)

    def fail_and_drain(self, message: str, detail: str, kind: str | None) -> None:
        """End the session from a delivery's news (a slow consumer, the shutdown, the store
        down): ERROR with a reconnect hint, written after what is queued, then the close."""
        code = {"slow-consumer": CLOSE_POLICY_VIOLATION, "shutdown": CLOSE_GOING_AWAY}.get(
            kind or "", CLOSE_INTERNAL_ERROR
        )
        self._fail(message, detail + _RECONNECT_HINT, code, kind=kind)
        self._drain()

    def shutdown(self) -> None:
        """End the session for a server shutdown: ERROR with a reconnect hint, then 1001."""
        self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, kind="shutdown")
        self._drain()

    def _fail(
        self, message: str, detail: str, code: int, receipt_id: str | None = None, kind: str | None = None
    ) -> None:
        """End the session from the broker's side with an ERROR; the socket closes with ``code``.

        ``kind`` names the error in ``switchboard_stomp_errors_total`` (else "broker").
        """
        if not self.session.closed:
            self.error_kind = kind
            self._close_code = code
            self.session.send_error(message, detail, receipt_id=receipt_id)

    # -- request handlers -----------------------------------------------------------

    def _on_connect(self, request_: Connect) -> None:
        log.debug(
            "STOMP %s connected: version %s, heart-beat %s", request_.session_id, request_.version, request_.heart_beat
        )
        self._arm()  # heart-beat deadlines exist from now on
        if self.on_connect is not None:
            self.on_connect(request_)

    def _on_subscribe(self, request_: Subscribe) -> None:
        receipt = _first(request_.headers, "receipt")
        target = self.broker.destinations.resolve(request_.destination)  # the session validated it
        since = request_.last_event_id or None
        if target.kind == "app":
            prefix = self.broker.destinations.topic_prefix
            self._fail(
                "cannot subscribe to an application destination",
                f"{request_.destination!r} takes SEND frames only; subscribe to {prefix}/<topic>.",
                CLOSE_POLICY_VIOLATION,
                receipt,
            )
            return
        if target.kind == "user" and target.user is not None:
            own = f"{self.broker.destinations.user_prefix}{self.broker.destinations.queue_prefix}/{target.name}"
            self._fail(
                "cannot subscribe to another user's destination",
                f"{request_.destination!r} takes SEND frames only; subscribe to {own}, your own.",
                CLOSE_POLICY_VIOLATION,
                receipt,
            )
            return
        if since is not None and target.kind == "pattern":
            self._fail(
                "a wildcard subscription takes no last-event-id",
                f"{request_.destination!r} follows several topics, live: there is no one position to resume "
                "from. Subscribe to each topic with its own last-event-id to resume.",
                CLOSE_POLICY_VIOLATION,
                receipt,
            )
            return
        if since is not None:
            try:
                Cursor.parse(since)
            except InvalidCursor as exc:
                self._fail(
                    "invalid last-event-id",
                    f"{exc}. Resume with an event-id header of a MESSAGE.",
                    CLOSE_POLICY_VIOLATION,
                    receipt,
                )
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
                    self._fail(
                        "no user destination for this identity",
                        "/user destinations are named after the signed-in user's sub, which must be 1-64 "
                        "characters of A-Z a-z 0-9 _ : -.",
                        CLOSE_POLICY_VIOLATION,
                        receipt,
                    )
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
            self._fail(
                "a queue subscription takes no last-event-id",
                f"{request_.destination!r} is a work queue: it keeps what no consumer has acknowledged, "
                "so there is nothing to resume.",
                CLOSE_POLICY_VIOLATION,
                receipt,
            )
            return
        try:
            consumer = self.hub.consume(queue, request_.window)
        except SubscriptionClosed:
            self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, receipt)
            return
        except QueueFull as exc:
            self._fail(
                "queue full", f"{exc}. Nothing was subscribed.", CLOSE_POLICY_VIOLATION, receipt, kind="queue-full"
            )
            return
        except BackendUnavailable as exc:
            self._fail(
                "backend unavailable",
                f"The queue store is unavailable: {exc}. " + _RECONNECT_HINT,
                CLOSE_INTERNAL_ERROR,
                receipt,
            )
            return
        pump = self._pumps[request_.sub_id] = QueuePump(request_.sub_id, consumer, request_.ack_mode == "auto")
        spawn_queue_pump(
            pump, self.session, self._drain_written, self._clock, self._fail_internal, self._count_delivered
        )

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
                    raise refusal.within(
                        f"COMMIT of transaction {request_.transaction!r} published nothing: "
                        f"SEND {number} of {len(sends)} (to {item.destination}) failed"
                    ) from None
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
            log.info("STOMP session %s ended: %s (%s)", self.session.session_id, request_.reason, request_.error_kind)
        self._release()
        self._disarm()

    def _release(self) -> None:
        for pump in self._pumps.values():
            pump.stop()


#: What each session request runs: one table for every connection, not a dict of bound
#: methods per connection.
_DISPATCH: dict[type, Callable[[Connection, Any], None]] = {
    Connect: Connection._on_connect,
    Subscribe: Connection._on_subscribe,
    Unsubscribe: Connection._on_unsubscribe,
    Send: Connection._on_send,
    Commit: Connection._on_commit,
    Ack: Connection._on_ack,
    Nack: Connection._on_nack,
    Closed: Connection._on_closed,
}
