"""A STOMP session's settings: :class:`StompConfig`, and the plain login hook it may carry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from .frames import SUPPORTED_VERSIONS, header_representable
from .parser import Limits

__all__ = ["LoginHook", "StompConfig", "accept_all"]


#: ``hook(login, passcode) -> bool``: accept or reject a CONNECT's credentials.
#: Either may be ``None`` when the header is absent. The hook may raise
#: :class:`~app.stomp.errors.AuthError` to choose the ERROR message.
LoginHook = Callable[[Union[str, None], Union[str, None]], bool]


def accept_all(login: str | None, passcode: str | None) -> bool:
    """Accept any credentials (the default login hook).

    Args:
        login: the CONNECT ``login`` header, or ``None``.
        passcode: the CONNECT ``passcode`` header, or ``None``.

    Returns:
        Always ``True``.
    """
    return True


@dataclass(frozen=True)
class StompConfig:
    """Settings for one :class:`StompSession`.

    Attributes:
        limits: inbound frame size limits (STOMP 1.2, "Size Limits").
        heart_beat: the server's ``(sx, sy)`` in ms for the CONNECTED
            ``heart-beat`` header: the smallest interval at which it can send
            heart-beats, and the interval at which it wants them; 0 = none.
        heartbeat_margin: a client expected to send every ``n`` ms is
            disconnected after ``n * heartbeat_margin`` ms of silence
            (STOMP 1.2: "the receiver SHOULD be tolerant and take into account
            an error margin").
        connect_timeout: seconds a client may take to send CONNECT, or ``None``.
        authenticate: the login hook, see :data:`LoginHook`.
        validate_destination: ``hook(destination) -> error message or None``,
            applied to SEND and SUBSCRIBE destinations; ``None`` accepts all.
        server_name: the CONNECTED ``server`` header.
        versions: the versions offered, a subset of ``("1.0", "1.1", "1.2")``.
        max_subscriptions: open subscriptions allowed per session.
        max_unacked: unacknowledged messages per ``client``/``client-individual``
            subscription; also the upper bound of ``prefetch-count``.
        max_transactions: transactions open at once per session.
        max_transaction_frames: frames held by one transaction before COMMIT.
        max_deliveries: deliveries of one message to a topic subscription before a
            NACK drops it instead of redelivering it (:mod:`.acks`).
        shared_queue: ``hook(destination) -> bool``: true for a destination whose
            subscribers share its messages (a work queue), so a NACKed message goes back
            to the broker rather than to the same subscription; ``None``: none is.
    """

    limits: Limits = field(default_factory=Limits)
    heart_beat: tuple[int, int] = (10000, 10000)
    heartbeat_margin: float = 2.0
    connect_timeout: float | None = 30.0
    authenticate: LoginHook = accept_all
    validate_destination: Callable[[str], str | None] | None = None
    server_name: str = "Switchboard"
    versions: tuple[str, ...] = SUPPORTED_VERSIONS
    max_subscriptions: int = 256
    max_unacked: int = 256
    max_transactions: int = 16
    max_transaction_frames: int = 1000
    max_deliveries: int = 5
    shared_queue: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        """Validate the settings.

        Raises:
            ValueError: a setting is out of range or a version is not supported.
        """
        sx, sy = self.heart_beat
        if min(sx, sy) < 0:
            raise ValueError("heart_beat values must be >= 0 ms")
        if self.heartbeat_margin < 1:
            raise ValueError("heartbeat_margin must be >= 1")
        if not self.versions or not set(self.versions) <= set(SUPPORTED_VERSIONS):
            raise ValueError(f"versions must be a non-empty subset of {SUPPORTED_VERSIONS}")
        if not header_representable("server", self.server_name, escaped=False):
            raise ValueError("server_name must not contain CR or LF")
        for name in (
            "max_subscriptions",
            "max_unacked",
            "max_transactions",
            "max_transaction_frames",
            "max_deliveries",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
