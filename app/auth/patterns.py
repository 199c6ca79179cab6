"""Topic patterns: which topics a permission list covers.

A pattern is a topic name in which a dot-separated segment may be ``*`` (exactly one
segment), the last segment may be ``**`` (one or more segments: ``room.**`` covers
``room.a`` and ``room.a.b``, not ``room``; ``**`` alone covers every topic), and
``{sub}`` stands for the token's own subject (``user.{sub}``). The subject is put in
literally, never read as a pattern: a subject ``*`` covers only the topic ``user.*``,
which no topic can be.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Mapping, Pattern

__all__ = ["InvalidPattern", "PatternSet", "check_pattern"]

SUB = "{sub}"
MAX_PATTERN_LENGTH = 256
# A literal segment: the topic alphabet without the dot, plus the {sub} placeholder.
_LITERAL_RE = re.compile(r"(?:[A-Za-z0-9_:\-]|\{sub\})+\Z")


class InvalidPattern(ValueError):
    """A permission pattern that is not well formed; the message says why."""


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is well formed.

    Raises:
        InvalidPattern: empty, too long, an empty segment, ``**`` anywhere but last, or a
            character a topic cannot hold.
    """
    if not isinstance(pattern, str) or not pattern:
        raise InvalidPattern("a topic pattern must be a non-empty string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidPattern(f"a topic pattern is at most {MAX_PATTERN_LENGTH} characters")
    segments = pattern.split(".")
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise InvalidPattern(f"{pattern!r}: ** may only be the last segment")
        elif segment != "*" and not _LITERAL_RE.match(segment):
            raise InvalidPattern(
                f"{pattern!r}: segment {segment!r} must be *, ** or letters, digits, _ : - and {{sub}}"
            )
    return pattern


@lru_cache(maxsize=4096)
def _compile(pattern: str, sub: str | None) -> Pattern[str] | None:
    """The regular expression for ``pattern`` with ``{sub}`` filled in, or None when the
    pattern names ``{sub}`` and there is no subject (an anonymous client)."""
    parts = []
    for segment in pattern.split("."):
        if segment == "*":
            parts.append(r"[^.]+")
        elif segment == "**":
            parts.append(r".+")
        else:
            if SUB in segment and sub is None:
                return None
            parts.append(re.escape(sub or "").join(re.escape(piece) for piece in segment.split(SUB)))
    return re.compile(r"\.".join(parts) + r"\Z", re.DOTALL)


class PatternSet:
    """The topics one permission list (``subscribe`` or ``publish``) covers.

    Args:
        patterns: well-formed patterns (see :func:`check_pattern`).
        sub: the subject that ``{sub}`` stands for; None for an anonymous client.

    Raises:
        InvalidPattern: a pattern is malformed, or ``patterns`` is not a list of them.
    """

    __slots__ = ("patterns", "_regexes", "_everything")

    def __init__(self, patterns: Iterable[str], sub: str | None = None):
        # A bare string would be taken character by character ("**" as ["*", "*"]).
        if isinstance(patterns, (str, bytes, bytearray, Mapping)):
            raise InvalidPattern("topic patterns come as a list of strings, not as one string or an object")
        try:
            self.patterns = tuple(patterns)
        except TypeError:
            raise InvalidPattern("topic patterns come as a list of strings") from None
        self._everything = "**" in self.patterns
        compiled = (_compile(check_pattern(pattern), sub) for pattern in self.patterns)
        self._regexes = tuple(regex for regex in compiled if regex is not None)

    @classmethod
    def everything(cls) -> "PatternSet":
        """Every topic (access control off)."""
        return cls(("**",))

    def allows(self, topic: str) -> bool:
        """True when some pattern covers ``topic``."""
        return self._everything or any(regex.match(topic) for regex in self._regexes)

    def __bool__(self) -> bool:
        return bool(self._regexes)

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"
