"""Access control for STOMP over WebSocket: the hooks one session authenticates and
authorizes with (:mod:`app.stomp.access`), backed by :class:`app.auth.Access`.

Who the client is, decided at CONNECT, first match wins:

1. an ``Authorization: Bearer <token>`` CONNECT header;
2. ``login`` equal to ``SWITCHBOARD_STOMP_LOGIN``: the shared passcode must match (the
   simplest option, as without access control), and the session is the handshake's
   identity (cookie or ticket) or an anonymous guest;
3. a ``passcode``: a token;
4. the handshake's cookie or ``?ticket=`` (checked before the 101);
5. nothing: an anonymous guest, if the anonymous topics allow anything at all, else
   ERROR "authentication failed" (a STOMP session cannot sign in later, as /ws can).

With a token, ``login`` is ignored when absent or empty and must otherwise equal the
token's ``sub``. A token that fails is ERROR "authentication failed" (ERROR "token
expired" for an expired one) and the close. Then each SUBSCRIBE and SEND to
``/topic/<name>`` is authorized (ERROR "forbidden: <destination>" or "unauthorized:
<destination>", with a ``destination`` header), ``/app/<name>`` handlers decide for
themselves with ``AppMessage.authorize``, and the token's expiry ends the session with
ERROR "token expired" (:meth:`app.stomp.StompSession.tick`).

Without an auth key nothing of this applies: only the shared login, if set, is checked,
and everyone publishes as the handshake session's guest name.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable

from ..auth import Access, AccessError, AuthUnavailable, Forbidden, Identity, Unauthorized
from ..stomp import (
    TOKEN_EXPIRED,
    AccessDenied,
    AuthError,
    BrokerError,
    Credentials,
    Login,
    LoginHook,
    StompError,
    accept_all,
)

__all__ = ["StompGate", "shared_login"]


def shared_login(login: str | None, passcode: str | None) -> LoginHook:
    """The login hook of ``SWITCHBOARD_STOMP_LOGIN``/``_PASSCODE`` (anyone when unset)."""
    if not login or not passcode:
        return accept_all
    expected = (login.encode("utf-8"), passcode.encode("utf-8"))

    def check(given_login: str | None, given_passcode: str | None) -> bool:
        if given_login is None or given_passcode is None:
            return False
        # Both compared, in constant time, so timing tells nothing about which was wrong.
        login_ok = hmac.compare_digest(given_login.encode("utf-8"), expected[0])
        passcode_ok = hmac.compare_digest(given_passcode.encode("utf-8"), expected[1])
        return login_ok and passcode_ok

    return check


class StompGate:
    """The authenticator and authorizer of one STOMP connection (see the module docstring).

    Args:
        access: the application's access control.
        resolve: ``Destinations.resolve``: a destination -> its
            :class:`~app.transports.stomp_destinations.Target`, or ``None``.
        handshake: the identity the WebSocket handshake proved, or ``None``.
        guest: the handshake session's guest name (the sender without a token).
        login, passcode: the shared STOMP credentials, if configured.
        metrics: where refusals are counted (``switchboard_auth_refusals_total``), if anywhere.
    """

    def __init__(
        self,
        access: Access,
        resolve: Callable[[str], Any],
        handshake: Identity | None,
        guest: str,
        login: str | None = None,
        passcode: str | None = None,
        metrics=None,
    ):
        self.access = access
        self._resolve = resolve
        self._handshake = handshake
        self._guest = guest
        self._shared_login = login if login and passcode else None
        self._shared = shared_login(login, passcode)
        self._refusals = metrics.auth_refusals if metrics is not None else None

    def _count(self, code: str) -> None:
        if self._refusals is not None:
            self._refusals.labels(code, "stomp").inc()

    # -- CONNECT -------------------------------------------------------------------------

    def authenticate(self, credentials: Credentials) -> Login:
        """The session's authenticator: the client's :class:`Identity` and its time left.

        Raises:
            AuthError: refused ("token expired" for an expired token).
            BrokerError: the key source could not be reached.
        """
        try:
            identity = self._identity(credentials)
            left = identity.seconds_left()
            if left is not None and left <= 0:  # a handshake ticket's token, run out since
                raise Unauthorized("the token has expired", invalid_token=True, expired=True)
        except AccessError as exc:
            self._count(exc.code)
            raise self._connect_error(exc) from None
        except AuthError:
            self._count("unauthorized")
            raise
        return Login(identity, left)

    def _identity(self, credentials: Credentials) -> Identity:
        if not self.access.enabled:
            self._check_shared(credentials)
            return self.access.anonymous(self._guest)
        header = credentials.get("authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <token>'", invalid_token=True)
            return self._verified(token.strip(), credentials.login)
        if self._shared_login is not None and credentials.login == self._shared_login:
            self._check_shared(credentials)
            return self._handshake or self.access.anonymous(self._guest)
        if credentials.passcode:
            return self._verified(credentials.passcode, credentials.login)
        if self._handshake is not None:
            return self._handshake
        if self._shared_login is not None:
            self._check_shared(credentials)  # fails: nothing was given
        anonymous = self.access.anonymous(self._guest)
        if not (anonymous.subscribe or anonymous.publish):
            raise Unauthorized(
                "this server needs a token: send it as the CONNECT passcode or as an "
                "'Authorization: Bearer <token>' CONNECT header"
            )
        return anonymous

    def _verified(self, token: str, login: str | None) -> Identity:
        identity = self.access.verify(token, "stomp")
        if login and login != identity.sub:
            raise Unauthorized("the CONNECT login must be the token's sub, or absent", invalid_token=True)
        return identity

    def _check_shared(self, credentials: Credentials) -> None:
        if not self._shared(credentials.login, credentials.passcode):
            raise AuthError("authentication failed", "The login and passcode were not accepted.")

    @staticmethod
    def _connect_error(exc: AccessError) -> StompError:
        if isinstance(exc, Unauthorized) and exc.expired:
            return AuthError(TOKEN_EXPIRED, f"{exc.message}. Reconnect with a new token.")
        if isinstance(exc, AuthUnavailable):
            return BrokerError("authentication unavailable", exc.message)
        return AuthError("authentication failed", exc.message)

    # -- SUBSCRIBE, SEND -------------------------------------------------------------------

    def authorize(self, identity: Identity, action: str, destination: str) -> None:
        """The session's authorizer for ``/topic/<name>``; ``/app/`` handlers decide themselves.

        Raises:
            AccessDenied: this identity may not use the topic.
            AuthError: an anonymous client, or the token expired ("token expired").
            BrokerError: the decision hook is down (fail closed).
        """
        target = self._resolve(destination)
        if target is None or target.kind == "app":
            return  # refused by the destination check, or an application handler's to decide
        try:
            if target.kind == "pattern":
                if action == "subscribe":  # a SEND to a wildcard is refused by the broker
                    self.check_pattern(identity, target.name)
            elif target.kind == "user":
                self._check_user(identity, action, target.user)
            else:
                self.check(identity, action, target.permission)
        except AccessError as exc:
            raise self.refusal(exc, destination) from None

    def _check_user(self, identity: Identity, action: str, user: str | None) -> None:
        # /user/queue/<name> is one's own: any identity but an anonymous one (when access
        # control is on). /user/<sub>/queue/<name>: the user themself, or whoever may
        # publish to user.<sub> (the user's private topic namespace).
        if action == "subscribe":
            if self.access.enabled and identity.anonymous:
                self._count("unauthorized")
                raise Unauthorized("sign in to use /user destinations: they are the signed-in user's own")
            return
        if user is not None and identity.sub is not None and identity.sub == user:
            return
        self.check(identity, "publish", f"user.{user}")

    def check_pattern(self, identity: Identity, wildcard: str) -> None:
        """Return if ``identity`` may subscribe to every topic ``wildcard`` matches; count and
        raise a refusal (see :meth:`app.auth.Access.authorize_pattern`)."""
        try:
            self.access.authorize_pattern(identity, "subscribe", wildcard, "stomp")
        except AccessError as exc:
            if not (isinstance(exc, Unauthorized) and exc.expired):
                self._count(exc.code)
            raise

    def check(self, identity: Identity, action: str, topic: str) -> None:
        """Return if ``identity`` may ``action`` on ``topic``; count and raise a refusal.

        Raises:
            AccessError: as :meth:`app.auth.Access.authorize`.
        """
        try:
            self.access.authorize(identity, action, topic, "stomp")
        except AccessError as exc:
            if not (isinstance(exc, Unauthorized) and exc.expired):
                self._count(exc.code)  # an expiry is counted once, when it ends the session (Broker)
            raise

    def checker(self, identity: Identity) -> Callable[[str, str], None]:
        """``AppMessage.authorize`` for an application handler: ``(action, topic)``, raising AccessError."""
        return lambda action, topic: self.check(identity, action, topic)

    @staticmethod
    def refusal(exc: AccessError, destination: str) -> StompError:
        """The STOMP error that answers an access refusal for ``destination``."""
        headers = (("destination", destination),)
        if isinstance(exc, Forbidden):
            return AccessDenied(f"forbidden: {destination}", exc.message, headers=headers)
        if isinstance(exc, Unauthorized) and exc.expired:
            return AuthError(TOKEN_EXPIRED, "The token has expired. Reconnect with a new token.")
        if isinstance(exc, Unauthorized):
            return AuthError(f"unauthorized: {destination}", exc.message, headers=headers)
        return BrokerError("authorization unavailable", exc.message, headers=headers)
