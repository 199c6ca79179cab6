"""Presence: who is in a topic now, each user counted once however many connections they hold.

Two halves, as with events:

* This module, the :class:`Presence` registry, one per process. It counts what the process's
  own clients hold, per ``(topic, sender)``: open streams (an SSE stream, a ``/ws`` or STOMP
  subscription, a multi-topic stream) for as long as they are open, and polls for a window
  after each request (:meth:`Presence.touch`). A pair is *present in this process* while it
  has a stream or an unexpired window.
* The backend, which sums the processes: it holds one entry per (process, topic, sender) and
  announces a ``presence`` event on the topic when the deployment's count for a sender goes
  0 -> 1 (``{"action": "join", "sender"}``) or 1 -> 0 (``"leave"``). Memory: one process, a
  dict. Redis: per-process entries that expire unless renewed, so the users of a process that
  died leave when its entries run out (``app/hub/redis/presence.py``).

The registry never makes a subscriber wait: a change is recorded in memory and one writer
greenlet per process passes the changes to the backend, in order, batched per topic (a pair
that comes and goes before the writer runs costs nothing). The same greenlet renews this
process's entries and sweeps the deployment's expired ones every quarter ``ttl``.

Backend contract (both backends implement it; tests/unit/test_presence_contract.py)::

    presence_update([(topic, entering, leaving), ...], ttl) -> [(topic, action, sender), ...]
        This process now holds ``entering`` (or renews them, for ``ttl`` seconds) and no longer
        holds ``leaving``. Returns the join and leave events it appended (a leave of another
        process's expired entry included).
    presence_sweep() -> [(topic, action, sender), ...]
        Expire the deployment's entries whose time is up; the leave events appended.
    presence_members(topic) -> [(sender, since), ...]
        Who is present in the topic now (expired entries swept first), oldest join first.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

import gevent
import gevent.event

from . import BackendUnavailable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (topic, sender)
Announced = tuple[str, str, str]  # (topic, "join" | "leave", sender)


class PresenceBackend(Protocol):
    """The backend's part of presence (see the module docstring)."""

    def presence_update(
        self, updates: Sequence[tuple[str, Sequence[str], Sequence[str]]], ttl: float
    ) -> list[Announced]: ...
    def presence_sweep(self) -> list[Announced]: ...
    def presence_members(self, topic: str) -> list[tuple[str, float]]: ...


