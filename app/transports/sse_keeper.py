"""The worker's one timer for its SSE streams: heartbeats, token expiry, each stream's end.

An SSE stream's request greenlet ends once the stream is set up (the server detaches the
response: :meth:`app.server.raw_response.RawResponse.detach`): a parked greenlet would cost
its stack, copied to the heap at each switch, and its frames, for as long as the stream is
idle. Events reach the socket through the delivery layer as before; what the greenlet did
while it waited is done here, for every stream of the worker, by one greenlet:

* a ``: ping`` comment after each ``heartbeat`` seconds of silence (the stream's last
  write: an event is a sign of life too); a write to a gone client fails, and the stream
  ends (the delivery layer's outbox finds the peer lost);
* the end of a stream whose token expired (``event: expired``);
* when a stream is done (its last bytes out, or the client gone): its subscription closed,
  its connection slot released, its gauge lowered, and the response finished (the last
  chunk, the close, the access log line).

Deadlines are kept in a heap, so a wake-up costs the streams that are due, not all of them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import Callable

import gevent
import gevent.event

from ..auth import Identity
from ..delivery import Stream

log = logging.getLogger(__name__)

HEARTBEAT = b": ping\n\n"
# The last block of a stream whose token expired. EventSource then reconnects without a
# valid token (the cookie's Max-Age ended with it) and gets 401, which stops it.
EXPIRED = b'event: expired\ndata: {"error":"unauthorized","message":"the token has expired"}\n\n'


class SseLife:
    """One detached SSE stream, as the keeper sees it.

    Args:
        stream: the stream's delivery side.
        wrap: frames a block for the response (an HTTP chunk, or as is).
        heartbeat: seconds of silence before a ``: ping``.
        identity: whose token bounds the stream's life, if any.
        release: run once when the stream is done (close the source, release the slot,
            lower the gauge, finish the response), in the keeper's greenlet.
    """

    __slots__ = ("stream", "wrap", "heartbeat", "identity", "release", "__weakref__")

    def __init__(
        self,
        stream: Stream,
        wrap: Callable[[bytes], bytes],
        heartbeat: float,
        identity: Identity | None,
        release: Callable[[], None],
    ):
        self.stream = stream
        self.wrap = wrap
        self.heartbeat = heartbeat
        self.identity = identity
        self.release = release

    def step(self, now: float) -> float:
        """Do what is due now (an expiry's end, a heartbeat); when the next step is due."""
        stream = self.stream
        heartbeat = self.heartbeat
        left = self.identity.seconds_left() if self.identity is not None else None
        if left is not None and left <= 0 and stream.open:
            stream.end([self.wrap(EXPIRED)])  # a stream never outlives its token
        silence = now - stream.last_write
        if stream.backlog or not stream.open:
            wait = heartbeat  # a writer is at work; its bytes are the sign of life
        elif silence < heartbeat:
            wait = heartbeat - silence
        else:
            wait = heartbeat
            if left is None or left > heartbeat:
                stream.write([self.wrap(HEARTBEAT)])
        if left is not None and left > 0:
            wait = min(wait, left)
        return now + wait


class SseKeeper:
    """The timer of one worker's detached SSE streams (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, SseLife]] = []
        self._order = itertools.count()
        self._done: list[SseLife] = []
        self._wake = gevent.event.Event()
        self._loop: gevent.Greenlet | None = None
        self.count = 0  # streams kept now

    def add(self, life: SseLife) -> None:
        """Keep ``life`` from now on, until its stream is done."""
        self.count += 1
        due = time.monotonic() + life.heartbeat
        left = life.identity.seconds_left() if life.identity is not None else None
        if left is not None:
            due = min(due, time.monotonic() + max(0.0, left))
        self._push(due, life)
        life.stream.done.rawlink(lambda _event: self._ended(life))
        if self._loop is None:
            self._loop = gevent.spawn(self._run)

    def _push(self, due: float, life: SseLife) -> None:
        heap = self._heap
        if not heap or due < heap[0][0]:
            self._wake.set()  # earlier than what the timer sleeps for
        heapq.heappush(heap, (due, next(self._order), life))

    def _ended(self, life: SseLife) -> None:
        # Runs in the hub (a rawlink): only note it, the keeper's greenlet releases.
        self._done.append(life)
        self._wake.set()

    def _run(self) -> None:
        heap = self._heap
        while True:
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else None
            self._wake.wait(timeout)
            self._wake.clear()
            try:
                self._release_done()
                self._step_due(heap)
            except Exception:
                log.error("the SSE keeper's round failed", exc_info=True)

    def _release_done(self) -> None:
        done, self._done = self._done, []
        for life in done:
            self.count -= 1
            try:
                life.release()
            except Exception:
                log.error("releasing SSE stream of %s failed", life.stream.client, exc_info=True)

    def _step_due(self, heap: list) -> None:
        now = time.monotonic()
        stepped = 0
        while heap and heap[0][0] <= now:
            _, _, life = heapq.heappop(heap)
            if life.stream.done.is_set():
                continue  # released by _release_done; its entry just leaves the heap
            try:
                due = life.step(now)
            except Exception:
                log.error("SSE stream of %s failed", life.stream.client, exc_info=True)
                life.stream.close()
                continue
            heapq.heappush(heap, (due, next(self._order), life))
            stepped += 1
            if stepped % 256 == 0:
                gevent.sleep(0)  # a round over many streams lets others run
                now = time.monotonic()
