"""Work queues over ``/ws``: the JSON ops that consume, acknowledge and send (app/hub/queues.py).

Client to server (each may carry ``ref``; each gets one ``ok`` or ``error``)::

    {"op": "consume", "queue": "jobs", "prefetch"?: 1}     # ok {"queue"}; prefetch 1-256
    {"op": "ack",     "id": "<message id>"}                # ok {"id"}: done, gone from the queue
    {"op": "nack",    "id": "<message id>"}                # ok {"id"}: back, for another consumer
    {"op": "cancel",  "queue": "jobs"}                     # ok {"queue"}: what is held goes back
    {"op": "send",    "queue": "jobs", "type"?, "data", "headers"?}   # ok {"queue", "id"}

Server to client, for each message given to this connection's consumer (``ok`` first)::

    {"op": "message", "queue", "id", "type", "data", "sender", "time", "headers"?,
     "delivery_count": 1, "redelivered": false}

A consumer holds at most ``prefetch`` messages un-acknowledged (as STOMP's client-individual
mode): ``ack`` each. Closing the connection, ``cancel``, or the ack timeout give back what it
holds, with ``delivery_count`` one higher. Errors: ``bad_queue``, ``bad_message``,
``already_consuming``, ``not_consuming``, ``not_held`` (an id this connection does not hold:
never given, already settled, or taken back after the ack timeout), ``queue_full`` (the
queue, or the number of queues, at its bound: nothing stored), ``too_many_subscriptions``
(a consumer counts as a subscription), and access control's (``subscribe``/``publish`` on
``queue.<name>``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import gevent

from ..events import NAME_RULE, InvalidHeaders, check_headers, check_type
from ..hub import Consumer, Delivery, QueueFull, SubscriptionClosed
from .stomp_destinations import QUEUE_NAME_RE

__all__ = ["Ack", "Cancel", "Consume", "Nack", "Send", "WsQueues", "QUEUE_OPS"]

log = logging.getLogger(__name__)

MAX_PREFETCH = 256


@dataclass(frozen=True)
class Consume:
    ref: Any
    queue: str
    prefetch: int


@dataclass(frozen=True)
class Ack:
    ref: Any
    id: str


@dataclass(frozen=True)
class Nack:
    ref: Any
    id: str


@dataclass(frozen=True)
class Cancel:
    ref: Any
    queue: str


@dataclass(frozen=True)
class Send:
    ref: Any
    queue: str
    type: str
    data: Any
    headers: tuple[tuple[str, str], ...] = ()


def _queue(value: Any, ref: Any, error) -> str:
    if not isinstance(value, str) or not QUEUE_NAME_RE.match(value):
        raise error("bad_queue", f"a queue is 1-100 characters of {NAME_RULE}, and starts with a letter or digit", ref)
    return value


def _prefetch(value: Any, ref: Any, error) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PREFETCH:
        raise error("bad_message", f"prefetch must be an integer from 1 to {MAX_PREFETCH}", ref)
    return value


def _id(value: Any, ref: Any, error) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        raise error("bad_message", "id must be the id of a message this connection was given", ref)
    return value


def _send(m: dict, ref: Any, error) -> Send:
    try:
        type_ = check_type(m.get("type", "message"))
    except ValueError as exc:
        raise error("bad_type", str(exc), ref) from None
    headers = m.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise error("bad_headers", 'headers must be an object of strings, like {"x-trace": "abc"}', ref)
    try:
        checked = check_headers(headers)
    except InvalidHeaders as exc:
        raise error("bad_headers", str(exc), ref) from None
    return Send(ref, _queue(m["queue"], ref, error), type_, m["data"], checked)


#: op -> (builder(message, ref, error), required fields, optional fields), as websocket.py's table.
QUEUE_OPS = {
    "consume": (
        lambda m, ref, e: Consume(ref, _queue(m["queue"], ref, e), _prefetch(m.get("prefetch"), ref, e)),
        frozenset({"queue"}),
        frozenset({"prefetch"}),
    ),
    "ack": (lambda m, ref, e: Ack(ref, _id(m["id"], ref, e)), frozenset({"id"}), frozenset()),
    "nack": (lambda m, ref, e: Nack(ref, _id(m["id"], ref, e)), frozenset({"id"}), frozenset()),
    "cancel": (lambda m, ref, e: Cancel(ref, _queue(m["queue"], ref, e)), frozenset({"queue"}), frozenset()),
    "send": (_send, frozenset({"queue", "data"}), frozenset({"type", "headers"})),
}


def encode_message(delivery: Delivery) -> str:
    """The ``message`` op of one delivery."""
    event = delivery.event
    body = {
        "op": "message",
        "queue": event.topic,
        "id": event.id,
        "type": event.type,
        "data": event.data,
        "sender": event.sender,
        "time": event.time,
    }
    if event.headers:
        body["headers"] = event.header_map()
    body["delivery_count"] = delivery.count
    body["redelivered"] = delivery.redelivered
    return json.dumps(body, separators=(",", ":"))


class WsQueues:
    """The queue side of one ``/ws`` connection (see the module docstring).

    Args:
        connection: the ``websocket.Connection`` (its socket, hub, access, limits, and the
            list of greenlets started once the current reply is out).
        error: the ``ClientError`` class (a refusal becomes an ``error`` op).
        ok: ``ok(ref, **details)`` -> the reply text.
    """

    OPS: dict[type, Callable[..., str]] = {}  # filled below the class

    def __init__(self, connection, error, ok) -> None:
        self.connection = connection
        self._error = error
        self._ok = ok
        self.consumers: dict[str, Consumer] = {}
        self._holders: dict[str, Consumer] = {}  # message id -> the consumer that holds it

    def consume(self, cmd: Consume) -> str:
        connection = self.connection
        if cmd.queue in self.consumers:
            raise self._error("already_consuming", f"already consuming {cmd.queue!r}", cmd.ref)
        if len(connection.subscriptions) + len(self.consumers) >= connection.max_subscriptions:
            if connection.limits is not None:
                connection.limits.rejected("subscriptions")
            raise self._error(
                "too_many_subscriptions",
                f"a connection follows at most {connection.max_subscriptions} topics and queues",
                cmd.ref,
            )
        if connection.auth is not None:
            connection.auth.authorize("subscribe", f"queue.{cmd.queue}")
        try:
            consumer = connection.hub.consume(cmd.queue, cmd.prefetch)
        except QueueFull as exc:
            raise self._error("queue_full", str(exc), cmd.ref) from None
        self.consumers[cmd.queue] = consumer
        connection._to_start.append(gevent.Greenlet(self._feed, consumer))  # after the "ok"
        return self._ok(cmd.ref, queue=cmd.queue)

    def ack(self, cmd: Ack) -> str:
        self._settle(cmd.id, cmd.ref, "ack")
        return self._ok(cmd.ref, id=cmd.id)

    def nack(self, cmd: Nack) -> str:
        self._settle(cmd.id, cmd.ref, "nack")
        return self._ok(cmd.ref, id=cmd.id)

    def _settle(self, message_id: str, ref: Any, how: str) -> None:
        consumer = self._holders.pop(message_id, None)
        done = consumer is not None and (consumer.ack(message_id) if how == "ack" else consumer.nack(message_id))
        if not done:
            raise self._error(
                "not_held",
                f"this connection holds no message {message_id[:100]!r} (never given, "
                "already settled, or taken back after the ack timeout)",
                ref,
            )

    def cancel(self, cmd: Cancel) -> str:
        consumer = self.consumers.pop(cmd.queue, None)
        if consumer is None:
            raise self._error("not_consuming", f"not consuming {cmd.queue!r}", cmd.ref)
        consumer.close()  # what it holds goes back to the queue
        return self._ok(cmd.ref, queue=cmd.queue)

    def send(self, cmd: Send) -> str:
        connection = self.connection
        if connection.auth is not None:
            connection.auth.authorize("publish", f"queue.{cmd.queue}")
        connection.charge_publish(cmd.ref)
        try:
            event = connection.hub.enqueue(
                cmd.queue, cmd.data, type=cmd.type, sender=connection.sender, headers=cmd.headers
            )
        except QueueFull as exc:
            raise self._error("queue_full", f"{exc}; nothing was stored", cmd.ref) from None
        connection.count_published()
        return self._ok(cmd.ref, queue=cmd.queue, id=event.id)

    def _feed(self, consumer: Consumer) -> None:
        try:
            while True:
                delivery = consumer.get()
                self._holders[delivery.event.id] = consumer
                self.connection.ws.send(encode_message(delivery))
                self.connection.count_delivered(1)
        except SubscriptionClosed:
            pass
        except Exception:  # the socket went away (the reader notices), or a bug: end this consumer
            log.debug("WebSocket queue consumer of %s ended", consumer.queue, exc_info=True)
            consumer.close()

    def release(self) -> None:
        """Close every consumer: what they hold goes back to their queues."""
        consumers = list(self.consumers.values())
        self.consumers.clear()
        self._holders.clear()
        for consumer in consumers:
            consumer.close()


#: The work-queue ops, by kind: one table for every connection.
WsQueues.OPS = {
    Consume: WsQueues.consume,
    Ack: WsQueues.ack,
    Nack: WsQueues.nack,
    Cancel: WsQueues.cancel,
    Send: WsQueues.send,
}
