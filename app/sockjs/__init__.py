"""SockJS (protocol 0.3.3) as a sans-I/O core: frames, their JSON encoding and wire forms,
and one session's state machine. It imports nothing from flask, gevent, geventwebsocket,
redis or socket (tests/unit/test_sockjs_sans_io.py proves it); the transports in
``app/transports/sockjs_*.py`` do the I/O.
"""

from .errors import BrokenJson, NoSuchSession, PayloadExpected, SockJSError
from .framing import (
    HEARTBEAT_FRAME,
    OPEN_FRAME,
    WIRES,
    Wire,
    close_frame,
    decode_messages,
    encode_json,
    iframe_page,
    message_frame,
    valid_callback,
)
from .session import ANOTHER_CONNECTION, GO_AWAY, INTERRUPTED, TRANSITIONS, Attach, SessionConfig, SockJSSession, State

__all__ = [
    "ANOTHER_CONNECTION",
    "GO_AWAY",
    "HEARTBEAT_FRAME",
    "INTERRUPTED",
    "OPEN_FRAME",
    "TRANSITIONS",
    "WIRES",
    "Attach",
    "BrokenJson",
    "NoSuchSession",
    "PayloadExpected",
    "SessionConfig",
    "SockJSError",
    "SockJSSession",
    "State",
    "Wire",
    "close_frame",
    "decode_messages",
    "encode_json",
    "iframe_page",
    "message_frame",
    "valid_callback",
]
