"""Verify a client's JWT (PyJWT) and turn its claims into an :class:`Identity`.

One key source, chosen by the settings: an HS256 secret, a PEM public key (RS256 for
an RSA key, ES256 for an EC P-256 key), or a JWKS URL (PyJWT's ``PyJWKClient``, keys
cached). ``sub`` and ``exp`` are required; ``aud`` and ``iss`` are checked when set.
The permission claim is ``switchboard: {"subscribe": [...], "publish": [...]}``.
"""

from __future__ import annotations

import http.client
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import gevent
import jwt

from .errors import AuthUnavailable, Unauthorized
from .patterns import InvalidPattern, PatternSet

__all__ = ["Identity", "TokenVerifier", "MAX_TOKEN_BYTES", "CLAIM"]

CLAIM = "switchboard"
MAX_TOKEN_BYTES = 8192  # a token is a header or a cookie; more is abuse, not a JWT
MAX_PATTERNS = 256  # per action, so a matching check stays cheap
JWKS_ALGORITHMS = ("RS256", "ES256")
JWKS_LIFESPAN = 300.0  # seconds a fetched key set is used before it is fetched again
JWKS_REFRESH_COOLDOWN = 30.0  # least seconds between refetches for an unknown kid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who a client is and what it may do.

    Attributes:
        sender: the name stamped on what it publishes (``name`` claim, else ``sub``;
            the guest name for an anonymous client).
        sub: the token's subject; None for an anonymous client.
        subscribe: topics it may follow.
        publish: topics it may publish to.
        expires_at: the token's ``exp`` (unix seconds); None when nothing expires.
        via: how the identity arrived: ``open`` (access control off), ``anonymous``,
            ``bearer``, ``cookie``, ``ticket``, ``op`` (/ws auth op), ``stomp``.
    """

    sender: str
    sub: str | None
    subscribe: PatternSet
    publish: PatternSet
    expires_at: float | None = None
    via: str = "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.sub is None

    def may(self, action: str, topic: str) -> bool:
        """True when the identity's own permissions cover ``action`` on ``topic``."""
        return (self.subscribe if action == "subscribe" else self.publish).allows(topic)

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until the token expires (<= 0: expired), or None if it never does."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def replace_via(self, via: str) -> "Identity":
        return Identity(self.sender, self.sub, self.subscribe, self.publish, self.expires_at, via)


