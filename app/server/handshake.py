"""The WebSocket handshake policy: everything decided before ``101 Switching Protocols``.

gevent-websocket sends ``101`` before the WSGI application runs, so everything that can
refuse a WebSocket happens here, with a real HTTP status and a JSON body: unknown path
(404), malformed handshake (400, 405, 426), foreign ``Origin`` (403), no common
sub-protocol (400). :func:`negotiate` is pure: an environ and a policy in, an
:class:`Acceptance` or a :class:`Refusal` out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping
from urllib.parse import urlsplit

WEBSOCKET_VERSION = "13"
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class WebSocketPolicy:
    """What the handler accepts before sending ``101``.

    Attributes:
        allowed_origins: origins allowed besides the request's own host, like
            ``"https://example.com"`` (scheme, host and port must match; ``"*"`` allows
            any, ``"null"`` allows the opaque origin of sandboxed pages). A request
            without ``Origin`` (a non-browser client) is always allowed.
        protocols: path -> the sub-protocols the server speaks there, in preference
            order. A path with ``()`` takes WebSockets without a sub-protocol; a path
            that is absent takes no WebSocket (404). Paths match ``PATH_INFO`` exactly.
        max_message_bytes: the largest frame or reassembled message accepted; a
            bigger one is refused with 1009 from its header, before its payload is read.
        ping_interval: seconds between server pings; 0 turns keepalive off.
        ping_timeout: seconds a peer has, after a ping, to send anything (a pong or
            data) before it is closed with 1011 "keepalive ping timeout".
        close_timeout: seconds to wait for the peer's half of a closing handshake
            before the TCP connection is closed anyway.
        trust_forwarded: use ``X-Forwarded-Host`` / ``X-Forwarded-Proto`` (the value set
            by the nearest proxy) for the same-host check. Set it behind nginx only:
            anyone can send these headers straight to gunicorn.
        admit: ``admit(environ)``, asked after every other check passed: a
            :class:`Refusal` to send instead of ``101`` (a connection limit), or a
            callable to run once the accepted WebSocket has ended. ``None`` admits all.
        write_timeout: seconds one write of a plain HTTP response (an SSE stream's
            chunk, say) may block before the connection is cut: a client that reads
            nothing would otherwise hold its greenlet, socket and subscription for
            ever, and keep a graceful stop waiting. ``None`` = no limit. (WebSockets
            have keepalive for that: a ping that cannot be written is a cut.)
    """

    allowed_origins: tuple[str, ...] = ()
    protocols: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_message_bytes: int = 1024 * 1024
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    trust_forwarded: bool = False
    admit: Callable[[Mapping], "Refusal | Callable[[], None]"] | None = None
    write_timeout: float | None = None

    def __post_init__(self):
        if isinstance(self.allowed_origins, str):
            raise TypeError("allowed_origins must be a tuple of origins, not one string")
        origins = tuple(origin.strip().rstrip("/") for origin in self.allowed_origins)
        for origin in origins:
            if origin not in ("*", "null") and _split_origin(origin) is None:
                raise ValueError(f"{origin!r} is not an origin like https://example.com[:port]")
        protocols = {}
        for path, offered in dict(self.protocols).items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"protocol paths start with '/': {path!r}")
            if isinstance(offered, str):
                raise TypeError(f"protocols[{path!r}] must be a tuple of names, not one string")
            protocols[path] = tuple(offered)
        if self.max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        if self.ping_interval < 0 or self.ping_timeout <= 0 or self.close_timeout <= 0:
            raise ValueError("ping_interval must be >= 0; ping_timeout and close_timeout > 0")
        if self.write_timeout is not None and self.write_timeout <= 0:
            raise ValueError("write_timeout must be > 0 or None")
        object.__setattr__(self, "allowed_origins", origins)
        object.__setattr__(self, "protocols", MappingProxyType(protocols))

    def protocols_for(self, path: str) -> tuple[str, ...] | None:
        """The sub-protocols spoken at ``path``, or ``None`` if it takes no WebSocket.

        A key matches exactly, or segment by segment where its ``*`` stands for any one
        non-empty segment without a dot (SockJS's ``/<prefix>/*/*/websocket`` session URLs).
        """
        found = self.protocols.get(path)
        if found is not None:
            return found
        segments = path.split("/")
        for pattern, offered in self.protocols.items():
            parts = pattern.split("/")
            if (
                "*" in parts
                and len(parts) == len(segments)
                and all(
                    part == segment or (part == "*" and segment and "." not in segment)
                    for part, segment in zip(parts, segments, strict=True)
                )
            ):
                return offered
        return None


DEFAULT_POLICY = WebSocketPolicy()
"""Used when the application hands the server no policy (:mod:`app.server.hooks`): no WebSocket anywhere."""


# ------------------------------------------------------------------------ handshake


@dataclass(frozen=True)
class Refusal:
    """An upgrade request answered with an HTTP error instead of ``101``."""

    status: int
    error: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Acceptance:
    """An upgrade request that gets ``101``: the accept token and the chosen sub-protocol."""

    accept: str
    subprotocol: str | None


def _tokens(value: str) -> list[str]:
    """A comma-separated header value as a list of its non-empty, trimmed items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def is_websocket_request(environ) -> bool:
    """Whether the request asks for a WebSocket (``Upgrade`` lists ``websocket``)."""
    return any(token.lower() == "websocket" for token in _tokens(environ.get("HTTP_UPGRADE", "")))


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialized origin, or ``None`` if it is not one."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _split_host(host: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``Host`` header value, defaulting the port from ``scheme``."""
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS.get(scheme, 80)


def _request_host(environ, policy: WebSocketPolicy) -> tuple[str, int] | None:
    host = environ.get("HTTP_HOST", "")
    scheme = environ.get("wsgi.url_scheme", "http")
    if policy.trust_forwarded:
        # The nearest proxy's value is the last one (as Werkzeug's ProxyFix with one hop).
        forwarded_host = _tokens(environ.get("HTTP_X_FORWARDED_HOST", ""))
        forwarded_proto = _tokens(environ.get("HTTP_X_FORWARDED_PROTO", ""))
        if forwarded_host:
            host = forwarded_host[-1]
        if forwarded_proto:
            scheme = forwarded_proto[-1].lower()
    return _split_host(host, scheme) if host else None


def origin_allowed(environ, policy: WebSocketPolicy) -> bool:
    """Whether the request's ``Origin`` may open a WebSocket here.

    Allowed: no ``Origin`` (not a browser); the request's own host and port (scheme
    aside: an http page may open wss on the same host; ports 80 and 443 count as the
    same, so a TLS-terminating proxy that forwards no port still matches); any origin
    listed in ``policy.allowed_origins``. This is what stops cross-site WebSocket
    hijacking: a page elsewhere cannot use the visitor's cookies on our socket.
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    origin = origin.strip()
    allowed = policy.allowed_origins
    if "*" in allowed:
        return True
    if origin == "null":
        return "null" in allowed
    parts = _split_origin(origin)
    if parts is None:
        return False
    scheme, host, port = parts
    own = _request_host(environ, policy)
    if own is not None and own[0] == host and (own[1] == port or {own[1], port} <= {80, 443}):
        return True
    return any(_split_origin(item) == parts for item in allowed if item not in ("*", "null"))


def _accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _ACCEPT_GUID).digest()).decode("ascii")


def negotiate(environ, policy: WebSocketPolicy) -> Acceptance | Refusal:
    """Decide an upgrade request (RFC 6455 section 4.2) before anything is sent.

    The checks run in this order, so the answer names the first problem: path (404),
    method (405), HTTP version and ``Connection`` (400), ``Sec-WebSocket-Version``
    (426 with ``Sec-WebSocket-Version: 13``), ``Host`` and ``Sec-WebSocket-Key`` (400),
    ``Origin`` (403), sub-protocol (400).

    Sub-protocols: the first of the path's list (server preference: for STOMP the
    highest version) that the client offered. If the client offered some and none
    matches, the answer is 400, not a 101 without a sub-protocol: RFC 6455 allows the
    latter, but browsers then fail the connection anyway with a vaguer error. A
    client that offers none is accepted without one, on any listed path.

    Args:
        environ: the WSGI environ of a request for which ``is_websocket_request`` is true.
        policy: the application's policy.

    Returns:
        An :class:`Acceptance` or a :class:`Refusal`.
    """
    path = environ.get("PATH_INFO", "")
    spoken = policy.protocols_for(path)
    if spoken is None:
        return Refusal(404, "not_found", f"no WebSocket endpoint at {path}")
    if environ.get("REQUEST_METHOD") != "GET":
        return Refusal(405, "method_not_allowed", "a WebSocket handshake is a GET request", (("Allow", "GET"),))
    if environ.get("SERVER_PROTOCOL", "") not in ("HTTP/1.1",):
        return Refusal(400, "bad_request", "a WebSocket handshake needs HTTP/1.1")
    if not any(token.lower() == "upgrade" for token in _tokens(environ.get("HTTP_CONNECTION", ""))):
        return Refusal(400, "bad_request", "the Connection header must list 'upgrade'")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != WEBSOCKET_VERSION:
        # RFC 6455 4.4: answer with the versions we speak. RFC 9110 15.5.22: a 426 names
        # the protocol to upgrade to.
        return Refusal(
            426,
            "upgrade_required",
            "only WebSocket version 13 (RFC 6455) is supported",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION), ("Upgrade", "websocket")),
        )
    if not environ.get("HTTP_HOST"):
        return Refusal(400, "bad_request", "the Host header is missing")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        key_ok = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        key_ok = False
    if not key_ok:
        return Refusal(400, "bad_request", "Sec-WebSocket-Key must be 16 bytes in base64")
    if not origin_allowed(environ, policy):
        return Refusal(403, "forbidden_origin", "this origin may not open a WebSocket here")
    offered = _tokens(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", ""))
    chosen = None
    if offered:
        chosen = next((name for name in spoken if name in offered), None)
        if chosen is None:
            return Refusal(
                400,
                "unsupported_subprotocol",
                f"no offered sub-protocol is spoken at {path} (spoken: {', '.join(spoken) or 'none'})",
            )
    return Acceptance(_accept_token(key), chosen)
