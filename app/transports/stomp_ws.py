"""STOMP over WebSocket: the broker between STOMP sessions and the hub (DESIGN.md §6).

A thin I/O adapter around the sans-I/O :class:`app.stomp.StompSession`:

* WebSocket messages (text or binary) -> ``session.receive_data``;
* ``session.data_to_send()`` -> one WebSocket message per chunk, text when the chunk
  is UTF-8, else binary (a MESSAGE whose body is not UTF-8);
* session requests -> the hub: SUBSCRIBE opens a hub subscription served by one
  greenlet, SEND publishes (or calls an application handler), ACK reopens a
  prefetch window, the end of the session releases everything;
* hub events -> ``session.deliver``; a timer greenlet calls ``session.tick`` at
  ``session.next_deadline()`` (heart-beats, silent clients, CONNECT timeout).

One lock serialises "handle the session's requests, then write what it queued", so
frames leave in the order the session produced them, a publish happens before the
RECEIPT of its SEND goes out, and a greenlet that queued a frame waits until it is
written (a slow socket slows its own session, nobody else).

Destinations (prefixes are settings, so the seed's ``/pub`` + ``/sub`` work too):

* ``/topic/<topic>``: the hub topic ``<topic>``, shared with HTTP, SSE and ``/ws``.
  SUBSCRIBE listens; SEND publishes with the connection's sender.
* ``/app/<name>``: SEND goes to the application handler ``name``
  (:mod:`app.stomp_handlers`; the demo's ``chat`` publishes to topic ``chat``).
  SUBSCRIBE is refused: application destinations take SEND only.
* anything else: ERROR naming the destination (the session's ``validate_destination``
  hook, so nothing is published and no RECEIPT is sent for it).

Mapping (DESIGN.md §6). SEND body -> event data: parsed JSON for
``content-type: application/json`` (or ``+json``), the text for ``text/*`` or no
content-type. Anything else, or text that does not decode, is binary: it becomes an
event of type ``binary`` with data ``{"base64": "...", "content-type": "..."}``, so
every transport can carry it and STOMP subscribers get the original octets back.
A SEND may name its event type with an ``event-type`` header (default ``message``).
Event -> MESSAGE: a string is UTF-8 text with ``content-type: text/plain``, a
``binary`` event is its octets with its content-type, anything else is JSON with
``content-type: application/json``; headers ``event-id`` (the cursor to resume
after), ``event-type``, ``sender`` (absent for server events) and ``time`` (unix
seconds). Body and headers are built once per event, whatever the audience.

Resume and gaps: SUBSCRIBE with ``last-event-id`` replays what came after it, then
goes live, exactly once and in order (the hub's seam rule). A cursor too old (or
from before a restart) first gets a MESSAGE with ``gap:true`` and an empty body. A
subscriber that falls behind its queue and history both gets that MESSAGE, then
ERROR "slow consumer", and is closed (1008).

Flow control: in ``client``/``client-individual`` ack modes at most
``prefetch-count`` (capped by the session) messages are unacknowledged; while the
window is full the subscription's greenlet stops taking from the hub, whose bounded
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

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
from flask import Blueprint, Flask, current_app, request

from ..auth import Access, AccessError, Identity
from ..auth.web import access as app_access
from ..config import Settings
from ..errors import ApiError
from ..events import TOPIC_RE, Cursor, Event, Gap, InvalidCursor, InvalidEventType, parse_json
from ..hub import BackendUnavailable, Hub, Subscription, SubscriptionClosed, TooManyTopics
from ..identity import current_sender
from .. import limits as limits_module
from ..limits import Limits, topic_refusal
from ..metrics import Metrics
from ..stomp import (
    Ack,
    TOKEN_EXPIRED,
    Closed,
    Connect,
    Frame,
    Nack,
    Send,
    StompConfig,
    StompSession,
    Subscribe,
    Unsubscribe,
    serialize,
)
from ..stomp import Limits as FrameLimits
from ..stomp.session import encode_message_tail
from ..stomp_handlers import AppMessage, HandlerError, Handlers, default_handlers
from .stomp_auth import StompGate, shared_login
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

#: The event type of a SEND whose body is not text or JSON (see the module docstring).
BINARY_TYPE = "binary"

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

_RECONNECT_HINT = "Reconnect in a few seconds and SUBSCRIBE with last-event-id to resume where you stopped."


# ------------------------------------------------------------------------ mapping


class BodyError(Exception):
    """A SEND body that cannot become event data (e.g. JSON that does not parse)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail



