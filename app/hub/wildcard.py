"""Wildcard subscriptions: one subscriber, every topic a pattern matches (live only).

A pattern is a topic name whose dot-separated words may be ``*`` (exactly one word) or,
as the last word, ``#`` (zero or more words): RabbitMQ's topic-exchange syntax, so
``chat.*`` matches ``chat.a`` but not ``chat`` or ``chat.a.b``, and ``chat.#`` matches all
three. (RabbitMQ also allows ``#`` in the middle; here it is last or nowhere.)

A :class:`PatternSubscription` takes live events only: there is no one cursor to resume
several topics from, so it never replays history. Its queue is bounded as any
subscription's; one that overflows cannot be caught up from history, so its subscriber
gets a slow :class:`~app.events.Gap` and the subscription ends. After a cut of the
backend's live feed (Redis reconnecting) it gets a plain gap and goes on.
"""

from __future__ import annotations

import re

from ..events import Cursor, Event, Gap
from .subscription import Subscription

__all__ = ["PatternSubscription", "is_pattern", "pattern_problem", "pattern_regex"]

_WORD_RE = re.compile(r"[A-Za-z0-9_:-]+\Z")


def is_pattern(name: str) -> bool:
    """Whether ``name`` has a wildcard word (``*`` or ``#``)."""
    return "*" in name or "#" in name


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a wildcard this hub takes, or ``None`` when it is one."""
    if not pattern or len(pattern) > 128:
        return "a wildcard is 1-128 characters"
    words = pattern.split(".")
    for index, word in enumerate(words):
        if word == "#":
            if index != len(words) - 1:
                return "# (zero or more words) may only be the last word of a wildcard"
        elif word != "*" and not _WORD_RE.match(word):
            return f"wildcard word {word[:40]!r} must be *, # or letters, digits, _ : -"
    return None


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The topics ``pattern`` matches, as a regular expression (``fullmatch``)."""
    words = pattern.split(".")
    parts = [r"[^.]+" if word == "*" else re.escape(word) for word in words if word != "#"]
    body = r"\.".join(parts)
    if words[-1] == "#":
        body = rf"{body}(?:\..+)?" if parts else r".+"
    return re.compile(body, re.DOTALL)


class PatternSubscription(Subscription):
    """A subscription to every topic ``pattern`` matches; live only (see the module docstring).

    ``topic`` is the pattern. Items are the matching topics' events as they are published,
    in publication order, and :class:`~app.events.Gap` items naming the pattern.
    """

    def __init__(self, pattern: str, maxsize: int, on_close, observer=None, max_bytes: int | None = None):
        super().__init__(pattern, None, _no_history, maxsize, on_close, observer, max_bytes)
        self.regex = pattern_regex(pattern)

    def matches(self, topic: str) -> bool:
        """Whether events of ``topic`` are for this subscription."""
        return self.regex.fullmatch(topic) is not None

    def resync(self, start: Cursor | None = None) -> None:
        """The backend's live feed was cut: after what is queued, a plain (not slow) gap."""
        if self.close_reason is None:
            self._first_sync = True
            self._overflow = True  # drained first, then _sync() tells the gap
            self._wakeup.set()

    def _is_new(self, event: Event) -> bool:
        # Several topics, several cursor sequences: there is no one order to dedupe by,
        # and with no replay there is nothing to dedupe against.
        return True

    def _sync(self) -> None:
        # No history to catch up from: what was missed is a gap. An overflow ends the
        # subscription (slow); a resync after a cut of the live feed does not.
        slow = not self._first_sync
        self._gap = Gap(self.topic, slow=slow)
        self._close_after_gap = slow
        self._first_sync = False
        self._syncing = False
        if self._observer is not None:
            self._observer.gap(self.topic, slow)


def _no_history(after: Cursor, limit: int) -> tuple[list[Event], bool]:
    return [], True
