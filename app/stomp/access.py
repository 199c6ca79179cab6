"""Who a STOMP client is and what it may do: the session's two access hooks, sans-I/O.

The session knows nothing of tokens. At CONNECT it hands the frame's credentials to an
:data:`Authenticator`, which answers with a :class:`Login` (the client's *principal*,
opaque to the session, and how long it stays valid) or raises
:class:`~app.stomp.errors.AuthError`. Then every SUBSCRIBE and SEND destination goes to
an :data:`Authorizer` with that principal, which raises
:class:`~app.stomp.errors.AccessDenied` (or ``AuthError``) to refuse it. A login that
expires ends the session from :meth:`StompSession.tick` with ERROR "token expired"
(an ``AuthError`` whose message is :data:`TOKEN_EXPIRED`).

The plain :data:`~app.stomp.session.LoginHook` of :class:`StompConfig` (login and
passcode in, bool out) still works: :func:`from_login_hook` adapts it. A session holds its
hooks, its principal and its credentials' expiry in one :class:`SessionAccess`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from .errors import AuthError, BadDestination
from .frames import Frame

__all__ = [
    "TOKEN_EXPIRED",
    "Authenticator",
    "Authorizer",
    "Credentials",
    "Login",
    "SessionAccess",
    "from_login_hook",
    "login_result",
]

#: The ERROR ``message`` of a session whose credentials expired (kind ``auth``).
TOKEN_EXPIRED = "token expired"


@dataclass(frozen=True)
class Credentials:
    """What a CONNECT frame brings to say who the client is.

    Attributes:
        login: the ``login`` header, or ``None``.
        passcode: the ``passcode`` header, or ``None``.
        headers: every header of the frame, in order (e.g. ``Authorization``).
    """

    login: str | None
    passcode: str | None
    headers: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive: clients differ), or ``None``."""
        # STOMP 1.2, "Repeated Header Entries": the first one wins.
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class Login:
    """An accepted CONNECT.

    Attributes:
        principal: who the client is, for the :data:`Authorizer` and the broker
            (``Connect.principal``, ``StompSession.principal``); opaque to the session.
        expires_in: seconds from CONNECT until the credentials expire (the session then
            ends with ERROR "token expired"); ``None`` when they do not.
    """

    principal: Any = None
    expires_in: float | None = None


#: ``authenticate(credentials) -> Login``: accept a CONNECT (raise AuthError to refuse it,
#: with the ERROR message of your choice). Returning ``True`` accepts with no principal,
#: ``False`` refuses with "authentication failed".
Authenticator = Callable[[Credentials], Union[Login, bool]]

#: ``authorize(principal, action, destination)``, ``action`` being ``"subscribe"`` or
#: ``"publish"``: return to allow; raise AccessDenied (or AuthError) to refuse.
Authorizer = Callable[[Any, str, str], None]


def from_login_hook(hook: Callable[[Union[str, None], Union[str, None]], bool]) -> Authenticator:
    """The :data:`Authenticator` that asks a login/passcode hook."""
    return lambda credentials: hook(credentials.login, credentials.passcode)


def login_result(result: Union[Login, bool]) -> Login:
    """What an authenticator answered, as a :class:`Login`.

    Raises:
        AuthError: it answered false.
    """
    if isinstance(result, Login):
        return result
    if not result:
        raise AuthError("authentication failed", "The login and passcode were not accepted.")
    return Login()


class SessionAccess:
    """One session's access: who its CONNECT said the client is, until when, and the check of
    each destination it subscribes or sends to.

    Args:
        authenticate: the CONNECT check.
        authorize: the check of each SUBSCRIBE and SEND destination; ``None``: all allowed.
        validate: ``validate(destination) -> problem or None`` (``StompConfig.validate_destination``).
    """

    def __init__(
        self,
        authenticate: Authenticator,
        authorize: Authorizer | None,
        validate: Callable[[str], str | None] | None,
    ) -> None:
        self._authenticate = authenticate
        self._authorize = authorize
        self._validate = validate
        self.principal: object = None  # the authenticator's Login.principal, once connected
        self.expires_at: float | None = None  # when the credentials expire, if they do

    def login(self, frame: Frame, now: float | None) -> None:
        """Accept a CONNECT frame's credentials at ``now`` (the session's clock), or raise.

        Raises:
            AuthError: the authenticator refused them.
        """
        credentials = Credentials(frame.get("login"), frame.get("passcode"), frame.headers)
        accepted = login_result(self._authenticate(credentials))
        self.principal = accepted.principal
        if accepted.expires_in is not None:
            assert now is not None, "the session's clock starts with the data that brought the CONNECT"
            self.expires_at = now + accepted.expires_in

    def expired(self, now: float) -> AuthError | None:
        """The error that ends the session once its credentials have expired at ``now``."""
        if self.expires_at is None or now < self.expires_at:
            return None
        return AuthError(
            TOKEN_EXPIRED, "The credentials this session was opened with have expired. Reconnect with a new token."
        )

    def check(self, action: str, destination: str) -> None:
        """Check that ``destination`` is valid, then that the principal may ``action`` it
        (``"subscribe"`` or ``"publish"``).

        Raises:
            BadDestination: the destination is invalid.
            AccessDenied, AuthError: the authorizer refused it (ERROR naming it, then close).
        """
        problem = self._validate(destination) if self._validate is not None else None
        if problem is not None:
            raise BadDestination("invalid destination", f"{destination[:200]!r}: {problem}")
        if self._authorize is not None:
            self._authorize(self.principal, action, destination)