def identity_from_claims(claims: dict[str, Any], via: str) -> Identity:
    """The identity a verified token's claims describe.

    Raises:
        Unauthorized: (``invalid_token``) the claims are not of the documented shape.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 256:
        raise Unauthorized("the token's sub claim must be a non-empty string", invalid_token=True)
    name = claims.get("name")
    sender = name if isinstance(name, str) and 0 < len(name) <= 64 else sub
    grants = claims.get(CLAIM, {})
    if not isinstance(grants, dict):
        raise Unauthorized(
            f'the token\'s {CLAIM} claim must be an object {{"subscribe": [...], "publish": [...]}}', invalid_token=True
        )
    sets = {}
    for action in ("subscribe", "publish"):
        patterns = grants.get(action, [])
        if (
            not isinstance(patterns, list)
            or len(patterns) > MAX_PATTERNS
            or not all(isinstance(p, str) for p in patterns)
        ):
            raise Unauthorized(
                f"the token's {CLAIM}.{action} must be a list of at most {MAX_PATTERNS} topic patterns",
                invalid_token=True,
            )
        try:
            sets[action] = PatternSet(patterns, sub)
        except InvalidPattern as exc:
            raise Unauthorized(f"the token's {CLAIM}.{action} has a bad pattern: {exc}", invalid_token=True) from None
    try:
        # PyJWT checked that int(exp) works; float() of an int past 1e308 does not.
        expires_at = float(claims["exp"])
    except (OverflowError, TypeError, ValueError):
        raise Unauthorized("the token's exp claim is not a usable time", invalid_token=True) from None
    return Identity(sender, sub, sets["subscribe"], sets["publish"], expires_at, via)


class TokenVerifier:
    """Checks tokens against the one configured key source.

    Args:
        secret: an HS256 key.
        public_key_pem: a PEM public key (RSA or EC P-256).
        jwks_url: a JWKS document's URL.
        audience, issuer: checked when given.
        jwks_timeout: seconds a JWKS fetch may take.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_pem: bytes | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        jwks_timeout: float = 5.0,
    ):
        self.audience = audience
        self.issuer = issuer
        self._jwks = None
        if secret:
            self._key: Any = secret
            self._algorithms = ["HS256"]
        elif public_key_pem:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            key = load_pem_public_key(public_key_pem)
            if isinstance(key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
                self._algorithms = ["ES256"]
            else:
                raise ValueError("the public key must be RSA (RS256) or EC P-256 (ES256)")
            self._key = key
        elif jwks_url:
            # The set is cached for JWKS_LIFESPAN; an unknown kid refetches it at most once per
            # JWKS_REFRESH_COOLDOWN (see _jwks_key), so random kids cannot hammer the endpoint.
            self._jwks = jwt.PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=JWKS_LIFESPAN, timeout=jwks_timeout)
            self._jwks_lock = threading.Lock()
            self._jwks_refreshed = -math.inf
            self._key = None
            self._algorithms = list(JWKS_ALGORITHMS)
        else:
            raise ValueError("a TokenVerifier needs a secret, a public key or a JWKS URL")

    def verify(self, token: str, via: str) -> Identity:
        """The identity of a valid token.

        Raises:
            Unauthorized: (``invalid_token``) malformed, badly signed, expired, not yet
                valid, wrong audience or issuer, missing ``sub``/``exp``, bad claims.
            AuthUnavailable: the JWKS endpoint could not be reached.
        """
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("the token is empty or too large", invalid_token=True)
        key, algorithms = self._key, self._algorithms
        if self._jwks is not None:
            key, algorithms = self._jwks_key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", invalid_token=True, expired=True) from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # PyJWKClientError (no key for the kid), DecodeError, InvalidSignatureError,
            # InvalidAudienceError, MissingRequiredClaimError, ...: the name says which.
            raise Unauthorized(f"the token is not valid: {type(exc).__name__}", invalid_token=True) from None
        return identity_from_claims(claims, via)

    def _jwks_key(self, token: str) -> tuple[Any, list[str]]:
        """The JWKS key the token's ``kid`` names, and the one algorithm it may sign with.

        A key set that cannot be had (endpoint down, an error status, not a JWK set) is
        the key source failing: 503, whatever the token. A kid the set does not hold is the
        token's fault: 401.

        Raises:
            Unauthorized: no usable ``kid``, or no key for it.
            AuthUnavailable: the key set could not be fetched.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is not valid: {type(exc).__name__}", invalid_token=True) from None
        if not isinstance(kid, str):
            raise Unauthorized("the token's header needs a kid naming a key of the JWKS", invalid_token=True)
        key = self._jwks.match_kid(self._jwk_set(refresh=False), kid)
        if key is None and time.monotonic() - self._jwks_refreshed >= JWKS_REFRESH_COOLDOWN:
            key = self._jwks.match_kid(self._jwk_set(refresh=True), kid)  # a rotated key
        if key is None:
            raise Unauthorized("the token's kid names no key of the JWKS", invalid_token=True)
        if key.algorithm_name not in JWKS_ALGORITHMS:
            raise Unauthorized(f"the JWKS key {kid!r} is not an RS256 or ES256 key", invalid_token=True)
        return key.key, [key.algorithm_name]

    def _jwk_set(self, refresh: bool) -> list:
        # One fetch at a time: greenlets that miss together wait for it, then hit the cache.
        with self._jwks_lock:
            try:
                if refresh:
                    self._jwks_refreshed = time.monotonic()
                # PyJWKClient's timeout bounds each read; this bounds the whole fetch.
                with gevent.Timeout(self._jwks.timeout, TimeoutError(f"no key set within {self._jwks.timeout}s")):
                    return self._jwks.get_signing_keys(refresh=refresh)
            except (jwt.PyJWTError, OSError, ValueError, http.client.HTTPException) as exc:
                # PyJWKClientConnectionError (down, timeout, error status), a body that is not
                # a JWK set (PyJWKClientError, PyJWKSetError, JSON errors), a reset mid-read.
                log.warning("JWKS endpoint %s failed: %s: %s", self._jwks.uri, type(exc).__name__, exc)
                raise AuthUnavailable("the key service (JWKS) did not answer; try again shortly") from None

    def mint(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` with the HS256 secret (the demo sign-in; tests).

        Raises:
            ValueError: the key source is not an HS256 secret.
        """
        if self._algorithms != ["HS256"]:
            raise ValueError("only an HS256 secret can mint tokens")
        return jwt.encode(claims, self._key, algorithm="HS256")
