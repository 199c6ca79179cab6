"""The in-process backend: per-topic history in a deque, delivery by direct call.

One process, one audience: this backend is for a single gunicorn worker (the default).
Everything here runs without yielding to another greenlet, so an append and its
delivery are atomic with respect to every subscriber.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from typing import Any, Callable

from ..events import Cursor, Event


class _Topic:
    __slots__ = ("events", "next_seq", "pruned_upto")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.next_seq = 1  # kept even when history empties, so cursors never go backwards
        self.pruned_upto = 0  # highest sequence number dropped from history


class MemoryBackend:
    """History bounded by count and age, with cursors ``<epoch>-<seq>``.

    Args:
        history_size: events kept per topic.
        history_ttl: seconds an event is kept.
        clock: the time source (seconds); tests pass a fake one.
        epoch: the epoch name; a random one per instance by default, so a restart
            invalidates every old cursor instead of matching it against new events.
    """

    name = "memory"

    def __init__(self, history_size: int, history_ttl: float,
                 clock: Callable[[], float] = time.time, epoch: str | None = None):
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.epoch = epoch or secrets.token_hex(6)
        self._clock = clock
        self._topics: dict[str, _Topic] = {}
        self._claims: dict[str, float] = {}  # claim_once: name -> until
        self._deliver: Callable[[Event], None] = lambda event: None

    def start(self, deliver: Callable[[Event], None]) -> None:
        """Register the hub's dispatch function, called with every appended event."""
        self._deliver = deliver

    def close(self) -> None:
        """Nothing to release in memory."""

    @property
    def healthy(self) -> bool:
        return True

    def acquire_lock(self, name: str, ttl: float) -> bool:
        """Leadership for a singleton job (the ``ticks`` producer): one process, always ours."""
        return True

    def release_lock(self, name: str) -> None:
        """Nothing to release in one process."""

    def claim_once(self, name: str, ttl: float) -> bool:
        """True for the first claim of ``name`` in this process within ``ttl`` seconds."""
        now = self._clock()
        if len(self._claims) > 1024:  # forget expired claims now and then, so they stay few
            self._claims = {key: until for key, until in self._claims.items() if until > now}
        if self._claims.get(name, 0.0) > now:
            return False
        self._claims[name] = now + ttl
        return True

    def append(self, topic: str, type: str, data: Any, sender: str | None) -> Event:
        """Store a new event at the end of the topic's history, then deliver it live."""
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        now = self._clock()
        seq = state.next_seq
        state.next_seq += 1
        event = Event(Cursor(self.epoch, (seq,)), topic, type, data, sender, now)
        state.events.append(event)
        if len(state.events) > self.history_size:
            state.pruned_upto = state.events.popleft().cursor.position[0]
        self._expire(state, now)
        self._deliver(event)
        return event

    def read_after(self, topic: str, cursor: Cursor, limit: int) -> tuple[list[Event], bool]:
        """Events after ``cursor`` (at most ``limit``), and whether some were lost before them.

        A cursor from another epoch, from the future, or older than what history keeps
        is a gap: the answer then starts at the oldest retained event.
        """
        state = self._topics.get(topic)
        if state is None:
            state = _Topic()
        else:
            self._expire(state, self._clock())
        mine = cursor.epoch == self.epoch and len(cursor.position) == 1
        seq = cursor.position[0] if mine else 0
        gap = not mine or seq >= state.next_seq or seq < state.pruned_upto
        if gap:
            start = 0
        else:
            first = state.events[0].cursor.position[0] if state.events else state.next_seq
            start = max(seq + 1 - first, 0)
        return list(itertools.islice(state.events, start, start + limit)), gap

    def read_latest(self, topic: str, limit: int) -> list[Event]:
        """The newest ``limit`` retained events, oldest first."""
        state = self._topics.get(topic)
        if state is None:
            return []
        self._expire(state, self._clock())
        newest = list(itertools.islice(reversed(state.events), limit))
        newest.reverse()
        return newest

    def last_cursor(self, topic: str) -> Cursor | None:
        """The cursor of the newest event ever published to the topic (even if expired)."""
        state = self._topics.get(topic)
        if state is None or state.next_seq == 1:
            return None
        return Cursor(self.epoch, (state.next_seq - 1,))

    def retained(self, topic: str) -> int:
        """How many events the topic's history holds now."""
        state = self._topics.get(topic)
        if state is None:
            return 0
        self._expire(state, self._clock())
        return len(state.events)

    def _expire(self, state: _Topic, now: float) -> None:
        horizon = now - self.history_ttl
        events = state.events
        while events and events[0].time < horizon:
            state.pruned_upto = events.popleft().cursor.position[0]
