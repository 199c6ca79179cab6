"""What a STOMP SEND or COMMIT publishes: checked first, then stored all together or not at all.

:meth:`StompPublisher.prepare` turns one SEND into the publications it makes, without
side effects: the body is decoded, the user headers checked, the destination resolved (a
``/user/<sub>/queue/<name>`` SEND is its hub topic), an application handler run against a
recorder that only notes what it would publish, the publish rate charged. A COMMIT
prepares every SEND of the transaction this way, and only when all of them passed does
:meth:`StompPublisher.publish` hand the lot to :meth:`app.hub.Hub.publish_batch`, which
stores every one or none. Any failure is a :class:`Refusal` that says which frame failed;
the broker answers it with one ERROR, and nothing of that SEND or transaction is published.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..auth import AccessError, Identity
from ..events import InvalidEventType, InvalidTopic, check_topic, check_type
from ..hub import BackendUnavailable, Hub, Publication, QueueFull, TooManyTopics
from ..limits import TokenBucket, topic_refusal
from ..stomp import Send
from ..stomp_handlers import AppMessage, HandlerError
from .stomp_auth import StompGate
from .stomp_destinations import Destinations, user_topic
from .stomp_mapping import BodyError, decode_send_body, raw_body, send_headers

__all__ = ["Refusal", "StompPublisher"]

log = logging.getLogger(__name__)

RECONNECT_HINT = "Reconnect in a few seconds and SUBSCRIBE with last-event-id to resume where you stopped."


class Refusal(Exception):
    """A SEND (or a whole COMMIT) the broker refuses: one ERROR, then the session ends.

    Attributes:
        message: the ERROR ``message`` header.
        detail: the ERROR body.
        kind: the ``switchboard_stomp_errors_total`` label (``None``: "broker").
        internal: the server failed (close 1011) rather than the client (1008).
        limit: the ``switchboard_limit_rejections_total`` label to count, if any.
    """

    def __init__(
        self, message: str, detail: str, kind: str | None = None, *, internal: bool = False, limit: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.kind = kind
        self.internal = internal
        self.limit = limit

    def within(self, what: str) -> "Refusal":
        """The same refusal, its detail prefixed with which frame of which COMMIT failed."""
        return Refusal(self.message, f"{what}: {self.detail}", self.kind, internal=self.internal, limit=self.limit)


class _Recorder:
    """What an application handler sees as the hub during prepare(): publishes are noted,
    checked (names, types), and stored later with the rest of the SEND or transaction."""

    def __init__(self) -> None:
        self.noted: list[Publication] = []

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        type: str = "message",
        sender: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        raw=None,
    ) -> None:
        check_topic(topic)
        check_type(type)
        self.noted.append(Publication("topic", topic, data, type, sender, headers, raw))


class StompPublisher:
    """The SEND side of one STOMP connection.

    Args:
        hub: the event hub.
        destinations: the broker's destination rules.
        sender: ``sender()``: the name stamped on what the connection publishes.
        identity: ``identity()``: the connection's :class:`Identity`, or ``None``.
        user_key: ``user_key()``: the subject that names the connection's own user destinations.
        bucket: the connection's publish-rate bucket, or ``None`` (no limit).
        gate: the connection's access gate (for handlers' checks), or ``None``.
    """

    def __init__(
        self,
        hub: Hub,
        destinations: Destinations,
        sender: Callable[[], str],
        identity: Callable[[], Identity | None],
        bucket: TokenBucket | None = None,
        gate: StompGate | None = None,
    ) -> None:
        self.hub = hub
        self.destinations = destinations
        self._sender = sender
        self._identity = identity
        self._bucket = bucket
        self._gate = gate

    def prepare(self, send: Send) -> list[Publication]:
        """What ``send`` publishes, checked, with nothing stored yet.

        Raises:
            Refusal: the SEND cannot be published (rate, body, headers, handler, names).
        """
        target = self.destinations.resolve(send.destination)  # the session validated it
        if self._bucket is not None:
            wait = self._bucket.take()
            if wait:
                raise Refusal(
                    "publish rate exceeded",
                    f"At most {self._bucket.rate:g} SEND frames a second (bursts of {self._bucket.burst}) "
                    f"per connection; nothing was published. Reconnect after {wait:.1f} s or more.",
                    "rate-limit",
                    limit="publish_rate",
                )
        if target.kind == "pattern":
            raise Refusal(
                "invalid destination",
                f"{send.destination!r} is a wildcard: it takes SUBSCRIBE only; SEND to one topic.",
            )
        try:
            forced_type, data = decode_send_body(send.body, send.content_type)
            if target.kind == "app":
                return self._handle(target.name, send, data)
            type_ = forced_type or _first(send.headers, "event-type") or "message"
            headers = send_headers(send.headers)
            raw = raw_body(send.body, send.content_type, type_, data)
            if target.kind == "user":
                item = Publication(
                    "topic", user_topic(target.user, target.name), data, type_, self._sender(), headers, raw
                )
            else:
                item = Publication(target.kind, target.name, data, type_, self._sender(), headers, raw)
            check_type(item.type)
            check_topic(item.name)
            return [item]
        except (BodyError, HandlerError) as exc:
            raise Refusal(exc.message, exc.detail) from None
        except AccessError as exc:  # an application handler refused this identity
            refusal = StompGate.refusal(exc, send.destination)
            raise Refusal(refusal.message, refusal.detail, refusal.kind) from None
        except InvalidEventType as exc:
            raise Refusal("invalid event-type", str(exc)) from None
        except InvalidTopic as exc:
            raise Refusal("invalid destination", str(exc)) from None

    def _handle(self, name: str, send: Send, data: Any) -> list[Publication]:
        handler = self.destinations.handlers.get(name)
        headers: dict[str, str] = {}
        for key, value in send.headers:
            headers.setdefault(key, value)
        identity = self._identity()
        check = self._gate.checker(identity) if self._gate is not None and identity is not None else None
        recorder = _Recorder()
        message = AppMessage(send.destination, name, data, headers, self._sender(), identity, check)
        try:
            handler(recorder, message)  # type: ignore[arg-type]
        except (HandlerError, AccessError, InvalidEventType, InvalidTopic):
            raise  # answered by prepare
        except Exception:  # a bug in application code: end this session, not the worker's others
            log.error("STOMP handler %r failed on %s", name, send.destination, exc_info=True)
            raise Refusal("internal error", f"The handler for {send.destination} failed.", internal=True) from None
        return recorder.noted

    def publish(self, items: Sequence[Publication]) -> int:
        """Store ``items`` together (:meth:`app.hub.Hub.publish_batch`); their number.

        Raises:
            Refusal: a bound refused them, or the backend is down: nothing was stored.
        """
        if not items:
            return 0
        try:
            self.hub.publish_batch(items)
        except BackendUnavailable as exc:
            log.warning("STOMP publish failed: backend unavailable: %s", exc)
            raise Refusal(
                "backend unavailable", f"The event store is unavailable: {exc}. " + RECONNECT_HINT, internal=True
            ) from None
        except QueueFull as exc:  # counted by the queue store
            raise Refusal(
                "queue full",
                f"{exc}; nothing was published (nothing is dropped to make room). "
                "Try again once consumers have caught up.",
                "queue-full",
            ) from None
        except InvalidTopic as exc:  # a Redis Cluster transaction across hash slots (app/hub/redis_queue_batch.py)
            raise Refusal("transaction spans hash slots", f"{exc}. Nothing was published.") from None
        except TooManyTopics as exc:  # counted by the hub
            refusal = topic_refusal(exc)
            raise Refusal(
                "too many topics",
                f"{refusal.message[0].upper()}{refusal.message[1:]}; nothing was "
                f"published. Reconnect after {refusal.retry_after} s or more.",
                "too-many-topics",
            ) from None
        return len(items)


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    # STOMP 1.2, "Repeated Header Entries": the first one wins.
    for key, value in headers:
        if key == name:
            return value
    return None