def _split_content_type(content_type: str | None) -> tuple[str | None, dict[str, str]]:
    if content_type is None:
        return None, {}
    mime, *params = content_type.split(";")
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return mime.strip().lower(), parsed


def decode_send_body(body: bytes, content_type: str | None) -> tuple[str | None, Any]:
    """Turn a SEND body into event data (DESIGN.md §6).

    Args:
        body: the body octets.
        content_type: the SEND ``content-type`` header, or ``None``.

    Returns:
        ``(event_type, data)``: ``event_type`` is :data:`BINARY_TYPE` for a binary
        body and ``None`` otherwise (the caller picks the type).

    Raises:
        BodyError: the content-type says JSON and the body is not JSON.
    """
    mime, params = _split_content_type(content_type)
    charset = params.get("charset", "utf-8")
    if mime is not None and (mime == "application/json" or mime.endswith("+json")):
        try:
            return None, parse_json(body.decode(charset))
        except (LookupError, ValueError) as exc:
            raise BodyError("invalid JSON body", f"content-type is {content_type} but the body is not JSON: {exc}") from None
    if mime is None or mime.startswith("text/"):
        try:
            return None, body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass  # not text after all: carried as binary, octets intact
    return BINARY_TYPE, {
        "base64": base64.b64encode(body).decode("ascii"),
        "content-type": content_type or "application/octet-stream",
    }


def _binary_payload(event: Event) -> tuple[bytes, str] | None:
    data = event.data
    if event.type != BINARY_TYPE or not isinstance(data, dict):
        return None
    encoded, content_type = data.get("base64"), data.get("content-type", "application/octet-stream")
    if not isinstance(encoded, str) or not isinstance(content_type, str) or "\n" in content_type:
        return None
    try:
        return base64.b64decode(encoded, validate=True), content_type
    except (binascii.Error, ValueError):
        return None


def _message_body(event: Event) -> tuple[bytes, str]:
    binary = _binary_payload(event)
    if binary is not None:
        return binary
    data = event.data
    if isinstance(data, str):
        try:
            return data.encode("utf-8"), "text/plain"
        except UnicodeEncodeError:
            pass  # a lone surrogate (JSON allows "\ud800"): JSON escapes carry it losslessly
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8"), "application/json"
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":")).encode("ascii"), "application/json"


def _encode_event(event: Event) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    body, content_type = _message_body(event)
    headers = [("event-id", event.id), ("event-type", event.type)]
    if event.sender is not None:
        headers.append(("sender", event.sender))
    headers += [("time", repr(event.time)), ("content-type", content_type)]
    return body, tuple(headers)


def encode_message(event: Event) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """The MESSAGE body and event headers for ``event``, built once per event.

    Returns:
        ``(body, headers)`` for :meth:`StompSession.deliver`; the session adds
        ``subscription``, ``message-id``, ``destination``, ``ack`` and ``content-length``.
    """
    return event.encoded("stomp-message", _encode_event)


def _tail_escaped(event: Event) -> bytes:
    return encode_message_tail(*encode_message(event), True)


def _tail_unescaped(event: Event) -> bytes:
    return encode_message_tail(*encode_message(event), False)


def message_tail(event: Event, escaped: bool) -> bytes:
    """The event's part of every MESSAGE frame (headers, content-length, body, NUL), built once
    per event and escaping mode (1.1/1.2 escape header values, 1.0 does not); see
    :func:`app.stomp.session.encode_message_tail`."""
    if escaped:
        return event.encoded("stomp-tail-escaped", _tail_escaped)
    return event.encoded("stomp-tail-unescaped", _tail_unescaped)


