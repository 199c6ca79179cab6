"""``/ws``: the hub over one WebSocket, as JSON ops (one JSON object per text message).

This module is the connection (reading, replies, subscriptions as delivery feeds, access
control); the protocol itself, parsing and building the ops without I/O, is
:mod:`app.transports.ws_protocol`.

Client to server (every op may carry ``ref``, a string of at most 256 characters or a
number; the reply echoes it, or carries ``"ref": null`` when the client gave none)::

    {"op": "subscribe",   "ref"?, "topic": "chat", "since"?: "<cursor>"}
    {"op": "unsubscribe", "ref"?, "topic": "chat"}
    {"op": "publish",     "ref"?, "topic": "chat", "type"?: "message", "data": <any JSON>,
                          "headers"?: {"x-name": "value"}}
    {"op": "ping",        "ref"?}
    {"op": "auth",        "ref"?, "token": "<JWT>"}   # sign in or refresh (see ws_auth.py)
    {"op": "consume" | "ack" | "nack" | "cancel" | "send", ...}   # work queues (see ws_queues.py)

Server to client. Every client op gets exactly one reply, ``ok`` or ``error``::

    {"op": "ok", "ref": r, "topic": "chat", "cursor": "<cursor or ''>"}   # subscribe
    {"op": "ok", "ref": r, "topic": "chat"}                              # unsubscribe
    {"op": "ok", "ref": r, "topic": "chat", "id": "<cursor>"}           # publish
    {"op": "ok", "ref": r, "time": <server unix seconds>}               # ping
    {"op": "ok", "ref": r, "sub": "...", "sender": "...", "expires_in": <s>}   # auth
    {"op": "error", "ref": r, "error": "<code>", "message": "<human text>"}

and, for each subscription, in order::

    {"op": "event", "id", "topic", "type", "data", "sender", "time"}    # DESIGN.md §3
    {"op": "gap", "topic": "chat"}                                       # events were lost here

and, when the connection's token runs out, ``{"op": "expired", "grace": <s>, "message"}``
(:mod:`app.transports.ws_auth`: send op ``auth`` within the grace, or 4001 closes it).

Subscribing:

* Without ``since`` (or with ``""``), the subscription starts at the topic's newest
  event; the ``ok`` reply's ``cursor`` names it (``""`` for a topic never published
  to), and every event after it is delivered. A client that keeps the id of the last
  event it saw (or that cursor, if it saw none) resumes after a drop by subscribing
  again with ``since``: the missed events are replayed, then live ones follow, each
  exactly once and in order (the hub's seam rule). Replies come before the events of
  the subscription they start: the ``ok`` of a subscribe precedes its first event, and
  no event of a topic follows the ``ok`` of its unsubscribe.
* A publisher subscribed to the topic gets its own event too; its ``ok`` and that
  event may arrive in either order.
* A ``since`` older than history, or from another epoch (the server restarted), gets
  ``{"op": "gap"}`` first, then the oldest retained events, then live ones.
* A subscriber that falls behind is caught up from history without noticing. If
  history no longer has what it missed, it gets ``{"op": "gap", "topic"}`` and then
  ``{"op": "error", "ref": null, "error": "slow_consumer", "topic", "message"}``: that
  subscription is dropped (the client may subscribe again with ``since``) and the
  connection stays open, since its other subscriptions are healthy. Closing the whole
  connection (1008) would punish them for one topic's backlog.

Error codes: ``bad_json`` (not JSON), ``bad_message`` (not an object, ``op`` missing or
not a string, a missing or unknown field, ``sender`` in a publish: the server sets it),
``bad_ref``, ``unknown_op``, ``bad_topic``, ``bad_cursor``, ``bad_type``, ``bad_headers`` (see
:func:`app.events.check_headers`),
``already_subscribed``, ``not_subscribed``, ``too_many_subscriptions`` (at most
``SWITCHBOARD_MAX_SUBSCRIPTIONS`` per connection, default :data:`MAX_SUBSCRIPTIONS`),
``rate_limited`` (a publish beyond ``SWITCHBOARD_PUBLISH_RATE``/``_BURST`` for this
connection; the error carries ``retry_after`` in seconds and nothing is published),
``too_many_topics`` (a publish to a new topic beyond ``SWITCHBOARD_MAX_TOPICS``; with
``retry_after``, nothing published),
``unavailable`` (the event store is down), ``shutting_down``; access control's
``unauthorized`` (anonymous, or a token that fails or expired), ``forbidden`` (this
identity may not use the topic; the error carries ``topic``), ``auth_unavailable`` (the
decision hook is down: fail closed) and ``auth_refused`` (an auth op out of turn); and,
without a ref, ``slow_consumer`` and ``subscription_closed`` (and ``forbidden`` for a
subscription a refreshed token no longer covers: it is dropped). A bad message never
closes the connection.

What does close it: a binary message (1003, "unsupported data", RFC 6455 7.4.1: this
endpoint speaks JSON text only, and a client sending binary speaks another protocol
altogether, so every later message would fail too); the limits and frame errors of
:mod:`app.transports.wsio` (1009 too big, 1002, 1007); keepalive (1011); and the
server's shutdown (1001, sent by wsio on SIGTERM).

``sender`` is the connection's identity (:mod:`app.transports.ws_auth`): its token's
name, else the session of the handshake's cookie (:func:`app.identity.current_sender`);
a publish cannot set it. A handshake without the cookie gets a fresh guest name for
that connection (an upgrade response cannot set a cookie).

Writing: a connection has one greenlet, its reader. Its subscriptions are feeds of the
delivery layer (:mod:`app.delivery`): the worker's fan-out greenlet takes their events and
writes each one's WebSocket frame, built once per event and shared by every connection,
straight into the socket's outbox; a writer greenlet exists only while the socket has a
backlog. Replies go through the same outbox, so nothing interleaves. A slow socket only
delays its own feeds; the hub only ever offers to queues. The reader reads a bounded batch
of messages, then lets delivery catch up (:meth:`app.delivery.Delivery.pace`), so a
publisher's flood slows the publisher instead of starving its readers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent
import gevent.pool
from flask import Blueprint, Flask, request

from ..auth import AccessError
from ..delivery import Delivery, Feed
from ..delivery.channel import ChannelOutbox
from ..errors import ApiError
from ..events import Event, Gap
from ..hub import BackendUnavailable, Hub, Subscription, SubscriptionClosed, TooManyTopics
from ..identity import current_sender
from ..limits import Limits, TokenBucket, topic_refusal
from ..metrics import Metrics
from ..server.frames import OP_TEXT, encode_frame
from ..services import Services, services
from .ws_auth import WsAuth
from .ws_protocol import (
    Auth,
    ClientError,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_event,
    encode_gap,
    error,
    ok,
    parse,
)
from .ws_queues import WsQueues
from .wsio import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    ENVIRON_WEBSOCKET,
    WebSocket,
    WebSocketError,
)

log = logging.getLogger(__name__)

bp = Blueprint("websocket", __name__)

MAX_SUBSCRIPTIONS = 100
"""Topics one connection may follow at once, unless ``SWITCHBOARD_MAX_SUBSCRIPTIONS``
says otherwise; each costs a queue."""

PACE = 32
"""Messages the reader handles before it lets delivery catch up (see the module docstring)."""


def _event_frame(event: Event) -> bytes:
    return encode_frame(OP_TEXT, encode_event(event))


class WsJsonFramer:
    """One ``/ws`` subscription's wire format for the delivery layer
    (:class:`app.delivery.Framer`): each event as the WebSocket frame of its ``event`` op,
    built once per event and shared by every connection."""

    __slots__ = ("connection", "sub")

    def __init__(self, connection: "Connection", sub: Subscription):
        self.connection = connection
        self.sub = sub

    def frame(self, items: list, out: list) -> int:
        events = 0
        raw = self.connection._raw  # else a SockJS session: messages, not frames
        for item in items:
            if isinstance(item, Gap):
                gap = encode_gap(self.sub.topic)
                out.append(encode_frame(OP_TEXT, gap) if raw else gap)
            else:
                out.append(item.encoded("ws-frame", _event_frame) if raw else encode_event(item))
                events += 1
        return events

    def closed(self, reason: str, out: list) -> bool:
        reply = self.connection.ended(self.sub, reason)
        if reply is not None:
            data = reply.encode("utf-8")
            out.append(encode_frame(OP_TEXT, data) if self.connection._raw else data)
        return False  # the connection and its other subscriptions stay


# ---------------------------------------------------------------------- connection


class Connection:
    """One ``/ws`` connection: reads ops, keeps its subscriptions, forwards their events.

    Args:
        ws: the accepted WebSocket (``environ["wsgi.websocket"]``).
        hub: the application's hub.
        sender: the identity stamped on this connection's publishes.
        metrics: where open connections and delivered events are counted, if anywhere.
        limits: the subscription and publish-rate limits (none without it), and where
            their refusals are counted.
        client: the client's address, for log lines.

    Call :meth:`with_access` before :meth:`run` to put it under access control; without
    it every op is allowed and ``sender`` never changes.
    """

    def __init__(
        self,
        ws: WebSocket,
        hub: Hub,
        sender: str,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        client: str = "?",
        delivery: Delivery | None = None,
    ):
        self.ws = ws
        self.hub = hub
        self._sender = sender
        self.auth: WsAuth | None = None
        self.client = client
        self.limits = limits
        self.max_subscriptions = limits.max_subscriptions if limits is not None else MAX_SUBSCRIPTIONS
        self._bucket: TokenBucket | None = limits.publish_bucket() if limits is not None else None
        self._delivered = metrics.delivered.labels("websocket") if metrics is not None else None
        self._published = metrics.publishes.labels("websocket") if metrics is not None else None
        self._refusals = metrics.auth_refusals if metrics is not None else None
        self.subscriptions: dict[str, Subscription] = {}
        self.delivery = delivery if delivery is not None else Delivery()
        outbox = getattr(ws, "outbox", None)
        self._raw = outbox is not None  # a WebSocket: events go out as frames built once
        if outbox is None:  # a SockJS session: events go out as messages, replies with them
            outbox = ChannelOutbox(ws)
            self._reply = outbox.send
        else:
            self._reply = ws.send
        self.stream = self.delivery.stream(outbox, "websocket", client)
        self._feeds: dict[Subscription, Feed] = {}
        # Subscriptions (and work-queue consumers' greenlets, ws_queues.py) waiting for their "ok" to go out.
        self._to_start: list[Subscription | gevent.Greenlet] = []
        self._handled = 0  # messages read, for pacing
        self._consumers: gevent.pool.Group | None = None  # the work-queue consumers' greenlets, once there is one
        self.queues = WsQueues(self, ClientError, ok)

    def with_access(self, access, identity, grace: float) -> "Connection":
        """Put this connection under access control, as ``identity`` (see ws_auth.py)."""
        self.auth = WsAuth(access, identity, grace, self.ws, self._refused)
        # No event goes out while the token is expired; a refresh lets them through again.
        self.stream.gate = self.auth.live
        self.auth.on_live = lambda: self.delivery.ready(self.stream)
        return self

    def _refused(self, code: str) -> None:
        if self._refusals is not None:
            self._refusals.labels(code, "websocket").inc()

    @property
    def sender(self) -> str:
        """The name stamped on this connection's publishes."""
        return self.auth.identity.sender if self.auth is not None else self._sender

    def run(self) -> None:
        """Serve the connection until it closes; release everything it held."""
        try:
            while True:
                message = self.ws.receive()
                if message is None or not self.on_message(message):
                    return
        finally:
            self.release()

    def on_message(self, message: str | bytes) -> bool:
        """Act on one message: reply, then start what it subscribed to; whether to read on."""
        if not isinstance(message, str):
            # Binary: another protocol altogether (see the module docstring).
            self.ws.close(CLOSE_UNSUPPORTED_DATA, "this endpoint takes JSON text messages only")
            return True  # the peer's Close comes next
        reply = self.handle(message)
        try:
            self._reply(reply)
        except WebSocketError:
            return False
        # Only now may a new subscription's events go out: "ok" comes first.
        while self._to_start:
            self._start(self._to_start.pop(0))
        self._handled += 1
        if self._handled % PACE == 0:
            # A bounded batch read: let delivery write what it brought before the
            # next one (a flood of publishes must not starve the subscribers).
            self.delivery.pace()
        return True

    def handle(self, text: str) -> str:
        """Act on one message; the reply's text (``ok`` or ``error``)."""
        ref = command = None
        try:
            command = parse(text)
            ref = command.ref
            if self.auth is not None and not isinstance(command, Auth):
                self.auth.note_op()
            op = _OPS.get(type(command))
            if op is not None:
                return op(self, command)
            return WsQueues.OPS[type(command)](self.queues, command)
        except AccessError as exc:
            self._refused(exc.code)
            topic = getattr(command, "topic", None)
            queue = getattr(command, "queue", None)
            details = {"topic": topic} if topic is not None else {"queue": queue} if queue is not None else {}
            return error(ref, exc.code, exc.message, **details)
        except ClientError as exc:
            return error(exc.ref if exc.ref is not None else ref, exc.code, exc.message, **exc.details)
        except BackendUnavailable as exc:
            return error(ref, "unavailable", f"the event store is unavailable: {exc}")
        except TooManyTopics as exc:  # a publish to a new topic; counted by the hub
            refusal = topic_refusal(exc)
            return error(ref, refusal.code, refusal.message, retry_after=refusal.retry_after)
        except SubscriptionClosed as exc:  # the hub refuses new subscriptions
            return error(ref, "shutting_down", f"the server is {exc.reason}; reconnect shortly")

    # -- ops ------------------------------------------------------------------------

    def _subscribe(self, cmd: Subscribe) -> str:
        if cmd.topic in self.subscriptions:
            raise ClientError("already_subscribed", f"already subscribed to {cmd.topic!r}", cmd.ref)
        if len(self.subscriptions) >= self.max_subscriptions:
            if self.limits is not None:
                self.limits.rejected("subscriptions")
            raise ClientError(
                "too_many_subscriptions", f"a connection follows at most {self.max_subscriptions} topics", cmd.ref
            )
        if self.auth is not None:
            self.auth.authorize("subscribe", cmd.topic)
        cursor = cmd.since
        if cursor is None:
            # Start at the newest event: replaying "after it" then covers anything
            # published between this read and the subscription (seam rule), and the
            # client learns a cursor to resume from even before its first event.
            cursor = self.hub.history(cmd.topic, limit=1).cursor
        sub = self.hub.subscribe(cmd.topic, since=cursor or None, member=self.sender)
        self.subscriptions[cmd.topic] = sub
        self._to_start.append(sub)  # delivered by run() once the reply is sent
        return ok(cmd.ref, topic=cmd.topic, cursor=cursor)

    def _start(self, sub: Subscription | gevent.Greenlet) -> None:
        if isinstance(sub, gevent.Greenlet):  # a work-queue consumer: not on the delivery layer yet
            if self._consumers is None:
                self._consumers = gevent.pool.Group()
            self._consumers.start(sub)
            return
        if self.subscriptions.get(sub.topic) is sub:  # not ended meanwhile
            self._feeds[sub] = self.delivery.attach(self.stream, sub, WsJsonFramer(self, sub), sub.topic)

    def _unsubscribe(self, cmd: Unsubscribe) -> str:
        sub = self.subscriptions.pop(cmd.topic, None)
        if sub is None:
            raise ClientError("not_subscribed", f"not subscribed to {cmd.topic!r}", cmd.ref)
        self._stop(sub)  # what was written is before the reply; nothing follows it
        return ok(cmd.ref, topic=cmd.topic)

    def _stop(self, sub: Subscription) -> None:
        feed = self._feeds.pop(sub, None)
        if feed is not None:
            feed.detach()
        sub.close()

    def _publish(self, cmd: Publish) -> str:
        if self.auth is not None:
            self.auth.authorize("publish", cmd.topic)  # before the rate limit: a refusal costs no token
        self.charge_publish(cmd.ref)
        event = self.hub.publish(cmd.topic, cmd.data, type=cmd.type, sender=self.sender, headers=cmd.headers)
        self.count_published()
        return ok(cmd.ref, topic=cmd.topic, id=event.id)

    def charge_publish(self, ref: Any) -> None:
        """Take one publish from the connection's rate bucket, or refuse with ``rate_limited``."""
        wait = self._bucket.take() if self._bucket is not None else 0.0
        if wait:
            self.limits.rejected("publish_rate")
            raise ClientError(
                "rate_limited",
                f"at most {self._bucket.rate:g} publishes a second (bursts of {self._bucket.burst}) "
                "per connection; this one was not published",
                ref,
                retry_after=round(wait, 3),
            )

    def count_published(self) -> None:
        if self._published is not None:
            self._published.inc()

    def count_delivered(self, count: int) -> None:
        if self._delivered is not None:
            self._delivered.inc(count)

    def _ping(self, cmd: Ping) -> str:
        return ok(cmd.ref, time=time.time())

    def _auth(self, cmd: Auth) -> str:
        if self.auth is None:
            raise ClientError("unknown_op", "access control is not set up on this connection", cmd.ref)
        identity = self.auth.sign_in(cmd.token)  # a refusal raises and changes nothing
        try:
            for topic, sub in list(self.subscriptions.items()):
                self._recheck(topic, sub)
        finally:
            self.auth.resume()  # after a refresh the paused forwarders carry on where they stopped
        left = identity.seconds_left()
        return ok(
            cmd.ref, sub=identity.sub, sender=identity.sender, expires_in=None if left is None else max(0, int(left))
        )

    def _recheck(self, topic: str, sub: Subscription) -> None:
        """End a subscription that the connection's new token does not cover."""
        try:
            self.auth.authorize("subscribe", topic)
            return
        except AccessError as exc:
            refusal = exc
        if self.subscriptions.get(topic) is not sub:
            return
        del self.subscriptions[topic]
        self._stop(sub)
        self._refused(refusal.code)
        try:
            self._reply(error(None, refusal.code, f"subscription ended: {refusal.message}", topic=topic))
        except WebSocketError:
            pass  # gone: the reader notices

    # -- delivery -------------------------------------------------------------------

    def ended(self, sub: Subscription, reason: str) -> str | None:
        """The hub ended a subscription (its feed says so): forget it, and return the
        error op to tell the client, unless the connection ended it itself."""
        self._feeds.pop(sub, None)
        if self.subscriptions.get(sub.topic) is not sub:
            return None
        del self.subscriptions[sub.topic]
        if reason == "slow consumer":
            return error(
                None,
                "slow_consumer",
                "this subscription fell behind further than history reaches and was dropped; "
                "subscribe again with since",
                topic=sub.topic,
            )
        code = {"shutdown": "shutting_down", "unavailable": "unavailable"}.get(reason, "subscription_closed")
        return error(None, code, f"subscription ended: {reason}", topic=sub.topic)

    def release(self) -> None:
        """Close every subscription and end delivery to the socket (idempotent)."""
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        self._to_start.clear()
        self.queues.release()  # what its consumers hold goes back to their queues
        if self._consumers is not None:
            self._consumers.join(timeout=1.0)  # they end at their consumer's close
            self._consumers.kill(block=False)
        if self.auth is not None:
            self.auth.close()  # stops its timers
        self.stream.close()  # closes every feed's subscription
        for sub in subs:
            sub.close()


