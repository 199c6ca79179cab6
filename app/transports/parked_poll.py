"""A parked long poll that holds no greenlet while it waits.

The request's greenlet ends once the poll is parked (the server defers the answer:
:mod:`app.server.deferred`). What waits is a :class:`ParkedPoll`: the wake-up signal of
the poll's subscriptions (the hub's offer calls :meth:`ParkedPoll.set`, a flag and a
spawn, never a write) and one event-loop timer for the timeout (or the token's expiry,
whichever comes first). The first wake-up that finds something, or the timer, spawns the
one greenlet that answers: it takes up to ``limit`` items, closes the subscriptions,
releases the connection slot, sends the answer and goes on serving the connection's next
request. So a parked poll costs its socket, its subscriptions and a few small objects.
"""

from __future__ import annotations

import logging
from typing import Callable

import gevent

from ..errors import INTERNAL_ERROR, unavailable_answer
from ..hub import BackendUnavailable, Item, SubscriptionClosed

log = logging.getLogger(__name__)

#: An answer in the application's terms: status, JSON body (``None``: no body), extra headers.
Outcome = tuple[int, "dict | None", tuple[tuple[str, str], ...]]


class ParkedPoll:
    """One parked poll (see the module docstring).

    Args:
        source: the poll's subscription, or its :class:`~app.transports.topics.TopicSet`.
        limit: the most items one answer carries.
        wait: seconds until the poll answers with what it has (204, or 401 once its token
            expired).
        conclude: ``conclude(items)``, the answer for what was taken (an empty list at
            the timeout or on shutdown).
        encode: the body's bytes, as the application's own JSON responses have them.
        release: frees what the poll holds besides its source (slot, gauges); called once.
    """

    __slots__ = ("source", "limit", "wait", "conclude", "encode", "release", "deferred", "timer", "busy")

    def __init__(
        self,
        source,
        limit: int,
        wait: float,
        conclude: Callable[[list[Item]], Outcome],
        encode: Callable[[dict], bytes],
        release: Callable[[], None],
    ):
        self.source = source
        self.limit = limit
        self.wait = wait
        self.conclude = conclude
        self.encode = encode
        self.release: Callable[[], None] | None = release
        self.deferred = None
        self.timer = None
        self.busy = False  # an answering greenlet is on its way

    def start(self, deferred) -> None:
        """The request's greenlet has let go (``on_parked``): wait for news or the timer."""
        self.deferred = deferred
        self.timer = gevent.get_hub().loop.timer(self.wait)
        self.timer.start(self._time_up)
        self.source.wake_with(self)  # sets it at once: what is queued already (a replay) is taken

    def abandon(self, deferred) -> None:
        """When the request's response closes: if the server did not park the poll after
        all (an error replaced the placeholder), let go of everything it holds."""
        if not deferred.parked and self.release is not None:
            self.source.close()
            self._release()

    # -- the wake-up signal (Subscription.wake_with) --------------------------------

    def set(self) -> None:
        if not self.busy and self.deferred is not None:
            self.busy = True
            gevent.spawn(self._answer, False)

    def clear(self) -> None:
        """Part of the signal interface; nothing waits on a parked poll."""

    def _time_up(self) -> None:  # in the event loop: no waiting here
        if not self.busy:
            self.busy = True
            gevent.spawn(self._answer, True)

    # -- the answering greenlet -----------------------------------------------------

    def _answer(self, time_up: bool) -> None:
        try:
            self._take_and_answer(time_up)
        except Exception:
            # Not left hanging: the poll's holdings go and the client gets a 500 (nothing,
            # if the failure came after the answer, while serving the next request).
            log.error("answering a parked long poll failed", exc_info=True)
            self._send(INTERNAL_ERROR)

    def _take_and_answer(self, time_up: bool) -> None:
        closed = False
        try:
            items = self.source.take(self.limit)
        except SubscriptionClosed:  # hub shutdown (DESIGN.md §8): 204, the client polls again
            items, closed = [], True
        except BackendUnavailable as exc:  # a history read (replay or catch-up) failed
            self._send(unavailable_answer(exc))
            return
        if not items and not time_up and not closed:
            self.busy = False  # nothing after all (a duplicate the seam rule skipped)
            return
        self._send(self.conclude(items))

    def _send(self, outcome: Outcome) -> None:
        """Let go of the poll's holdings and answer; each happens once (a second call,
        after a failure, only releases what is left)."""
        status, body, headers = outcome
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.source.close()
        self._release()
        payload = b"" if body is None else self.encode(body)
        # Serves the connection's next requests, in this greenlet, once the answer is out.
        self.deferred.answer(status, payload, None if body is None else "application/json", headers)

    def _release(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()
