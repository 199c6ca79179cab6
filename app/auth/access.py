"""Access control: who a client is, and whether it may subscribe or publish to a topic.

One object, built by ``create_app``, answers both questions for every transport:

- :meth:`Access.credentials` reads a WSGI environ (a Flask request's, or a WebSocket
  handshake's before the 101) and returns the identity its credentials prove, or None
  when it brings none. Credentials, in order: ``Authorization: Bearer``, ``?ticket=``,
  the HttpOnly ``switchboard_token`` cookie. A token in the URL is refused outright.
- :meth:`Access.authorize` decides: the identity's own patterns, else the decision hook
  (for a token's identity), else a refusal: :class:`Unauthorized` for an anonymous client
  (sign in), :class:`Forbidden` for a known one.

With no key configured, access control is off: nothing is read, everything is allowed.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping
from urllib.parse import parse_qsl

from werkzeug.http import parse_cookie

from .errors import CrossOrigin, Forbidden, TokenInUrl, Unauthorized
from .hook import DecisionHook
from .patterns import PatternSet
from .tickets import TicketBook
from .tokens import Identity, TokenVerifier
from .wildcards import covers

__all__ = ["Access", "COOKIE_NAME", "URL_TOKEN_PARAMS"]

COOKIE_NAME = "switchboard_token"
URL_TOKEN_PARAMS = ("token", "access_token")
ENVIRON_KEY = "switchboard.identity"
VERIFIED_CACHE = 4096  # tokens whose signature was checked, kept until they expire
MAX_COOKIE_AGE = 400 * 86400
_UNSET = object()


def _query_names(environ: Mapping) -> set[str]:
    # Decoded as Flask's request.args decodes them: ?%74oken= is ?token= (the WebSocket
    # handshake is judged here, before the 101, where no Flask hook runs).
    return {key for key, _value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)}


def _query_value(environ: Mapping, name: str) -> str | None:
    for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
        if key == name:
            return value
    return None


class Access:
    """Identities and decisions (see the module docstring).

    Args:
        settings: the application's settings (keys, anonymous patterns, hook, tickets).
        secret_key: the key that signs tickets (the app's, shared by every worker).
        claim_once: the hub's ``claim_once`` (single-use tickets).
        count_hook: ``count(result)`` for each decision the hook makes or its cache answers.
    """

    def __init__(
        self,
        settings,
        secret_key: str,
        claim_once: Callable[[str, float], bool],
        count_hook: Callable[[str], None] = lambda result: None,
    ):
        self.enabled = settings.auth_enabled
        self.allowed_origins = tuple(settings.allowed_origins)
        self.verifier: TokenVerifier | None = None
        self.hook: DecisionHook | None = None
        if self.enabled:
            public_key = None
            if settings.auth_public_key:
                with open(settings.auth_public_key, "rb") as handle:
                    public_key = handle.read()
            self.verifier = TokenVerifier(
                secret=settings.auth_secret,
                public_key_pem=public_key,
                jwks_url=settings.auth_jwks_url,
                audience=settings.auth_audience,
                issuer=settings.auth_issuer,
            )
            if settings.auth_hook_url:
                self.hook = DecisionHook(
                    settings.auth_hook_url, settings.auth_hook_timeout, settings.auth_hook_ttl, count_hook
                )
        everything = ("**",) if not self.enabled else ()
        self._anonymous_subscribe = PatternSet(
            settings.anonymous_subscribe if settings.anonymous_subscribe is not None else everything
        )
        self._anonymous_publish = PatternSet(
            settings.anonymous_publish if settings.anonymous_publish is not None else everything
        )
        self.tickets = TicketBook(secret_key, claim_once, settings.auth_ticket_ttl)
        self._verified: dict[str, Identity] = {}  # token -> its identity, while it lives

    # -- who -----------------------------------------------------------------------------

    def anonymous(self, sender: str) -> Identity:
        """The identity of a client with no credentials (the guest name from its session)."""
        return Identity(
            sender,
            None,
            self._anonymous_subscribe,
            self._anonymous_publish,
            None,
            "anonymous" if self.enabled else "open",
        )

    def verify(self, token: str, via: str) -> Identity:
        """The identity a token proves.

        Raises:
            Unauthorized: the token fails, or access control is off (nothing can verify it).
            AuthUnavailable: the JWKS endpoint is unreachable.
        """
        if self.verifier is None:
            raise Unauthorized("access control is off on this server: there is no key to verify tokens with")
        # A poller sends the same token every few seconds: a signature checked once stays
        # checked, so only the expiry is looked at again (107 µs -> about 1 µs for HS256).
        known = self._verified.get(token)
        if known is not None and known.seconds_left() > 0:
            return known if known.via == via else known.replace_via(via)
        identity = self.verifier.verify(token, via)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()  # crude, but bounded; a hot token is back at its next use
        self._verified[token] = identity
        return identity

    def credentials(self, environ: Mapping) -> Identity | None:
        """The identity the request's credentials prove, or None when it brings none.

        Computed once per request (kept in the environ), so a single-use ticket spent in
        a WebSocket handshake still identifies the view that runs after the 101.

        Raises:
            TokenInUrl: ``?token=`` or ``?access_token=`` in the query.
            Unauthorized: a credential was presented and fails.
            AuthUnavailable: the JWKS endpoint is unreachable.
        """
        cached = environ.get(ENVIRON_KEY, _UNSET)
        if cached is not _UNSET:
            return cached  # type: ignore[return-value]
        names = _query_names(environ)
        for name in URL_TOKEN_PARAMS:
            if name in names:
                raise TokenInUrl(name)
        identity = None
        if self.enabled:
            identity = self._read_credentials(environ, "ticket" in names)
        if isinstance(environ, dict):
            environ[ENVIRON_KEY] = identity
        return identity

    def _read_credentials(self, environ: Mapping, has_ticket: bool) -> Identity | None:
        header = environ.get("HTTP_AUTHORIZATION")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <token>'", invalid_token=True)
            return self.verify(token.strip(), "bearer")
        if has_ticket:
            return self.tickets.redeem(_query_value(environ, "ticket") or "")
        cookie = parse_cookie(environ.get("HTTP_COOKIE", "")).get(COOKIE_NAME)
        if cookie:
            return self.verify(cookie, "cookie")
        return None

    # -- may it ----------------------------------------------------------------------------

    def authorize(self, identity: Identity, action: str, topic: str, transport: str) -> None:
        """Return if ``identity`` may ``action`` (``subscribe`` or ``publish``) on ``topic``.

        Raises:
            Unauthorized: an anonymous client asked for what only a token may have, or the
                identity's token has expired.
            Forbidden: a known identity asked for a topic it may not use.
            AuthUnavailable: the decision hook is down or slow (fail closed).
        """
        left = identity.seconds_left()
        if left is not None and left <= 0:
            raise Unauthorized("the token has expired", invalid_token=True, expired=True)
        if identity.may(action, topic):
            return
        if identity.anonymous:
            raise Unauthorized(f"sign in to {action} to topic {topic!r}: anonymous clients may not")
        if self.hook is not None and self.hook.allows(identity.sub or "", action, topic, transport):
            return
        raise Forbidden(action, topic)

    def authorize_pattern(self, identity: Identity, action: str, wildcard: str, transport: str) -> None:
        """Return if ``identity`` may ``action`` on every topic ``wildcard`` matches (``chat.*``,
        ``chat.#``): its own patterns must cover them all (:mod:`app.auth.wildcards`), else the
        decision hook is asked about the wildcard itself (``"topic": "chat.*"``).

        Raises:
            Unauthorized, Forbidden, AuthUnavailable: as :meth:`authorize`.
        """
        left = identity.seconds_left()
        if left is not None and left <= 0:
            raise Unauthorized("the token has expired", invalid_token=True, expired=True)
        patterns = identity.subscribe if action == "subscribe" else identity.publish
        if covers(patterns.patterns, identity.sub, wildcard):
            return
        if identity.anonymous:
            raise Unauthorized(f"sign in to {action} to {wildcard!r}: anonymous clients may not")
        if self.hook is not None and self.hook.allows(identity.sub or "", action, wildcard, transport):
            return
        raise Forbidden(action, wildcard)

    # -- cross-site requests -----------------------------------------------------------------

    def check_same_origin(self, environ: Mapping) -> None:
        """Refuse a state change a browser sent from another origin (CSRF).

        ``Sec-Fetch-Site`` when the browser sends it, else ``Origin`` against this host
        (scheme and Host as the app sees them, after the proxy fix) and the allowed origins.

        Raises:
            CrossOrigin: the request came from another origin.
        """
        site = environ.get("HTTP_SEC_FETCH_SITE")
        if site is not None and site not in ("same-origin", "none"):
            raise CrossOrigin(
                f"a cookie-authenticated request from another site ({site}) is refused; "
                "send the token as a Bearer header instead"
            )
        origin = environ.get("HTTP_ORIGIN")
        if origin is None or origin == "null" and site == "same-origin":
            return
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        if origin.rstrip("/") != own and origin.rstrip("/") not in self.allowed_origins:
            raise CrossOrigin(
                f"a cookie-authenticated request from origin {origin!r} is refused; "
                "send the token as a Bearer header instead"
            )

    def cookie_max_age(self, identity: Identity, now: float | None = None) -> int:
        """Seconds the session cookie may live: never past the token's exp, nor past
        400 days (RFC 6265bis 5.5: browsers cap it there; a far-future exp would
        otherwise overflow the cookie's Expires date)."""
        left = identity.seconds_left(time.time() if now is None else now)
        return max(0, int(min(left, MAX_COOKIE_AGE))) if left is not None else 0
