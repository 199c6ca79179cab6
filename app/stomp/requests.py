"""What a STOMP session asks of its broker: frozen requests, like h11's events.

:meth:`app.stomp.StompSession.requests` hands them out in the order the client's frames
caused them. A frame that produced requests holds everything behind it (its RECEIPT, the
frames after it) until the broker has acted and calls :meth:`StompSession.confirm`; a
broker that refuses one calls :meth:`StompSession.send_error` instead, and nothing of that
frame, nor anything after it, ever happens. A session keeps both in :class:`PendingRequests`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "Ack",
    "Closed",
    "Commit",
    "Connect",
    "Nack",
    "PendingRequests",
    "Request",
    "Send",
    "Subscribe",
    "Unsubscribe",
]


@dataclass(frozen=True)
class Connect:
    """The client connected; CONNECTED has been queued.

    Attributes:
        version: the negotiated STOMP version (``"1.0"``, ``"1.1"`` or ``"1.2"``).
        login: the CONNECT ``login`` header, as accepted by the login hook.
        host: the CONNECT ``host`` header, whatever it is (no virtual hosts here).
        session_id: the ``session`` header sent in CONNECTED.
        heart_beat: negotiated ``(client_to_server_ms, server_to_client_ms)``;
            0 means none in that direction.
        principal: who the authenticator said the client is (:mod:`.access`), or ``None``.
    """

    version: str
    login: str | None
    host: str | None
    session_id: str
    heart_beat: tuple[int, int]
    principal: object = None


@dataclass(frozen=True)
class Subscribe:
    """The client subscribed; deliver its messages with :meth:`StompSession.deliver`.

    Attributes:
        sub_id: the subscription id (STOMP 1.0 without ``id``: the destination).
        destination: where to listen, e.g. ``/topic/chat``.
        ack_mode: ``auto``, ``client`` or ``client-individual``.
        last_event_id: the ``last-event-id`` header (resume after this cursor), or ``None``.
        prefetch: the ``prefetch-count`` header, or ``None``. The session caps
            unacknowledged messages at ``min(prefetch, max_unacked)`` in the
            client ack modes (0 or absent: ``max_unacked``).
        headers: every header of the SUBSCRIBE frame, for server-specific options.
        window: the prefetch window the session applies (see :meth:`StompSession.can_deliver`).
    """

    sub_id: str
    destination: str
    ack_mode: str
    last_event_id: str | None
    prefetch: int | None
    headers: tuple[tuple[str, str], ...]
    window: int = field(default=0, compare=False)  # derived from prefetch and the session's cap


@dataclass(frozen=True)
class Unsubscribe:
    """The client removed a subscription; stop delivering to it.

    Attributes:
        sub_id: the subscription id.
        destination: its destination.
    """

    sub_id: str
    destination: str


@dataclass(frozen=True)
class Send:
    """Publish a message the client sent.

    Attributes:
        destination: the SEND ``destination``.
        body: the body octets.
        content_type: the ``content-type`` header, or ``None`` (a binary blob).
        headers: every header of the SEND frame (user-defined ones included), in order.
        transaction: the transaction it was sent in, or ``None``.
    """

    destination: str
    body: bytes
    content_type: str | None
    headers: tuple[tuple[str, str], ...]
    transaction: str | None = None

    @property
    def receipt(self) -> str | None:
        """The SEND's ``receipt`` header, or ``None``."""
        return _first(self.headers, "receipt")


@dataclass(frozen=True)
class Ack:
    """Messages were acknowledged; :meth:`StompSession.can_deliver` may now be true again.

    Attributes:
        sub_id: the subscription.
        message_ids: the ``message-id`` of each message acknowledged, oldest first.
    """

    sub_id: str
    message_ids: tuple[str, ...]


@dataclass(frozen=True)
class Nack:
    """Messages were refused by the client.

    A topic subscription's messages are redelivered by the session itself, to the same
    subscription, until their delivery count reaches ``max_deliveries``; then they are
    ``dropped``. A shared queue's messages (:attr:`StompConfig.shared_queue`) are the
    broker's to hand to another consumer: the session forgets them.

    Attributes:
        sub_id: the subscription.
        message_ids: the ``message-id`` of each message refused, oldest first.
        dropped: those of them a topic subscription gave up on (delivered too often).
    """

    sub_id: str
    message_ids: tuple[str, ...]
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Commit:
    """A transaction committed: publish every SEND and apply every ACK/NACK, or none.

    The broker validates every item first, then acts on all of them, then calls
    :meth:`StompSession.confirm` (which writes the RECEIPT and applies the session's own
    side of the ACKs and NACKs). If any item fails it calls
    :meth:`StompSession.send_error` naming it, and nothing of the transaction happens.

    Attributes:
        transaction: the transaction id.
        items: the transaction's :class:`Send`, :class:`Ack` and :class:`Nack`, in the
            order the client sent them (acknowledgments already settled by then are left out).
        receipt: the COMMIT's ``receipt`` header, or ``None``.
    """

    transaction: str
    items: tuple[Union[Send, Ack, Nack], ...]
    receipt: str | None = None


@dataclass(frozen=True)
class Closed:
    """The session is over: drop its subscriptions and close the connection.

    Attributes:
        reason: why, in a few words.
        error_kind: the :attr:`StompError.kind` that closed it, or ``None`` for a
            DISCONNECT or a lost connection.
    """

    reason: str
    error_kind: str | None = None


Request = Union[Connect, Subscribe, Unsubscribe, Send, Ack, Nack, Commit, Closed]


class PendingRequests:
    """One session's requests not yet handed out, and the frame that waits for the broker.

    A frame that made requests is *held* (:meth:`hold`): its receipt, and what the session
    does once the broker has acted (:meth:`on_confirm`, e.g. a COMMIT's redeliveries), wait
    for :meth:`release`, and so does every frame after it.
    """

    def __init__(self) -> None:
        self._made: list[Request] = []
        # The held frame's receipt and its actions; None when no frame waits.
        self._held: tuple[str | None, list[Callable[[], None]]] | None = None
        self._after: list[Callable[[], None]] = []  # the actions of the frame being handled

    def __len__(self) -> int:
        return len(self._made)

    def append(self, request: Request) -> None:
        self._made.append(request)

    def take(self) -> list[Request]:
        """Return and forget the requests made so far, in order."""
        made, self._made = self._made, []
        return made

    @property
    def waiting(self) -> bool:
        """Whether a frame is held until the broker confirms."""
        return self._held is not None

    def on_confirm(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the frame being handled is confirmed."""
        self._after.append(action)

    def hold(self, receipt: str | None) -> None:
        """Hold the frame just handled (it made requests), with its receipt and actions."""
        self._held, self._after = (receipt, self._after), []

    def release(self) -> tuple[str | None, list[Callable[[], None]]] | None:
        """The held frame's receipt and actions, no longer held; ``None`` when none was."""
        held, self._held = self._held, None
        return held

    def drop(self) -> None:
        """Forget the held frame and its actions: they never happen (the session closed)."""
        self._held, self._after = None, []


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    # STOMP 1.2, "Repeated Header Entries": the first one wins.
    for key, value in headers:
        if key == name:
            return value
    return None