_GAP_HEADERS = (("gap", "true"),)


def _is_utf8(chunk: bytes) -> bool:
    if chunk.isascii():
        return True
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    # STOMP 1.2, "Repeated Header Entries": the first one wins.
    for key, value in headers:
        if key == name:
            return value
    return None


# ------------------------------------------------------------------- destinations


@dataclass(frozen=True)
class Destinations:
    """Where a STOMP destination leads: a hub topic or an application handler.

    Attributes:
        topic_prefix: e.g. ``/topic`` (``/sub`` in the seed).
        app_prefix: e.g. ``/app`` (``/pub`` in the seed).
        handlers: the application handlers.
    """

    topic_prefix: str
    app_prefix: str
    handlers: Handlers

    def resolve(self, destination: str) -> tuple[str, str] | None:
        """``("topic", topic)`` or ``("app", handler name)``; ``None`` if it leads nowhere."""
        for kind, prefix in (("topic", self.topic_prefix), ("app", self.app_prefix)):
            root = prefix + "/"
            if destination.startswith(root):
                return kind, destination[len(root):]
        return None

    def problem(self, destination: str) -> str | None:
        """The session's ``validate_destination`` hook: why ``destination`` is refused, or ``None``."""
        resolved = self.resolve(destination)
        if resolved is None:
            return f"unknown destination; use {self.topic_prefix}/<topic> or {self.app_prefix}/<handler>"
        kind, name = resolved
        if kind == "topic" and not TOPIC_RE.match(name):
            return "not a topic: 1-128 characters of A-Z a-z 0-9 . _ : - (no slash), starting with a letter or digit"
        if kind == "app" and name not in self.handlers:
            known = ", ".join(f"{self.app_prefix}/{n}" for n in self.handlers) or "none"
            return f"no application handler {name[:64]!r} (handlers: {known})"
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

    @classmethod
    def from_settings(cls, hub: Hub, settings: Settings, handlers: Handlers | None = None,
                      metrics: Metrics | None = None, limits: Limits | None = None,
                      access: Access | None = None) -> "Broker":
        """Build the broker the settings describe (prefixes, credentials, size limit)."""
        destinations = Destinations(settings.stomp_topic_prefix, settings.stomp_app_prefix,
                                    handlers if handlers is not None else default_handlers())
        config = StompConfig(
            # One limit for a WebSocket message and a STOMP frame: a frame that fits in one
            # message fits the parser too; one spread over several messages is cut at the same size.
            limits=FrameLimits(max_frame_bytes=settings.max_message_bytes),
            heart_beat=settings.stomp_heartbeat_ms,
            authenticate=shared_login(settings.stomp_login, settings.stomp_passcode),
            validate_destination=destinations.problem,
            max_subscriptions=settings.max_subscriptions,
        )
        return cls(hub, destinations, config, metrics, limits, access,
                   (settings.stomp_login, settings.stomp_passcode))

    def serve(self, ws, sender: str, client: str = "?", identity: Identity | None = None) -> None:
        """Run one STOMP session on an open WebSocket until it ends; release everything.

        ``sender`` is the handshake session's guest name; ``identity`` what its cookie or
        ticket proved, if anything (CONNECT may prove more: see stomp_auth.py).
        """
        connection = Connection(self, ws, sender, client=client, identity=identity)
        self.connections.add(connection)
        try:
            if self.metrics is None:
                connection.run()
            else:
                with self.metrics.connection("stomp"):
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


