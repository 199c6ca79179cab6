"""Access control on one ``/ws`` connection: who it is, what it may do, and until when.

A connection starts with the identity its handshake proved (the ``switchboard_token``
cookie or a ``?ticket=``; :func:`app.factory._websocket_admission` checked it before the
101) or, without one, an anonymous guest. Then:

* ``{"op": "auth", "token": "..."}`` signs in, as the connection's first op (before any
  other op; a failed attempt does not count as one), or refreshes the token: after
  ``{"op": "expired"}``, within the grace period, or earlier, as long as the new token
  has the same ``sub``. Anything else is refused with ``auth_refused`` (reconnect to
  become someone else: a stream's identity does not change under its subscriptions).
* Every op that names a topic asks :meth:`app.auth.Access.authorize` with the current
  identity (an anonymous client gets ``unauthorized``, a known one ``forbidden``).
* When the token expires the connection is told ``{"op": "expired"}`` and delivery
  pauses (events wait in the subscriptions' queues and history, none is lost); a refresh
  within ``SWITCHBOARD_AUTH_REFRESH_GRACE`` resumes it, else the socket closes with 4001.

Timing uses libev timers of the event loop, one at a time (no greenlet waits per
connection); a greenlet is spawned only when one fires, to write to the socket.
"""

from __future__ import annotations

import enum
import json
from typing import Callable

import gevent
import gevent.event

from ..auth import Access, AccessError, Identity
from .wsio import WebSocket, WebSocketError

__all__ = ["CLOSE_TOKEN_EXPIRED", "AuthOpRefused", "WsAuth", "WsAuthState"]

CLOSE_TOKEN_EXPIRED = 4001
"""The close code of a connection whose token expired and was not refreshed in time
(4000-4999: private use, RFC 6455 7.4.2; 4001 echoes HTTP 401)."""

# libev's clock may run a hair ahead of time.time(): a timer that fires this close to
# the token's exp counts as on time, an earlier one is re-armed.
_EARLY = 0.005


class AuthOpRefused(AccessError):
    """An ``auth`` op where none is accepted (too late, or another ``sub``)."""

    status = 400
    code = "auth_refused"


class WsAuthState(enum.Enum):
    ANONYMOUS = "anonymous"  # no token (or access control off)
    SIGNED_IN = "signed-in"  # a token's identity, not expired
    EXPIRED = "expired"  # the token ran out; an auth op may still refresh it (grace)


class WsAuth:
    """The identity of one ``/ws`` connection over its life (see the module docstring).

    Args:
        access: the application's access control.
        identity: the handshake's identity, or an anonymous one.
        grace: seconds an expired connection has to send a new token.
        ws: the connection's socket, told ``{"op": "expired"}`` and closed with 4001.
        refused: ``refused(code)`` counts a refusal (``switchboard_auth_refusals_total``).
    """

    def __init__(
        self,
        access: Access,
        identity: Identity,
        grace: float,
        ws: WebSocket,
        refused: Callable[[str], None] = lambda code: None,
    ):
        self.access = access
        self.identity = identity
        self.grace = grace
        self.state = WsAuthState.ANONYMOUS if identity.anonymous else WsAuthState.SIGNED_IN
        self.live = gevent.event.Event()
        """Set while events may be delivered; cleared from expiry until a refresh."""
        self.live.set()
        self.on_live: Callable[[], None] | None = None
        """Called whenever :attr:`live` is set again (delivery resumes)."""
        self._ws = ws
        self._refused = refused
        self._other_ops = 0
        self._timer = None
        self._arm()

    # -- decisions ---------------------------------------------------------------------

    def note_op(self) -> None:
        """Count an op other than ``auth`` (after one, a first sign-in is too late)."""
        self._other_ops += 1

    def authorize(self, action: str, topic: str) -> None:
        """Return if the connection may ``action`` (``subscribe``, ``publish``) on ``topic``.

        Raises:
            AccessError: Unauthorized (anonymous, or the token expired), Forbidden,
                AuthUnavailable (the decision hook failed closed).
        """
        self.access.authorize(self.identity, action, topic, "websocket")

    def sign_in(self, token: str) -> Identity:
        """Act on an ``auth`` op: the new identity, which the connection now has.

        Delivery stays paused after a refresh of an expired token until :meth:`resume`,
        so the caller can first check its subscriptions against the new permissions.

        Raises:
            AuthOpRefused: not the first op, and not a refresh for the same ``sub``.
            Unauthorized: the token fails (the connection keeps its identity and state).
            AuthUnavailable: the key source cannot be reached.
        """
        refresh = self.state is WsAuthState.EXPIRED or (self.state is WsAuthState.SIGNED_IN and self._other_ops)
        if not refresh and self._other_ops:
            raise AuthOpRefused(
                "op auth is accepted as the first op of a connection, or to refresh a token; reconnect to sign in"
            )
        identity = self.access.verify(token, "op")
        if refresh and identity.sub != self.identity.sub:
            raise AuthOpRefused(
                f"a refresh must carry a token for the same sub ({self.identity.sub!r}); "
                "reconnect to sign in as someone else"
            )
        self.identity = identity
        self.state = WsAuthState.SIGNED_IN
        self._arm()  # the new token's expiry; after an expiry this also ends the grace (no 4001)
        return identity

    def resume(self) -> None:
        """After :meth:`sign_in`: deliver again (paused since the expiry, if any)."""
        if self.state is WsAuthState.SIGNED_IN:  # not if the new token ran out meanwhile
            self._set_live()

    def close(self) -> None:
        """Stop the timers and release paused forwarders (the connection ended)."""
        self._stop_timer()
        self._set_live()

    def _set_live(self) -> None:
        self.live.set()
        if self.on_live is not None:
            self.on_live()

    # -- timers (their callbacks run in the event loop: they must not block) --------------

    def _arm(self) -> None:
        self._stop_timer()
        left = self.identity.seconds_left()
        if left is not None:
            self._start_timer(max(0.0, left), self._expiry_due)

    def _start_timer(self, seconds: float, callback: Callable[[], None]) -> None:
        loop = gevent.get_hub().loop
        loop.update_now()  # measure from now, not from the loop's last wake-up
        self._timer = loop.timer(seconds)
        self._timer.start(callback)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None

    def _expiry_due(self) -> None:
        left = self.identity.seconds_left()
        if left is not None and left > _EARLY:
            self._arm()
            return
        self._stop_timer()
        self.state = WsAuthState.EXPIRED
        self.live.clear()  # a stream never outlives its token
        if self.grace > 0:
            self._start_timer(self.grace, self._grace_due)
            gevent.spawn(self._tell_expired)
        else:
            gevent.spawn(self._expired_without_grace)

    def _grace_due(self) -> None:
        self._stop_timer()
        if self.state is WsAuthState.EXPIRED:
            gevent.spawn(self._close)

    # -- what the client is told (each in a greenlet of its own: writes may wait) ---------

    def _tell_expired(self) -> None:
        if self.state is not WsAuthState.EXPIRED:
            return  # refreshed meanwhile
        message = 'the token has expired; send {"op": "auth", "token": ...} with a new one to carry on'
        try:
            self._ws.send(json.dumps({"op": "expired", "grace": self.grace, "message": message}, separators=(",", ":")))
        except WebSocketError:
            pass  # gone: the reader releases everything

    def _close(self) -> None:
        if self.state is not WsAuthState.EXPIRED:
            return  # refreshed meanwhile
        self._refused("unauthorized")
        self._ws.close(CLOSE_TOKEN_EXPIRED, "token expired")

    def _expired_without_grace(self) -> None:
        self._tell_expired()
        self._close()