#: What each client op runs (the work-queue ops are WsQueues.OPS): one table for every
#: connection, not a dict of bound methods per connection.
_OPS: dict[type, Callable[[Connection, Any], str]] = {
    Subscribe: Connection._subscribe,
    Unsubscribe: Connection._unsubscribe,
    Publish: Connection._publish,
    Ping: Connection._ping,
    Auth: Connection._auth,
}


# ---------------------------------------------------------------------------- views


def _upgrade_required() -> ApiError:
    return ApiError(
        426,
        "upgrade_required",
        '/ws is a WebSocket endpoint: open it with new WebSocket("ws://host/ws") '
        "(an HTTP/1.1 GET with Upgrade: websocket)",
        {"Upgrade": "websocket"},
    )


@bp.route("/ws", websocket=True)
def connect():
    """Serve one WebSocket connection of JSON ops until it closes."""
    ws = request.environ.get(ENVIRON_WEBSOCKET)
    if ws is None:  # a server without our WebSocket handler (e.g. `flask run`)
        raise _upgrade_required()
    app_services = services()
    metrics, limits, access = app_services.metrics, app_services.limits, app_services.access
    try:
        # Checked before the 101 (app/factory.py) and kept in the environ: this reads it back.
        identity = access.credentials(request.environ) or access.anonymous(current_sender())
    except AccessError as exc:  # only if no admission hook ran (a server without our policy)
        ws.close(CLOSE_POLICY_VIOLATION, exc.message[:120])
        return "", 204
    connection = Connection(
        ws, app_services.hub, identity.sender, metrics, limits, limits.client(request.environ), app_services.delivery
    )
    connection.with_access(access, identity, app_services.settings.auth_refresh_grace)

    gauge = metrics.connections.labels("websocket")
    gauge.inc()

    def end() -> None:
        connection.release()
        gauge.dec()
        if ws.close_code == CLOSE_MESSAGE_TOO_BIG:
            limits.rejected("message_size")

    # Messages are handed to the connection once this view has returned, by a greenlet
    # that exists only while there is something to read: an idle socket costs no greenlet
    # (app/server/reader.py).
    serve_events = getattr(ws, "serve_events", None)
    if serve_events is not None:
        serve_events(connection.on_message, end)
        return "", 204
    try:  # a stand-in socket without it: serve here
        connection.run()
    finally:
        end()
    return "", 204


@bp.get("/ws")
def not_upgraded():
    """Refuse a plain GET: this URL only speaks WebSocket."""
    raise _upgrade_required()


def init_app(app: Flask, services: Services) -> dict[str, tuple[str, ...]]:
    """Register ``/ws``; it takes WebSockets without a sub-protocol."""
    app.register_blueprint(bp)
    return {"/ws": ()}