class Presence:
    """This process's presence registry, kept in step with the backend.

    Args:
        backend: the hub's backend (it implements :class:`PresenceBackend`).
        ttl: seconds presence outlives its last sign of life: how long an entry of this
            process lives in the backend unless renewed (Redis), and how long a poller
            counts as present after a request (``SWITCHBOARD_PRESENCE_TTL``).
        tracked: ``tracked(topic)`` is true for the topics that have presence
            (``SWITCHBOARD_PRESENCE_TOPICS``); ``None``: no topic has.
        announced: told ``(topic, action)`` for each join and leave event the backend
            appended on this process's behalf (metrics).
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        backend: PresenceBackend,
        ttl: float,
        tracked: Callable[[str], bool] | None = None,
        announced: Callable[[str, str], None] = lambda topic, action: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.backend = backend
        self.ttl = ttl
        self.interval = ttl / 4  # renewals and sweeps: an entry survives three missed renewals
        self._tracked = tracked
        self._announced = announced
        self._clock = clock
        self._streams: dict[Key, int] = {}  # open streams per pair
        self._until: dict[Key, float] = {}  # poll windows: present until (clock)
        self._told: set[Key] = set()  # the pairs the backend holds for this process
        self._dirty: set[Key] = set()  # pairs whose state may differ from what the backend was told
        self._wake = gevent.event.Event()
        self._writer: gevent.Greenlet | None = None
        self._closed = False

    def tracked(self, topic: str) -> bool:
        """Whether ``topic`` has presence (``SWITCHBOARD_PRESENCE_TOPICS``)."""
        return self._tracked is not None and self._tracked(topic)

    def start(self) -> None:
        """Start the writer greenlet (only if some topic has presence)."""
        if self._tracked is not None and self._writer is None:
            self._writer = gevent.spawn(self._run)

    def close(self) -> None:
        """Stop the writer; later changes are ignored.

        What the backend holds for this process is left to expire, not withdrawn: on a
        graceful restart the clients reconnect to another worker within seconds, and their
        users then never appear to leave (Redis; in memory the process takes it all along).
        """
        self._closed = True
        # Not killed: it may be halfway through a Redis command on a pooled connection that
        # requests still in flight go on using. It ends after what it is doing.
        self._wake.set()
        self._writer = None

    # -- what the transports report -------------------------------------------------------

    def hold(self, topic: str, sender: str) -> Callable[[], None] | None:
        """Count an open stream of ``sender`` on ``topic`` until the returned release is called.

        Returns:
            The release (idempotent), or ``None`` when the topic has no presence.
        """
        if self._closed or not self.tracked(topic):
            return None
        key = (topic, sender)
        self._streams[key] = self._streams.get(key, 0) + 1
        self._changed(key)
        released = False

        def release() -> None:
            nonlocal released
            if released or self._closed:
                return
            released = True
            left = self._streams[key] - 1
            if left:
                self._streams[key] = left
            else:
                del self._streams[key]
            self._changed(key)

        return release

    def touch(self, topic: str, sender: str, hold: float = 0.0) -> None:
        """Count a poll: ``sender`` is present on ``topic`` for ``hold`` plus ``ttl`` seconds
        from now (a long poll passes its timeout as ``hold``), renewed by the next poll."""
        if self._closed or not self.tracked(topic):
            return
        key = (topic, sender)
        until = self._clock() + hold + self.ttl
        if until > self._until.get(key, 0.0):
            self._until[key] = until
        # Always judged again: the writer may be telling the backend that this pair left.
        self._changed(key)

    def members(self, topic: str) -> list[dict[str, Any]]:
        """Who is in ``topic`` now, in the whole deployment: ``[{"sender", "since"}]``,
        oldest join first (``since``: the join's time, unix seconds).

        Raises:
            BackendUnavailable: the backend cannot tell now.
        """
        return [{"sender": sender, "since": since} for sender, since in self.backend.presence_members(topic)]

    # -- the writer -----------------------------------------------------------------------

    def _changed(self, key: Key) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _present(self, key: Key, now: float) -> bool:
        return key in self._streams or self._until.get(key, 0.0) > now

    def _run(self) -> None:
        due = self._clock() + self.interval
        while True:
            self._wake.wait(max(0.0, due - self._clock()))
            self._wake.clear()
            if self._closed:
                return
            now = self._clock()
            renew = now >= due
            try:
                if renew:
                    due = now + self.interval
                    self._end_windows(now)
                self.flush(renew=renew)
                if renew:
                    self._report(self.backend.presence_sweep())
            except BackendUnavailable:
                log.debug("presence: backend unavailable; retrying at the next renewal", exc_info=True)
            except Exception:  # a bug: log it, and keep the writer alive
                log.error("presence: updating the backend failed", exc_info=True)

    def _end_windows(self, now: float) -> None:
        for key, until in list(self._until.items()):
            if until <= now:
                del self._until[key]
                self._dirty.add(key)

    def flush(self, renew: bool = False) -> None:
        """Tell the backend what changed since the last flush (and, with ``renew``, renew every
        pair this process holds). The writer calls it; tests may, to skip the wait.

        Raises:
            BackendUnavailable: nothing was lost: the changes are retried next time.
        """
        now = self._clock()
        dirty, self._dirty = self._dirty, set()
        entering: dict[str, list[str]] = {}
        leaving: dict[str, list[str]] = {}
        for key in dirty:
            present = self._present(key, now)
            if present and key not in self._told:
                entering.setdefault(key[0], []).append(key[1])
            elif not present and key in self._told:
                leaving.setdefault(key[0], []).append(key[1])
        if renew:  # every pair the backend holds and still present: renewed (entered again)
            for key in self._told:
                if self._present(key, now):
                    entering.setdefault(key[0], []).append(key[1])
        if not entering and not leaving:
            return
        topics = entering.keys() | leaving.keys()
        updates = [(topic, entering.get(topic, ()), leaving.get(topic, ())) for topic in sorted(topics)]
        try:
            announced = self.backend.presence_update(updates, self.ttl)
        except BaseException:
            self._dirty |= dirty  # told nothing for sure: judge these pairs again next time
            raise
        for topic, entered, left in updates:
            self._told.update((topic, sender) for sender in entered)
            self._told.difference_update((topic, sender) for sender in left)
        self._report(announced)

    def _report(self, announced: Iterable[Announced]) -> None:
        for topic, action, _sender in announced:
            self._announced(topic, action)
