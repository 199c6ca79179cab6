"""The STOMP error family: every way a STOMP session can fail, and its ERROR frame.

Each failure is one :class:`StompError` subclass with a short, stable ``kind``
string (the label of the "STOMP errors by kind" metric). The parser and the
session raise them; :class:`app.stomp.session.StompSession` catches them in one
place and answers with :meth:`StompError.to_frame`, then closes the session
(STOMP 1.2, "ERROR": the server "MUST then close the connection just after
sending the ERROR frame").

Who broke the protocol is in the class, as in h11:

* the client's bytes are not a frame: :class:`FrameError` (and its
  :class:`BadEscape`, :class:`BadContentLength`) or :class:`LimitExceeded`;
* the client's frames are valid but not allowed: :class:`ProtocolViolation`
  (and its :class:`MissingHeader`, :class:`BadDestination`,
  :class:`UnsupportedVersion`),
  :class:`AuthError` (refused credentials, or "token expired"), :class:`AccessDenied`;
* the client went silent: :class:`HeartbeatTimeout`, :class:`ConnectTimeout`;
* the server gave up on the client: :class:`BrokerError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from .frames import CLIENT_COMMANDS, SERVER_COMMANDS, Frame

__all__ = [
    "AccessDenied",
    "AuthError",
    "BadContentLength",
    "BadDestination",
    "BadEscape",
    "BrokerError",
    "ConnectTimeout",
    "FrameError",
    "HeartbeatTimeout",
    "LimitExceeded",
    "MissingHeader",
    "ProtocolViolation",
    "StompError",
    "UnsupportedVersion",
    "require_header",
    "unexpected_command",
]


class StompError(Exception):
    """Base of every STOMP failure; each one ends the session with an ERROR frame.

    Attributes:
        kind: short stable label of the failure class, for metrics and logs.
        message: one line for the ERROR frame's ``message`` header.
        detail: longer explanation for the ERROR frame's body (may be empty).
        headers: extra ERROR headers, e.g. ``version`` when no version is shared.
        receipt_id: the ``receipt`` header of the offending frame, if any; the
            session fills it in (STOMP 1.2, "ERROR": "the ERROR frame SHOULD set
            the receipt-id header to match").
    """

    kind: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        detail: str = "",
        *,
        headers: Iterable[tuple[str, str]] = (),
        receipt_id: str | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: one line for the ERROR frame's ``message`` header.
            detail: an explanation for the ERROR frame's body.
            headers: extra ``(name, value)`` headers for the ERROR frame.
            receipt_id: the offending frame's ``receipt`` value, if known.
        """
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        self.receipt_id = receipt_id

    def to_frame(self) -> Frame:
        """Build the ERROR frame that reports this error to the client.

        This is the only place an error becomes an ERROR frame.

        Returns:
            An ERROR frame with a ``message`` header, ``receipt-id`` when the
            offending frame asked for a receipt, any extra headers, and the
            detail as a ``text/plain`` UTF-8 body (``content-length`` is added by
            :func:`app.stomp.frames.serialize`).
        """
        headers: list[tuple[str, str]] = [("message", self.message)]
        if self.receipt_id is not None:
            headers.append(("receipt-id", self.receipt_id))
        headers.extend(self.headers)
        body = self.detail.encode("utf-8")
        if body:
            headers.append(("content-type", "text/plain;charset=utf-8"))
        return Frame("ERROR", tuple(headers), body)


class FrameError(StompError):
    """The bytes are not a well-formed frame (no ':' in a header, bad UTF-8, ...)."""

    kind = "malformed-frame"


class BadEscape(FrameError):
    """A header holds an undefined escape sequence (STOMP 1.2, "Value Encoding")."""

    kind = "bad-escape"


class BadContentLength(FrameError):
    """``content-length`` is not a decimal octet count, or no NUL follows that many octets."""

    kind = "bad-content-length"


class LimitExceeded(StompError):
    """A size limit was exceeded (STOMP 1.2, "Size Limits"), or a session quota."""

    kind = "limit-exceeded"


class ProtocolViolation(StompError):
    """A well-formed frame that the protocol does not allow here.

    For example a frame before CONNECT, a second CONNECT, an unknown or a
    server-only command, an unknown or duplicate subscription or transaction id,
    or an ACK for a message that is not waiting for one.
    """

    kind = "protocol-violation"


class MissingHeader(ProtocolViolation):
    """A REQUIRED header is absent (STOMP 1.2, "Frames and Headers")."""

    kind = "missing-header"


class BadDestination(ProtocolViolation):
    """The ``validate_destination`` hook refused a SEND or SUBSCRIBE destination."""

    kind = "bad-destination"


class UnsupportedVersion(ProtocolViolation):
    """The client and the server share no protocol version (STOMP 1.2, "Protocol Negotiation")."""

    kind = "unsupported-version"


class AuthError(StompError):
    """The login hook rejected the CONNECT frame's ``login``/``passcode``."""

    kind = "auth"


class AccessDenied(StompError):
    """The authorizer refused a SUBSCRIBE or SEND destination to this client."""

    kind = "forbidden"


class HeartbeatTimeout(StompError):
    """No data from the client within the negotiated heart-beat interval plus margin."""

    kind = "heartbeat-timeout"


class ConnectTimeout(StompError):
    """No CONNECT frame arrived within the configured time after the session started."""

    kind = "connect-timeout"


class BrokerError(StompError):
    """The server side ends the session (unknown destination, shutting down, ...)."""

    kind = "broker"


def require_header(frame: Frame, name: str) -> str:
    """The value of ``frame``'s header ``name``.

    Raises:
        MissingHeader: the frame has no such header.
    """
    value = frame.get(name)
    if value is None:
        raise MissingHeader(f"missing header {name!r}", f"{frame.command} frames require a {name!r} header.")
    return value


def unexpected_command(command: str, connecting: bool, version: str | None) -> ProtocolViolation:
    """The error for a client frame the session's state (or version) does not accept.

    Args:
        command: the frame's command.
        connecting: whether the session still waits for CONNECT.
        version: the negotiated version, or ``None``.
    """
    shown = repr(command[:32])
    if command in SERVER_COMMANDS:
        return ProtocolViolation("server frame from client", f"{shown} frames are sent by the server only.")
    if command not in CLIENT_COMMANDS:
        return ProtocolViolation("unknown command", f"{shown} is not a STOMP command.")
    if connecting:
        return ProtocolViolation("frame before CONNECT", f"Expected CONNECT or STOMP, received {shown}.")
    if command in ("CONNECT", "STOMP"):
        return ProtocolViolation("already connected", f"Received a second {shown} frame.")
    return ProtocolViolation("command not in this version", f"{shown} is not part of STOMP {version}.")
