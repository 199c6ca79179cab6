"""Single-use tickets: a short-lived stand-in for a token where a URL is the only way in.

A page on another origin cannot use our HttpOnly cookie, and EventSource and WebSocket
cannot send headers. ``POST /api/tickets`` (with the token as a Bearer header) answers a
ticket that may appear once as ``?ticket=`` on an SSE, long-poll or WebSocket URL. The
ticket is signed (itsdangerous, with the app's secret key, shared by every worker),
carries the token's permissions and expiry, lives ``ttl`` seconds, and its nonce is
claimed through the hub (``SET NX`` on Redis), so it works once in the whole deployment.
A ticket in an access log is therefore worthless by the time anyone reads it.
"""

from __future__ import annotations

import secrets
import time

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import Unauthorized
from .patterns import InvalidPattern, PatternSet
from .tokens import Identity

__all__ = ["TicketBook"]

MAX_TICKET_BYTES = 16384


class TicketBook:
    """Issues and redeems single-use tickets.

    Args:
        secret_key: the key that signs tickets (the same in every worker).
        claim_once: ``claim_once(name, ttl) -> bool``, true only for the first claim of a
            name in the deployment (``Hub.claim_once``).
        ttl: seconds a ticket is valid.
    """

    def __init__(self, secret_key: str, claim_once, ttl: float = 30.0):
        self._serializer = URLSafeTimedSerializer(secret_key, salt="switchboard.ticket")
        self._claim_once = claim_once
        self.ttl = ttl

    def issue(self, identity: Identity) -> tuple[str, int]:
        """A ticket for ``identity`` and its lifetime in seconds (never past the token's exp)."""
        left = identity.seconds_left()
        expires_in = int(self.ttl if left is None else max(0.0, min(self.ttl, left)))
        payload = {
            "n": secrets.token_urlsafe(16),
            "sub": identity.sub,
            "sender": identity.sender,
            "s": list(identity.subscribe.patterns),
            "p": list(identity.publish.patterns),
            "exp": identity.expires_at,
            "until": time.time() + expires_in,
        }
        return self._serializer.dumps(payload), expires_in

    def redeem(self, ticket: str) -> Identity:
        """The identity a ticket stands for; the ticket is spent.

        Raises:
            Unauthorized: (``invalid_token``) forged, malformed, expired, or already used.
            BackendUnavailable: the hub cannot tell whether it was used (refuse).
        """
        if not ticket or len(ticket) > MAX_TICKET_BYTES:
            raise Unauthorized("the ticket is empty or too large", invalid_token=True)
        try:
            payload = self._serializer.loads(ticket, max_age=self.ttl)
        except SignatureExpired:
            raise Unauthorized(
                "the ticket has expired; get a new one from POST /api/tickets", invalid_token=True, expired=True
            ) from None
        except BadSignature:
            raise Unauthorized("the ticket is not valid", invalid_token=True) from None
        try:
            nonce, sub, sender = payload["n"], payload["sub"], payload["sender"]
            exp, until = payload["exp"], float(payload["until"])
            subscribe, publish = PatternSet(payload["s"], sub), PatternSet(payload["p"], sub)
        except (KeyError, TypeError, ValueError, InvalidPattern):
            raise Unauthorized("the ticket is not valid", invalid_token=True) from None
        if time.time() >= until or (exp is not None and time.time() >= exp):
            raise Unauthorized("the ticket has expired", invalid_token=True, expired=True)
        if not self._claim_once(f"ticket:{nonce}", self.ttl + 5):
            raise Unauthorized("the ticket was already used; a ticket works once", invalid_token=True)
        return Identity(sender, sub, subscribe, publish, exp, "ticket")