class _Pump:
    """One SUBSCRIBE: its hub subscription, the greenlet feeding it to the session,
    and the signal that wakes that greenlet when an ACK reopens its window."""

    __slots__ = ("sub_id", "subscription", "window", "greenlet")

    def __init__(self, sub_id: str, subscription: Subscription) -> None:
        self.sub_id = sub_id
        self.subscription = subscription
        self.window = gevent.event.Event()
        self.greenlet: gevent.Greenlet | None = None

    def stop(self) -> None:
        self.subscription.close()  # wakes a get(); the greenlet sees SubscriptionClosed
        self.window.set()


class Connection:
    """One WebSocket's STOMP session, driven by the reader, a timer and one greenlet per subscription.

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
        self._bucket = broker.limits.publish_bucket() if broker.limits is not None else None
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
        self._lock = gevent.lock.Semaphore()
        self._pumps: dict[str, _Pump] = {}
        self._wake_timer = gevent.event.Event()
        self._close_code: int | None = None
        self._withdrawn: list[str] = []  # receipt ids of frames the broker refused after all
        self._socket_dead = False
        self._delivered = broker.metrics.delivered.labels("stomp") if broker.metrics is not None else None
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Connect: self._on_connect,
            Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe,
            Send: self._on_send,
            Ack: self._on_ack,
            Nack: self._on_nack,
            Closed: self._on_closed,
        }

    @property
    def sender(self) -> str:
        """The name stamped on what this connection publishes: its identity's, once connected."""
        principal = self.session.principal
        return principal.sender if isinstance(principal, Identity) else self._guest

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
            greenlets = [timer, *(p.greenlet for p in self._pumps.values() if p.greenlet is not None)]
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
                # A bounded batch read: the subscribers' pumps, woken by what it published,
                # run before the next one (a flood must not starve delivery).
                gevent.sleep(0)

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

    def _pump(self, pump: _Pump) -> None:
        session, sub_id, subscription = self.session, pump.sub_id, pump.subscription
        delivered = 0  # counted once per drained batch, not per event (a metrics write each)
        try:
            while True:
                while not session.can_deliver(sub_id):
                    if delivered:
                        self._count_delivered(delivered)
                        delivered = 0
                    if session.closed or subscription.closed:
                        return
                    # Window full (client ack modes): take nothing more from the hub;
                    # its bounded queue and history catch-up hold the backlog.
                    pump.window.clear()
                    pump.window.wait()
                item = subscription.get()
                if isinstance(item, Gap):
                    session.deliver(sub_id, b"", _GAP_HEADERS, now=self._clock())
                    if item.slow:
                        log.info("slow consumer dropped: client %s, transport stomp, topic %s: fell behind its "
                                 "queue and history; sent MESSAGE gap:true, then ERROR and 1008",
                                 self.client, item.topic)
                        self._fail("slow consumer",
                                   f"This connection fell too far behind topic {item.topic!r}; events were lost. "
                                   + _RECONNECT_HINT, CLOSE_POLICY_VIOLATION, kind="slow-consumer")
                else:
                    body, headers = encode_message(item)
                    tail = message_tail(item, session.escapes_messages)
                    if session.deliver(sub_id, body, headers, now=self._clock(), tail=tail):
                        delivered += 1
                if delivered and not subscription.depth:  # the batch is written: count it first
                    self._count_delivered(delivered)
                    delivered = 0
                self._drain()
        except SubscriptionClosed as exc:
            if exc.reason == "shutdown":
                self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, kind="shutdown")
                self._drain()
            # "closed": UNSUBSCRIBE or the end of the session; "slow consumer": handled at its Gap.
        except BackendUnavailable as exc:  # a history read (replay or catch-up) failed
            log.warning("STOMP subscription to %s failed: backend unavailable: %s", subscription.topic, exc)
            self._fail("backend unavailable", f"The event store is unavailable: {exc}. " + _RECONNECT_HINT,
                       CLOSE_INTERNAL_ERROR)
            self._drain()
        except Exception:  # never leave a subscription silently dead: end the session instead
            log.error("STOMP subscription to %s failed", subscription.topic, exc_info=True)
            self._fail("internal error", "Delivering this subscription failed. " + _RECONNECT_HINT,
                       CLOSE_INTERNAL_ERROR)
            self._drain()
        finally:
            if delivered:
                self._count_delivered(delivered)

    def _count_delivered(self, count: int) -> None:
        if self._delivered is not None:
            self._delivered.inc(count)

    # -- requests and writes, one greenlet at a time ------------------------------

    def _drain(self) -> None:
        """Handle the session's requests, then write what it queued, until both are empty."""
        session = self.session
        with self._lock:
            while True:
                requests = session.requests()
                for request_ in requests:
                    self._dispatch[type(request_)](request_)
                chunks = session.data_to_send()
                if self._withdrawn:
                    chunks = self._withdraw_receipts(chunks)
                self._write(chunks)
                if not requests and not chunks:
                    break
            if session.closed and not self._socket_dead:
                self._close_socket()

    def _write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if self._socket_dead:
                return
            try:
                # One message per frame or heart-beat; binary only for a non-UTF-8 body.
                self.ws.send_encoded(chunk, binary=not _is_utf8(chunk))
            except WebSocketError:
                self._socket_dead = True
                self.session.connection_lost("connection lost while sending")

    def _withdraw_receipts(self, chunks: list[bytes]) -> list[bytes]:
        # The session queues a frame's RECEIPT as soon as it has parsed it, before the
        # broker acted on it. When the broker then refuses the frame (a body that is not
        # JSON, a handler that says no), the RECEIPT is still unwritten here: drop it, so
        # the client sees only the ERROR, which carries the same receipt-id (STOMP 1.2:
        # a RECEIPT means the frame was processed successfully).
        withdrawn = {serialize(Frame("RECEIPT", (("receipt-id", receipt),)), self.session.version)
                     for receipt in self._withdrawn}
        self._withdrawn.clear()
        return [chunk for chunk in chunks if chunk not in withdrawn]

    def _close_socket(self) -> None:
        error = self.session.error
        code = self._close_code or CLOSE_CODES.get(error.kind if error else None, CLOSE_POLICY_VIOLATION)
        reason = error.message if error is not None else (self.session.close_reason or "")
        self._socket_dead = True
        self.ws.close(code, reason)

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
            if receipt_id is not None:
                self._withdrawn.append(receipt_id)
            self.session.send_error(message, detail, receipt_id=receipt_id)

    # -- request handlers -----------------------------------------------------------

    def _on_connect(self, request_: Connect) -> None:
        log.debug("STOMP %s connected: version %s, heart-beat %s", request_.session_id, request_.version,
                  request_.heart_beat)
        self._wake_timer.set()  # heart-beat deadlines exist from now on

    def _on_subscribe(self, request_: Subscribe) -> None:
        receipt = _first(request_.headers, "receipt")
        kind, topic = self.broker.destinations.resolve(request_.destination)  # the session validated it
        if kind != "topic":
            prefix = self.broker.destinations.topic_prefix
            self._fail("cannot subscribe to an application destination",
                       f"{request_.destination!r} takes SEND frames only; subscribe to {prefix}/<topic>.",
                       CLOSE_POLICY_VIOLATION, receipt)
            return
        since = request_.last_event_id or None
        if since is not None:
            try:
                Cursor.parse(since)
            except InvalidCursor as exc:
                self._fail("invalid last-event-id", f"{exc}. Resume with an event-id header of a MESSAGE.",
                           CLOSE_POLICY_VIOLATION, receipt)
                return
        try:
            subscription = self.hub.subscribe(topic, since=since, member=self.sender)
        except SubscriptionClosed:
            self._fail("server shutting down", _RECONNECT_HINT, CLOSE_GOING_AWAY, receipt)
            return
        pump = self._pumps[request_.sub_id] = _Pump(request_.sub_id, subscription)
        pump.greenlet = gevent.spawn(self._pump, pump)

    def _on_unsubscribe(self, request_: Unsubscribe) -> None:
        pump = self._pumps.pop(request_.sub_id, None)
        if pump is not None:
            pump.stop()

    def _on_send(self, request_: Send) -> None:
        receipt = _first(request_.headers, "receipt")
        kind, name = self.broker.destinations.resolve(request_.destination)  # the session validated it
        wait = self._bucket.take() if self._bucket is not None else 0.0
        if wait:
            self.broker.limits.rejected("publish_rate")
            self._fail("publish rate exceeded",
                       f"At most {self._bucket.rate:g} SEND frames a second (bursts of {self._bucket.burst}) per "
                       f"connection; this one was not published. Reconnect after {wait:.1f} s or more.",
                       CLOSE_POLICY_VIOLATION, receipt, kind="rate-limit")
            return
        try:
            forced_type, data = decode_send_body(request_.body, request_.content_type)
            if kind == "app":
                headers = {}
                for key, value in request_.headers:
                    headers.setdefault(key, value)
                identity = self.session.principal if isinstance(self.session.principal, Identity) else None
                check = self.gate.checker(identity) if self.gate is not None and identity is not None else None
                self._call_handler(name, AppMessage(request_.destination, name, data, headers, self.sender,
                                                    identity, check), receipt)
            else:
                type_ = forced_type or _first(request_.headers, "event-type") or "message"
                self.hub.publish(name, data, type=type_, sender=self.sender)
                if self._published is not None:
                    self._published.inc()
        except (BodyError, HandlerError) as exc:
            self._fail(exc.message, exc.detail, CLOSE_POLICY_VIOLATION, receipt)
        except AccessError as exc:  # an application handler refused this identity
            refusal = StompGate.refusal(exc, request_.destination)
            self._fail(refusal.message, refusal.detail, CLOSE_POLICY_VIOLATION, receipt, kind=refusal.kind)
        except InvalidEventType as exc:
            self._fail("invalid event-type", str(exc), CLOSE_POLICY_VIOLATION, receipt)
        except BackendUnavailable as exc:
            log.warning("STOMP SEND to %s failed: backend unavailable: %s", request_.destination, exc)
            self._fail("backend unavailable", f"The event store is unavailable: {exc}. " + _RECONNECT_HINT,
                       CLOSE_INTERNAL_ERROR, receipt)
        except TooManyTopics as exc:  # counted by the hub
            refusal = topic_refusal(exc)
            self._fail("too many topics", f"{refusal.message[0].upper()}{refusal.message[1:]}; this SEND was not "
                       f"published. Reconnect after {refusal.retry_after} s or more.",
                       CLOSE_POLICY_VIOLATION, receipt, kind="too-many-topics")

    def _call_handler(self, name: str, message: AppMessage, receipt: str | None) -> None:
        handler = self.broker.destinations.handlers.get(name)
        try:
            handler(self.hub, message)
        except (HandlerError, BackendUnavailable, InvalidEventType, AccessError, TooManyTopics):
            raise  # answered by _on_send
        except Exception:  # a bug in application code: end this session, not the worker's others
            log.error("STOMP handler %r failed on %s", name, message.destination, exc_info=True)
            self._fail("internal error", f"The handler for {message.destination} failed.", CLOSE_INTERNAL_ERROR,
                       receipt)

    def _on_ack(self, request_: Ack) -> None:
        pump = self._pumps.get(request_.sub_id)
        if pump is not None:
            pump.window.set()

    def _on_nack(self, request_: Nack) -> None:
        pass  # the session redelivered the messages itself; the window is unchanged

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
    app.register_blueprint(bp)
    shutdown = app.extensions.get("switchboard.shutdown")
    if shutdown is not None:
        shutdown.add("stomp", broker.shutdown)  # before the hub closes: ERROR frames, then 1001

    @app.context_processor
    def stomp_chat_destinations() -> dict:
        # For the STOMP page: where the demo chat listens and sends, with this app's prefixes.
        destinations = broker.destinations
        return {"stomp_chat": {"subscribe": f"{destinations.topic_prefix}/chat",
                               "send": f"{destinations.app_prefix}/chat"}}
