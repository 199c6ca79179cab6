"""Sans-I/O STOMP 1.0/1.1/1.2 server core: bytes and time in, frames and requests out.

The package imports nothing from flask, gevent, geventwebsocket, redis or socket,
and nothing from the rest of ``app``; ``tests/unit/test_stomp_sans_io.py`` proves it.

* :mod:`.frames`: :class:`Frame`, header escaping, :func:`serialize`.
* :mod:`.parser`: :class:`FrameParser` (bytes -> frames and heart-beats) and :class:`Limits`.
* :mod:`.errors`: the :class:`StompError` family, each with a ``kind`` and an ERROR frame.
* :mod:`.session`: :class:`StompSession`, one connection's state machine; :mod:`.config`:
  its :class:`StompConfig`.
* :mod:`.requests`: what a session asks of the broker (:class:`Send`, :class:`Commit`, ...).
* :mod:`.negotiation`: CONNECT's version and heart-beats, and the session's clock.
* :mod:`.subscriptions`, :mod:`.acks`, :mod:`.transactions`: SUBSCRIBE/UNSUBSCRIBE, the
  subscriptions' acknowledgments, the session's transactions.
* :mod:`.messages`: the one writer of every MESSAGE frame.
* :mod:`.access`: the session's access hooks: who the CONNECT says the client is
  (:class:`Credentials` in, :class:`Login` out) and whether it may use a destination.
"""

from .access import TOKEN_EXPIRED, Authenticator, Authorizer, Credentials, Login
from .acks import ACK_MODES
from .config import LoginHook, StompConfig, accept_all
from .errors import (
    AccessDenied,
    AuthError,
    BadContentLength,
    BadDestination,
    BadEscape,
    BrokerError,
    ConnectTimeout,
    FrameError,
    HeartbeatTimeout,
    LimitExceeded,
    MissingHeader,
    ProtocolViolation,
    StompError,
    UnsupportedVersion,
)
from .frames import (
    HEARTBEAT,
    SUPPORTED_VERSIONS,
    Frame,
    Heartbeat,
    escape_header,
    escapes_headers,
    header_representable,
    serialize,
    unescape_header,
)
from .parser import FrameParser, Limits
from .requests import Ack, Closed, Commit, Connect, Nack, Request, Send, Subscribe, Unsubscribe
from .session import SessionState, StompSession

__all__ = [
    "ACK_MODES",
    "HEARTBEAT",
    "SUPPORTED_VERSIONS",
    "AccessDenied",
    "Ack",
    "AuthError",
    "Authenticator",
    "Authorizer",
    "BadContentLength",
    "BadDestination",
    "BadEscape",
    "BrokerError",
    "Closed",
    "Commit",
    "Connect",
    "ConnectTimeout",
    "Credentials",
    "Frame",
    "FrameError",
    "FrameParser",
    "Heartbeat",
    "HeartbeatTimeout",
    "LimitExceeded",
    "Limits",
    "Login",
    "LoginHook",
    "MissingHeader",
    "Nack",
    "ProtocolViolation",
    "Request",
    "Send",
    "SessionState",
    "StompConfig",
    "StompError",
    "StompSession",
    "Subscribe",
    "TOKEN_EXPIRED",
    "Unsubscribe",
    "UnsupportedVersion",
    "accept_all",
    "escape_header",
    "escapes_headers",
    "header_representable",
    "serialize",
    "unescape_header",
]
