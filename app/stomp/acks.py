"""A STOMP session's subscriptions and the messages they wait to have acknowledged, sans-I/O.

STOMP 1.2, "SUBSCRIBE ack Header": in ``auto`` mode a message needs no acknowledgment; in
``client`` mode an ACK or NACK covers the message named and every earlier one of the same
subscription; in ``client-individual`` mode only the one named. Which message an ACK names
depends on the version: 1.2 its ``id`` (the MESSAGE's ``ack`` header), 1.1 ``message-id``
and ``subscription``, 1.0 ``message-id`` (the subscription optional).

A NACKed message of a topic subscription is redelivered here, to the same subscription,
with ``redelivered:true``, until it has been delivered ``max_deliveries`` times; then it is
dropped (the event stays in the topic's history). A NACKed message of a shared queue is
the broker's to hand to another consumer, so it is only forgotten here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import MissingHeader, ProtocolViolation
from .frames import Frame
from .requests import Ack, Nack

__all__ = ["ACK_MODES", "AckBook", "SessionSubscription", "Settled"]

#: STOMP 1.2, "SUBSCRIBE ack Header": the valid values; ``auto`` when absent.
ACK_MODES = frozenset({"auto", "client", "client-individual"})


class SessionSubscription:
    """One SUBSCRIBE's bookkeeping inside a session; never handed out."""

    __slots__ = ("sub_id", "destination", "ack_mode", "window", "shared", "pending", "deliveries", "message_head")

    def __init__(self, sub_id: str, destination: str, ack_mode: str, window: int, shared: bool = False) -> None:
        self.sub_id = sub_id
        self.destination = destination
        self.ack_mode = ack_mode
        self.window = window
        self.shared = shared  # a shared queue: NACKed messages go back to the broker
        # message-id -> MESSAGE frame awaiting ACK/NACK, in the order sent.
        self.pending: OrderedDict[str, Frame] = OrderedDict()
        self.deliveries: dict[str, int] = {}  # message-id -> times delivered (topic redelivery)
        # The MESSAGE lines before and after the message-id number, once built (deliver's tail path).
        self.message_head: tuple[bytes, bytes] | None = None

    def window_open(self) -> bool:
        """Whether another MESSAGE may go out (always in ``auto`` mode)."""
        return self.ack_mode == "auto" or len(self.pending) < self.window


@dataclass(frozen=True)
class Settled:
    """What one ACK or NACK settled.

    Attributes:
        message_ids: every message it covered, oldest first.
        resend: frames to send again (a topic subscription's NACK), marked redelivered.
        dropped: messages a topic subscription gave up on after ``max_deliveries``.
    """

    message_ids: tuple[str, ...]
    resend: tuple[Frame, ...] = ()
    dropped: tuple[str, ...] = ()


