"""Server-side demo producers: topic ``ticks`` gets an event every second while someone listens.

The seed's Spring demo had a ``@Scheduled`` job pushing to every emitter; here the job
publishes to the hub like any client, so ticks reach every transport alike (an SSE
``event: tick``, a WebSocket ``event`` op, a STOMP MESSAGE on ``/topic/ticks``).

Exactly one producer per deployment, however many workers and hosts: each worker runs
the loop, and on each beat a worker publishes only if it has *local* subscribers to
``ticks`` and holds the backend's leadership lock (``hub.acquire_lock``). A
worker whose listeners have all gone releases the lock so that another worker with
listeners can lead. With the in-memory backend (one worker) the lock is always granted.

Lock contract the backends implement: ``acquire_lock(name, ttl)`` returns True when the
caller now holds ``name`` for ``ttl`` seconds, and a holder calling it again renews
the lease. The producer renews one beat before its lease runs out and never publishes
after it ends by its own clock (which starts before the backend's), so two workers
never tick at once. Against a lock that cannot be renewed (a bare ``SET NX PX``) the
producer stays correct but pauses for a beat or two at each lease end; a leader that
dies is replaced within ``ttl`` seconds.

Nothing starts at import. :func:`start_producers` (called by ``create_app``) starts the
loop only under gevent's monkey-patching, i.e. in a gunicorn worker or ``python wsgi.py``,
so unit tests and Flask's test client never get a background greenlet.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Callable

import gevent
from gevent import monkey

from .events import Event

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

TICKS_TOPIC = "ticks"
TICK_TYPE = "tick"
LOCK_NAME = "switchboard:producer:ticks"


class TicksProducer:
    """Publishes ``{"n": <count>, "worker": <pid>}`` as type ``tick`` once per ``interval``
    while this process has subscribers to ``ticks`` and leads.

    Args:
        hub: the application's hub (its ``acquire_lock`` is the backend's lock).
        interval: seconds between ticks.
        ttl: the leadership lease in seconds (default five beats).
        clock: monotonic time source; tests pass a fake one to drive :meth:`step`.
    """

    def __init__(
        self, hub, interval: float = 1.0, ttl: float | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.hub = hub
        self.interval = interval
        self.ttl = ttl if ttl is not None else 5 * interval
        self.published = 0
        self._clock = clock
        self._lease_until: float | None = None  # our clock: the lock is surely ours before this
        self._greenlet: gevent.Greenlet | None = None

    @property
    def leading(self) -> bool:
        """Whether this process holds the lock now, by its own clock."""
        return self._lease_until is not None and self._clock() < self._lease_until

    def step(self) -> Event | None:
        """One beat: publish a tick if this process has listeners and leads.

        Returns:
            The published event, or None when this beat published nothing.
        """
        if self.hub.subscriber_count(TICKS_TOPIC) == 0:
            self._resign()
            return None
        if not self._hold_lease():
            return None
        self.published += 1
        return self.hub.publish(TICKS_TOPIC, {"n": self.published, "worker": os.getpid()}, type=TICK_TYPE)

    def _hold_lease(self) -> bool:
        now = self._clock()
        if self._lease_until is not None and now < self._lease_until - self.interval:
            return True
        # Renew one beat early, so a renewable lock never lapses between two ticks.
        if self.hub.acquire_lock(LOCK_NAME, self.ttl):
            self._lease_until = now + self.ttl  # ``now`` was read before the backend set its expiry
            return True
        self._lease_until = None
        return False

    def _resign(self) -> None:
        if self._lease_until is None:
            return
        self._lease_until = None
        self.hub.release_lock(LOCK_NAME)

    def start(self) -> None:
        """Run :meth:`step` every ``interval`` in a greenlet. Idempotent."""
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the loop and give up the lock."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
            self._greenlet = None
        try:
            self._resign()
        except Exception:
            log.warning("ticks producer: could not release its lock", exc_info=True)

    def _run(self) -> None:
        next_beat = self._clock()
        while True:
            try:
                self.step()
            except Exception:
                # Redis down, or the hub shutting down: this beat is lost, the next one retries.
                log.warning("ticks producer: beat failed", exc_info=True)
                self._lease_until = None
            next_beat += self.interval
            now = self._clock()
            if next_beat < now:  # stalled for more than a beat: skip, do not burst
                next_beat = now + self.interval
            gevent.sleep(next_beat - now)


def start_producers(services: Services) -> list[TicksProducer]:
    """Start the app's demo producers when running under gevent (see the module docstring).

    Returns:
        The producers started (also kept in ``services.producers``).
    """
    producers = services.producers
    if not services.settings.ticks or not monkey.is_module_patched("socket"):
        return producers
    producer = TicksProducer(services.hub)
    producers.append(producer)
    producer.start()
    return producers
