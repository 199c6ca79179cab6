"""Access control: signed tokens (PyJWT), topic patterns, single-use tickets, the
decision hook. Sans-Flask except ``web.py``, the HTTP glue, and ``demo.py``, the demo sign-in."""

from .access import COOKIE_NAME, Access
from .errors import AccessError, AuthUnavailable, CrossOrigin, Forbidden, TokenInUrl, Unauthorized
from .patterns import InvalidPattern, PatternSet, check_pattern
from .tokens import Identity, TokenVerifier

__all__ = [
    "Access",
    "AccessError",
    "AuthUnavailable",
    "COOKIE_NAME",
    "CrossOrigin",
    "Forbidden",
    "Identity",
    "InvalidPattern",
    "PatternSet",
    "TokenInUrl",
    "TokenVerifier",
    "Unauthorized",
    "check_pattern",
]