class AckBook:
    """Which subscription each unacknowledged message belongs to, and how ACK/NACK settle it.

    Args:
        max_deliveries: deliveries of one message to a topic subscription, NACKs included,
            before a NACK drops it.
    """

    def __init__(self, max_deliveries: int) -> None:
        self.max_deliveries = max_deliveries
        self.index: dict[str, str] = {}  # pending message-id -> subscription id

    def track(self, sub: SessionSubscription, message_id: str, frame: Frame) -> None:
        """Remember a MESSAGE sent in a client ack mode until it is settled."""
        sub.pending[message_id] = frame
        self.index[message_id] = sub.sub_id
        if not sub.shared:
            sub.deliveries[message_id] = sub.deliveries.get(message_id, 0) + 1

    def forget(self, sub: SessionSubscription) -> None:
        """Drop every pending message of a subscription that ends."""
        for message_id in sub.pending:
            self.index.pop(message_id, None)
        sub.pending.clear()
        sub.deliveries.clear()

    def clear(self) -> None:
        self.index.clear()

    def resolve(
        self, frame: Frame, version: str | None, subscriptions: dict[str, SessionSubscription]
    ) -> tuple[SessionSubscription, str]:
        """The subscription and message an ACK or NACK names.

        Raises:
            MissingHeader, ProtocolViolation: the headers are missing, or name no message
                waiting for an acknowledgment on this connection (never delivered, already
                settled, or another session's).
        """
        if version == "1.2":
            message_id = _require(frame, "id")
            sub_id = self.index.get(message_id)
        else:
            message_id = _require(frame, "message-id")
            if version == "1.1":
                sub_id = _require(frame, "subscription")
                if sub_id not in subscriptions:
                    raise ProtocolViolation("unknown subscription", f"No subscription {sub_id[:200]!r}.")
            else:
                sub_id = frame.get("subscription", self.index.get(message_id))
        sub = subscriptions.get(sub_id) if sub_id is not None else None
        if sub is None or message_id not in sub.pending:
            raise ProtocolViolation(
                "bad ack id",
                f"{frame.command} names {message_id[:200]!r}, which is not a message awaiting "
                "acknowledgment on this connection.",
            )
        return sub, message_id

    def still_pending(
        self, frame: Frame, version: str | None, subscriptions: Mapping[str, SessionSubscription]
    ) -> tuple[SessionSubscription, str] | None:
        """The subscription and message of an ACK or NACK that a transaction held, if the
        message still waits: an earlier cumulative ACK or an UNSUBSCRIBE may since have
        settled it (then there is nothing left to do)."""
        message_id = frame.get("id" if version == "1.2" else "message-id", "")
        sub_id = self.index.get(message_id)
        sub = subscriptions.get(sub_id) if sub_id is not None else None
        if sub is None or message_id not in sub.pending:
            return None
        return sub, message_id

    def covered(self, sub: SessionSubscription, message_id: str) -> tuple[str, ...]:
        """The messages an ACK/NACK of ``message_id`` settles, oldest first."""
        if sub.ack_mode != "client":
            return (message_id,)  # client-individual: this message only
        # STOMP 1.2: in client mode an ACK (and a NACK) covers the message and every
        # message sent to the subscription before it.
        settled = []
        for pending_id in sub.pending:
            settled.append(pending_id)
            if pending_id == message_id:
                break
        return tuple(settled)

    def settle(self, sub: SessionSubscription, message_id: str, *, nack: bool) -> Settled:
        """Apply an ACK or NACK of ``message_id`` (which :meth:`resolve` found pending)."""
        settled = self.covered(sub, message_id)
        frames = [sub.pending.pop(pending_id) for pending_id in settled]
        if not nack or sub.shared:
            for pending_id in settled:
                del self.index[pending_id]
                sub.deliveries.pop(pending_id, None)
            return Settled(settled)
        resend, dropped = [], []
        for pending_id, frame in zip(settled, frames):
            if sub.deliveries.get(pending_id, 0) >= self.max_deliveries:
                del self.index[pending_id]
                sub.deliveries.pop(pending_id, None)
                dropped.append(pending_id)
                continue
            # Sent again now: back to the end of the pending order, marked as such.
            headers = frame.headers if "redelivered" in frame else frame.headers + (("redelivered", "true"),)
            again = Frame("MESSAGE", headers, frame.body)
            self.track(sub, pending_id, again)
            resend.append(again)
        return Settled(settled, tuple(resend), tuple(dropped))

    def request(
        self, sub: SessionSubscription, message_id: str, nack: bool, resend: Callable[[tuple[Frame, ...]], None]
    ) -> Ack | Nack:
        """Settle an ACK or NACK of ``message_id`` and make the broker's request of it; the
        frames a topic subscription's NACK sends again go to ``resend``."""
        settled = self.settle(sub, message_id, nack=nack)
        if not nack:
            return Ack(sub.sub_id, settled.message_ids)
        if settled.resend:
            resend(settled.resend)
        return Nack(sub.sub_id, settled.message_ids, settled.dropped)


def _require(frame: Frame, name: str) -> str:
    value = frame.get(name)
    if value is None:
        raise MissingHeader(f"missing header {name!r}", f"{frame.command} frames require a {name!r} header.")
    return value
