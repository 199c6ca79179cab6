"""CONNECT negotiation and heart-beats: the version, the intervals, and the clock that keeps them.

:func:`negotiate_version` and :func:`agree_heart_beat` settle what CONNECT asks against
what the server offers (STOMP 1.2, "Protocol Negotiation" and "Heart-beating"), and
:func:`connected_frame` writes the answer. :class:`HeartBeats` is a session's clock: when
it started, when the client was last heard, and when the server must next say something.
Time is always passed in, in seconds, from any monotonic clock.
"""

from __future__ import annotations

import re

from .errors import ConnectTimeout, HeartbeatTimeout, ProtocolViolation, StompError, UnsupportedVersion
from .frames import SUPPORTED_VERSIONS, Frame

__all__ = ["HeartBeats", "agree_heart_beat", "connected_frame", "negotiate_version", "parse_heart_beat"]

_HEART_BEAT = re.compile(r"\s*([0-9]{1,9})\s*,\s*([0-9]{1,9})\s*")


def negotiate_version(accept_version: str | None, versions: tuple[str, ...]) -> str:
    """The version a CONNECT's ``accept-version`` and the server's ``versions`` share.

    STOMP 1.2, "Protocol Negotiation": no ``accept-version`` means 1.0 only; else the
    highest version both sides have in common.

    Raises:
        UnsupportedVersion: there is none.
    """
    offered = {"1.0"} if accept_version is None else {v.strip() for v in accept_version.split(",")}
    common = [v for v in SUPPORTED_VERSIONS if v in offered and v in versions]
    if not common:
        raise UnsupportedVersion(
            "no common protocol version",
            f"Supported protocol versions are {' '.join(versions)}",
            headers=[("version", ",".join(versions))],
        )
    return common[-1]


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    """A CONNECT's ``heart-beat`` header as ``(cx, cy)`` in ms; a missing one is ``0,0``.

    Raises:
        ProtocolViolation: the value is not two integers.
    """
    if value is None:
        return 0, 0
    match = _HEART_BEAT.fullmatch(value)
    if match is None:
        raise ProtocolViolation(
            "invalid heart-beat header", f"Expected two integers like '10000,10000', got {value[:64]!r}."
        )
    return int(match.group(1)), int(match.group(2))


def agree_heart_beat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """The negotiated ``(client_to_server_ms, server_to_client_ms)``; 0 = none.

    STOMP 1.2, "Heart-beating": client to server there are none if cx or sy is 0, else
    one every MAX(cx, sy) ms; the other way, the same with sx, cy.
    """
    (cx, cy), (sx, sy) = client, server
    client_to_server = max(cx, sy) if cx and sy else 0
    server_to_client = max(sx, cy) if sx and cy else 0
    return client_to_server, server_to_client


def connected_frame(version: str, server_heart_beat: tuple[int, int], session_id: str, server_name: str) -> Frame:
    """The CONNECTED frame for a negotiated ``version`` (1.0 has no ``heart-beat`` header)."""
    sx, sy = server_heart_beat
    headers = [("version", version)]
    if version != "1.0":
        headers.append(("heart-beat", f"{sx},{sy}"))
    headers += [("session", session_id), ("server", server_name)]
    return Frame("CONNECTED", tuple(headers))


class HeartBeats:
    """One session's clock, in seconds of the caller's clock.

    Attributes:
        started_at: when the connection opened (starts the CONNECT timeout), once known.
        clock: the latest time seen.
        last_received: when the client last sent anything.
        silence_limit: close after this much client silence; 0 = never.
        every: send an EOL after this much server silence; 0 = never.
        next_at: when the next heart-beat is due, if ``every``.
    """

    __slots__ = ("started_at", "clock", "last_received", "silence_limit", "every", "next_at")

    def __init__(self, now: float | None) -> None:
        self.started_at = now
        self.clock = now
        self.last_received = now
        self.silence_limit = 0.0
        self.every = 0.0
        self.next_at = 0.0

    def advance(self, now: float) -> None:
        """Move the clock to ``now`` (never back); the first time seen starts it."""
        self.clock = now if self.clock is None else max(self.clock, now)
        if self.started_at is None:
            self.started_at = now
        if self.last_received is None:
            self.last_received = now

    def start(self, heart_beat: tuple[int, int], margin: float) -> None:
        """Begin heart-beating at the negotiated ``(client_to_server_ms, server_to_client_ms)``.

        A client expected every ``n`` ms is silent too long after ``n * margin`` ms.
        """
        client_to_server, server_to_client = heart_beat
        self.silence_limit = client_to_server / 1000 * margin
        self.every = server_to_client / 1000

    def sent(self) -> None:
        """Note that data went out: any data is a sign of life, so the next heart-beat can wait."""
        if self.every and self.clock is not None:
            self.next_at = self.clock + self.every

    def wrote(self, now: float) -> None:
        """:meth:`advance` to ``now``, then :meth:`sent`: one call for a fan-out's each delivery."""
        clock = self.clock = now if self.clock is None else max(self.clock, now)
        if self.started_at is None:
            self.started_at = now
        if self.last_received is None:
            self.last_received = now
        if self.every:
            self.next_at = clock + self.every

    def silent_too_long(self, now: float) -> bool:
        """Whether the client has sent nothing for longer than its interval allows."""
        last = self.last_received
        return bool(self.silence_limit) and last is not None and now >= last + self.silence_limit

    def beat_due(self, now: float) -> bool:
        """Whether a heart-beat is due at ``now``; if so, the next one is counted from ``now``."""
        if self.every and now >= self.next_at:
            self.next_at = now + self.every
            return True
        return False

    def connect_deadline(self, connect_timeout: float | None) -> float | None:
        """When CONNECT must have arrived, or ``None`` (no timeout, or the start is not known yet)."""
        if self.started_at is None or connect_timeout is None:
            return None
        return self.started_at + connect_timeout

    def overdue(
        self, now: float, connecting: bool, connect_timeout: float | None, client_interval_ms: int
    ) -> StompError | None:
        """The timeout that has expired at ``now``, if any.

        While ``connecting``, no CONNECT within ``connect_timeout``; after, a client
        silent for longer than its heart-beat interval (``client_interval_ms``) allows.
        """
        if connecting:
            deadline = self.connect_deadline(connect_timeout)
            if deadline is not None and now >= deadline:
                return ConnectTimeout(
                    "no CONNECT frame received",
                    f"A session must start with CONNECT within {connect_timeout} s.",
                )
            return None
        if self.silent_too_long(now):
            # STOMP 1.2, "Heart-beating": after a window of at least <n> ms
            # without data, the receiver MAY consider the connection as dead.
            return HeartbeatTimeout(
                "heart-beat timeout",
                f"Nothing received for {self.silence_limit:g} s; "
                f"heart-beats were expected every {client_interval_ms} ms.",
            )
        return None

    def deadlines(self) -> list[float]:
        """When the client's silence runs out and when the next heart-beat is due, as scheduled."""
        deadlines = []
        if self.silence_limit and self.last_received is not None:
            deadlines.append(self.last_received + self.silence_limit)
        if self.every:
            deadlines.append(self.next_at)
        return deadlines
