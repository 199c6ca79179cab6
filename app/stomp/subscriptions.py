"""SUBSCRIBE and UNSUBSCRIBE: which subscription a frame opens or closes, checked, and the
session's open subscriptions.

A session keeps its open subscriptions in an :class:`OpenSubscriptions`, by id
(:class:`~.acks.SessionSubscription`, whose unacknowledged messages its :class:`~.acks.AckBook`
tracks). The functions read a frame against them and the session's settings and raise the
:class:`~app.stomp.errors.StompError` a bad frame deserves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .acks import ACK_MODES, AckBook, SessionSubscription
from .config import StompConfig
from .errors import LimitExceeded, MissingHeader, ProtocolViolation, require_header
from .frames import Frame
from .requests import Subscribe, Unsubscribe

__all__ = ["OpenSubscriptions", "missing_id", "open_subscription", "subscriptions_closed"]

_COUNT = re.compile(r"[0-9]{1,9}")


def open_subscription(
    frame: Frame,
    version: str | None,
    subscriptions: Mapping[str, SessionSubscription],
    config: StompConfig,
    check: Callable[[str], None],
) -> tuple[SessionSubscription, Subscribe]:
    """The subscription a SUBSCRIBE frame opens, and the request for the broker.

    Args:
        frame: the SUBSCRIBE frame.
        version: the session's negotiated version (1.0 makes ``id`` optional).
        subscriptions: the session's open subscriptions, by id.
        config: the session's settings (``max_subscriptions``, ``max_unacked``, ``shared_queue``).
        check: the session's destination check (validity, then access); raises if refused.

    Raises:
        StompError: a header is missing or invalid, the id is taken, the limit is reached,
            or ``check`` refused the destination.
    """
    destination = require_header(frame, "destination")
    sub_id = frame.get("id")
    if sub_id is None:
        if version != "1.0":
            raise missing_id(frame)
        sub_id = destination  # STOMP 1.0: the id is optional; the destination names it
    if sub_id in subscriptions:
        raise ProtocolViolation(
            "duplicate subscription id",
            f"Subscription {sub_id[:200]!r} already exists; ids must differ within a connection.",
        )
    ack_mode = frame.get("ack", "auto")
    if ack_mode not in ACK_MODES:
        raise ProtocolViolation(
            "invalid ack mode", f"ack must be auto, client or client-individual, not {ack_mode[:64]!r}."
        )
    prefetch = _parse_count(frame, "prefetch-count")
    if len(subscriptions) >= config.max_subscriptions:
        raise LimitExceeded("too many subscriptions", f"At most {config.max_subscriptions} per connection.")
    check(destination)
    window = min(prefetch or config.max_unacked, config.max_unacked)
    shared = bool(config.shared_queue and config.shared_queue(destination))
    sub = SessionSubscription(sub_id, destination, ack_mode, window, shared)
    request = Subscribe(sub_id, destination, ack_mode, frame.get("last-event-id"), prefetch, frame.headers, window)
    return sub, request


def subscriptions_closed(
    frame: Frame, version: str | None, subscriptions: Mapping[str, SessionSubscription]
) -> list[str]:
    """The ids of the subscriptions an UNSUBSCRIBE frame closes (at least one).

    Raises:
        StompError: the frame names no open subscription, or lacks the header that names it.
    """
    sub_id = frame.get("id")
    if sub_id is None:
        if version != "1.0":
            raise missing_id(frame)
        # STOMP 1.0: UNSUBSCRIBE "requires either a destination header or an id header".
        destination = require_header(frame, "destination")
        sub_ids = [s.sub_id for s in subscriptions.values() if s.destination == destination]
    else:
        sub_ids = [sub_id] if sub_id in subscriptions else []
    if not sub_ids:
        wanted = sub_id if sub_id is not None else frame.get("destination", "")
        raise ProtocolViolation("unknown subscription", f"No subscription {wanted[:200]!r}.")
    return sub_ids


class OpenSubscriptions:
    """One session's open subscriptions, by id, and the book of their unacknowledged messages.

    Args:
        config: the session's settings.
    """

    __slots__ = ("config", "by_id", "acks")

    def __init__(self, config: StompConfig) -> None:
        self.config = config
        self.by_id: dict[str, SessionSubscription] = {}
        self.acks = AckBook(config.max_deliveries)

    def ready(self, sub_id: str) -> SessionSubscription | None:
        """Subscription ``sub_id`` if it is open and may take another MESSAGE now."""
        sub = self.by_id.get(sub_id)
        return sub if sub is not None and sub.window_open() else None

    def room(self, sub_id: str, most: int) -> int:
        """How many MESSAGEs ``sub_id`` can take now, at most ``most`` (see ``StompSession.room``)."""
        sub = self.by_id.get(sub_id)
        if sub is None:
            return 0
        if sub.ack_mode == "auto":
            return most
        return max(0, min(most, sub.window - len(sub.pending)))

    def open(self, frame: Frame, version: str | None, check: Callable[[str], None]) -> Subscribe:
        """Open the subscription of a SUBSCRIBE frame (:func:`open_subscription`); its request."""
        sub, request = open_subscription(frame, version, self.by_id, self.config, check)
        self.by_id[sub.sub_id] = sub
        return request

    def close(self, frame: Frame, version: str | None) -> list[Unsubscribe]:
        """Close the subscriptions of an UNSUBSCRIBE frame (:func:`subscriptions_closed`),
        forgetting their unacknowledged messages; their requests."""
        requests = []
        for gone in subscriptions_closed(frame, version, self.by_id):
            sub = self.by_id.pop(gone)
            self.acks.forget(sub)
            requests.append(Unsubscribe(sub.sub_id, sub.destination))
        return requests

    def clear(self) -> None:
        """Forget every subscription (the session ended)."""
        self.by_id.clear()
        self.acks.clear()


def missing_id(frame: Frame) -> MissingHeader:
    """The error for a frame without the ``id`` header it needs."""
    return MissingHeader("missing header 'id'", f"{frame.command} frames require an 'id' header.")


def _parse_count(frame: Frame, name: str) -> int | None:
    value = frame.get(name)
    if value is None:
        return None
    if not _COUNT.fullmatch(value):
        raise ProtocolViolation(f"invalid {name}", f"{name} must be a non-negative integer, not {value[:64]!r}.")
    return int(value)
