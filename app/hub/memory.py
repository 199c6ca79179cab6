"""The in-process backend: per-topic history in a deque, delivery by direct call.

One process, one audience: this backend is for a single gunicorn worker (the default).
Everything here runs without yielding to another greenlet, so an append and its
delivery are atomic with respect to every subscriber. The one greenlet of its own is the
sweeper, which forgets idle topics (:meth:`MemoryBackend.sweep`).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import secrets
import time
from collections import OrderedDict, deque
from typing import Any, Callable

import gevent

from ..events import PRESENCE_TYPE, Cursor, Event, RawBody
from . import TooManyTopics

log = logging.getLogger(__name__)

# Topics one slice of a sweep forgets before it lets requests run (about 1 ms), and the
# pause between slices (seconds): sockets are polled in it.
SWEEP_SLICE = 1000
SWEEP_PAUSE = 0.001

# After a sweep round that forgot at least this many topics, the C allocator is asked to
# give free pages back to the system. glibc keeps freed heap memory mapped, and each
# topic's deque block (528 bytes, too big for pymalloc) comes from it: after a flood of
# 200,000 topics is forgotten, that is about 100 MiB of RSS which the call gives back
# (tests/e2e/test_topic_memory.py). It takes about 15 ms for a 350 MB heap. Not glibc
# (musl, macOS): nothing to call.
TRIM_AFTER = 10_000
_malloc_trim: Callable[[int], int] | None
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


class _Topic:
    __slots__ = ("events", "next_seq", "pruned_upto", "bytes", "touched")

    def __init__(self, first_seq: int, now: float) -> None:
        self.events: deque[Event] = deque()
        self.next_seq = first_seq  # kept even when history empties, so cursors never go backwards
        self.pruned_upto = first_seq - 1  # highest sequence number dropped from history (see _new_topic)
        self.bytes = 0  # the sizes of the events in history
        self.touched = now  # last append (or last sweep that found it in use): its place in the sweep order


class MemoryBackend:
    """History bounded by count, bytes and age, with cursors ``<epoch>-<seq>``.

    A topic exists from its first publish until the sweep forgets it: once it has no
    subscriber in this process and no event younger than ``history_ttl``.

    Args:
        history_size: events kept per topic.
        history_ttl: seconds an event is kept.
        clock: the time source (seconds); tests pass a fake one.
        epoch: the epoch name; a random one per instance by default, so a restart
            invalidates every old cursor instead of matching it against new events.
        history_bytes: bytes of history kept per topic (events' JSON, ``Event.size``); the
            oldest go first, the newest always stays. ``None``: no byte bound.
        max_topics: topics held at once; a publish that would start one more raises
            :class:`~app.hub.TooManyTopics`. 0: no limit.
        sweep_interval: seconds between sweeps; a quarter of ``history_ttl`` (at most a
            minute) by default, so an idle topic goes within about 1.25 TTL.
    """

    name = "memory"

    def __init__(
        self,
        history_size: int,
        history_ttl: float,
        clock: Callable[[], float] = time.time,
        epoch: str | None = None,
        *,
        history_bytes: int | None = None,
        max_topics: int = 0,
        sweep_interval: float | None = None,
    ):
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.history_bytes = history_bytes
        self.max_topics = max_topics
        self.sweep_interval = sweep_interval if sweep_interval is not None else min(history_ttl / 4, 60.0)
        self.epoch = epoch or secrets.token_hex(6)
        self.swept = 0  # topics forgotten so far
        self._clock = clock
        self._claims: dict[str, float] = {}  # claim_once: name -> until
        # Ordered by `touched`, oldest first (an append moves its topic to the end): the
        # sweep reads only the front, so its cost is the topics it forgets, not all of them.
        self._topics: OrderedDict[str, _Topic] = OrderedDict()
        # The highest sequence number any forgotten topic reached. A topic (re)created later
        # numbers its events after it; see _new_topic for why.
        self._forgotten_upto = 0
        self._present: dict[str, dict[str, float]] = {}  # presence: topic -> sender -> joined at
        self._in_use: Callable[[str], bool] = lambda topic: False
        self._deliver: Callable[[Event], None] = lambda event: None
        self._sweeper: gevent.Greenlet | None = None

    def set_in_use(self, in_use: Callable[[str], bool]) -> None:
        """Take the hub's "has this topic a subscriber?" test; such a topic is never forgotten."""
        self._in_use = in_use

    def start(self, deliver: Callable[[Event], None]) -> None:
        """Register the hub's dispatch function, called with every appended event, and
        start the sweeper greenlet.

        The sweep is a greenlet of its own rather than work done inside ``append``: a
        worker whose clients only read (poll, stream) after a flood of publishes must
        still forget the flood's topics. It runs whenever the process waits (always,
        under gunicorn's gevent worker; in a test, when the test waits on gevent).
        """
        self._deliver = deliver
        self._sweeper = gevent.spawn(self._sweep_forever)

    def close(self) -> None:
        """Stop the sweeper; nothing else to release in memory."""
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None

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

    # -- presence (app/hub/presence.py): one process, so its entries are the deployment's ----

    def presence_update(self, updates, ttl: float) -> list[tuple[str, str, str]]:
        """Hold the ``entering`` senders of each ``(topic, entering, leaving)`` and drop the
        ``leaving`` ones; a sender's first hold appends a join, its last drop a leave.
        Returns them as ``(topic, action, sender)``. Nothing expires: only this process holds
        entries here, and it goes with them."""
        announced = []
        for topic, entering, leaving in updates:
            held = self._present.setdefault(topic, {})
            for sender in entering:
                if sender not in held:
                    held[sender] = self._clock()
                    announced += self._announce(topic, "join", sender)
            for sender in leaving:
                if held.pop(sender, None) is not None:
                    announced += self._announce(topic, "leave", sender)
            if not held:
                del self._present[topic]
        return announced

    def presence_sweep(self) -> list[tuple[str, str, str]]:
        """Nothing expires in one process."""
        return []

    def presence_members(self, topic: str) -> list[tuple[str, float]]:
        """``(sender, joined at)`` of the topic's present senders, oldest join first."""
        return sorted(self._present.get(topic, {}).items(), key=lambda item: (item[1], item[0]))

    def _announce(self, topic: str, action: str, sender: str) -> list[tuple[str, str, str]]:
        try:
            self.append(topic, PRESENCE_TYPE, {"action": action, "sender": sender}, sender)
        except TooManyTopics:  # presence still counts; only its event is skipped
            log.info(
                "presence: no room for topic %s (SWITCHBOARD_MAX_TOPICS); %s of %s not announced", topic, action, sender
            )
            return []
        return [(topic, action, sender)]

    def append(
        self,
        topic: str,
        type: str,
        data: Any,
        sender: str | None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        raw: RawBody | None = None,
    ) -> Event:
        """Store a new event at the end of the topic's history, then deliver it live.

        Raises:
            TooManyTopics: ``topic`` is new and ``max_topics`` are held (nothing stored).
        """
        now = self._clock()
        topics = self._topics
        state = topics.get(topic)
        if state is None:
            state = topics[topic] = self._new_topic(now)
        else:
            state.touched = now
            topics.move_to_end(topic)
        seq = state.next_seq
        state.next_seq += 1
        event = Event(Cursor(self.epoch, (seq,)), topic, type, data, sender, now, headers=headers, raw=raw)
        events = state.events
        events.append(event)
        if self.history_bytes is not None:
            state.bytes += event.size
            # The newest event always stays, even alone over the bound: a poller can
            # then still see what was last published.
            while state.bytes > self.history_bytes and len(events) > 1:
                self._drop_oldest(state)
        if len(events) > self.history_size:
            self._drop_oldest(state)
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
            # Never published, or forgotten: as if it were created now (see _new_topic),
            # so a cursor of a forgotten topic is a gap unless provably nothing was missed.
            state = _Topic(self._forgotten_upto + 1, 0.0)
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
        """The cursor of the newest event published to the topic (even if expired), while
        the topic is held; ``None`` for a topic never published to or forgotten."""
        state = self._topics.get(topic)
        if state is None:  # a held topic has had at least one event: its first publish made it
            return None
        return Cursor(self.epoch, (state.next_seq - 1,))

    def retained(self, topic: str) -> int:
        """How many events the topic's history holds now."""
        state = self._topics.get(topic)
        if state is None:
            return 0
        self._expire(state, self._clock())
        return len(state.events)

    def retained_bytes(self, topic: str) -> int:
        """The sizes (``Event.size``) of the events the topic's history holds now (0 when
        there is no byte bound: nothing is measured then)."""
        state = self._topics.get(topic)
        if state is None:
            return 0
        self._expire(state, self._clock())
        return state.bytes

    def topic_count(self) -> int:
        """Topics held now (published to, not yet forgotten)."""
        return len(self._topics)

    # -- forgetting idle topics -----------------------------------------------------------

    def sweep(self, limit: int | None = None) -> int:
        """Forget topics that have no subscriber and no event younger than ``history_ttl``.

        Reads the front of the topic table (least recently published first) and stops at
        the first topic published to within the TTL, so a sweep with nothing to do costs
        one look. A topic in use (a subscriber here) whose events have aged out is moved to
        the back and looked at again a TTL later.

        Args:
            limit: forget at most this many (the sweeper's slice); ``None``: all there are.

        Returns:
            How many topics were forgotten.
        """
        now = self._clock()
        horizon = now - self.history_ttl
        topics = self._topics
        forgotten = 0
        while topics and (limit is None or forgotten < limit):
            topic, state = next(iter(topics.items()))
            if state.touched >= horizon:  # and every topic behind it, by the table's order
                break
            if self._in_use(topic):
                state.touched = now
                topics.move_to_end(topic)
                continue
            # touched >= its newest event's time, so that event is older than the TTL too.
            del topics[topic]
            if state.next_seq - 1 > self._forgotten_upto:
                self._forgotten_upto = state.next_seq - 1
            forgotten += 1
        self.swept += forgotten
        return forgotten

    def _sweep_forever(self) -> None:
        while True:
            gevent.sleep(self.sweep_interval)
            try:
                # In slices, so that forgetting a flood of topics never stalls requests.
                # A timer between slices, not sleep(0): the hub runs queued callbacks 50 at
                # a time before it looks at the clock and polls sockets (gevent's
                # CALLBACK_CHECK_COUNT), so sleep(0) between 1 ms slices could hold requests
                # up for 50 ms. Not gevent.idle either: a worker that is never idle would
                # then never sweep.
                forgotten = sliced = self.sweep(SWEEP_SLICE)
                while sliced == SWEEP_SLICE:
                    gevent.sleep(SWEEP_PAUSE)
                    sliced = self.sweep(SWEEP_SLICE)
                    forgotten += sliced
                if forgotten >= TRIM_AFTER and _malloc_trim is not None:
                    _malloc_trim(0)
            except Exception:  # a bug: log it, and keep sweeping
                log.error("sweeping idle topics failed", exc_info=True)

    def _new_topic(self, now: float) -> _Topic:
        """A topic's state at its first publish (raises TooManyTopics beyond the limit).

        Its numbers start after the highest one any forgotten topic reached, and it counts
        those as pruned. A client may still hold a cursor of this topic's previous life:
        had the numbering restarted at 1, that cursor would match the new events of the
        same numbers and silently skip them. Now such a cursor is older than anything held,
        so it is answered with a gap; or it is exactly that highest number, which then was
        the previous life's last event (no topic reached further), so "nothing missed"
        is the truth.
        """
        if self.max_topics and len(self._topics) >= self.max_topics:
            self.sweep(SWEEP_SLICE)  # idle topics the sweeper has not reached yet make room first
        if self.max_topics and len(self._topics) >= self.max_topics:
            oldest = next(iter(self._topics.values()))
            raise TooManyTopics(
                self.max_topics, max(oldest.touched + self.history_ttl - now, 0.0) + self.sweep_interval
            )
        return _Topic(self._forgotten_upto + 1, now)

    def _drop_oldest(self, state: _Topic) -> None:
        event = state.events.popleft()
        state.pruned_upto = event.cursor.position[0]
        if self.history_bytes is not None:
            state.bytes -= event.size

    def _expire(self, state: _Topic, now: float) -> None:
        horizon = now - self.history_ttl
        events = state.events
        while events and events[0].time < horizon:
            self._drop_oldest(state)
