"""Long polling: the server holds the request until there is news or a timeout.

The client loops ``GET /api/topics/<topic>/long-poll?since=<cursor>``:

* anything newer than ``since`` already in history: answered at once (200);
* otherwise the request parks on a hub subscription that starts *at* ``since``, so an
  event published between two of the client's requests is replayed, never lost (the
  seed's demo has no cursor and loses exactly those);
* on wake-up it drains: the first item with the timeout, then everything already
  queued, up to ``limit``, in one answer (python-engineio's ``poll()`` does the same);
* nothing within the timeout: ``204 No Content``; the client asks again with the same
  cursor.

A 200 has the polling body ``{"events", "cursor", "gap"}``. A parked request costs one
subscription and no greenlet: its request's greenlet ends, the server defers the answer,
and the first event (or the timeout's timer) spawns the greenlet that answers and then
serves the connection's next request (``app/transports/parked_poll.py``). It ends at the
timeout at the latest, whether or not the client is still there (a WSGI server notices a
gone client only when it writes).
A parked request counts against the connection limits (``app/limits.py``): beyond them
it is answered 503 or 429 with ``Retry-After`` instead of parking. On shutdown every
parked request is answered 204 at once (DESIGN.md §8); the client polls again.

Several topics in one poll: ``GET /api/long-poll?topic=a&topic=b&since=<compound cursor>``
answers the same way, with every topic's news in one body ``{"events", "cursor", "gap",
"gaps"}``: each event names its topic, ``cursor`` is the compound cursor to send back
(``app/transports/cursor.py``), ``gaps`` lists the topics that lost events and ``gap``
says whether any did. It parks one subscription per topic (one request, one connection
slot) and wakes on the first event of any of them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from operator import attrgetter
from typing import Callable

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request

from ..auth import Identity, Unauthorized
from ..auth.web import authorize, refusal
from ..errors import ApiError
from ..events import Event, Gap, Page, check_topic
from ..hub import Hub, Item, Subscription, SubscriptionClosed
from ..metrics import Metrics
from ..server.raw_response import ENVIRON_RAW_RESPONSE
from ..services import Services, services
from .cursor import compound_resume_cursor, format_compound, read_limit, resume_cursor
from .parked_poll import Outcome, ParkedPoll
from .polling import count_poll
from .topics import TopicSet, authorize_topics, read_topics, start_positions

log = logging.getLogger(__name__)

bp = Blueprint("longpoll", __name__)


def read_timeout(req: Request, maximum: float) -> float:
    """The ``timeout`` query parameter in seconds, clamped to ``maximum`` (its default).

    Raises:
        ApiError: 400 ``bad_timeout`` when it is not a finite, non-negative number.
    """
    raw = req.args.get("timeout")
    if raw is None or raw == "":
        return maximum
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "bad_timeout", f"timeout must be a number of seconds from 0 to {maximum:g}")
    return min(value, maximum)


def _no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type
    response.headers["Cache-Control"] = "no-store"
    return response


def _respond(outcome: Outcome) -> Response:
    """An outcome as the response of this request (answered in the request's greenlet)."""
    status, body, headers = outcome
    response = _no_content() if body is None else jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    for name, value in headers:
        response.headers[name] = value
    return response


def _park(
    svc: Services,
    open_source: Callable[[], Subscription | TopicSet],
    limit: int,
    timeout: float,
    token_left: float | None,
    conclude: Callable[[list[Item], str], Outcome],
) -> Response:
    """Admit a parked poll (connection limits), open its subscriptions and park it.

    On Switchboard's server the request's greenlet then ends: the answer is deferred
    (:mod:`app.transports.parked_poll`). Elsewhere it waits here, as any WSGI view would.
    """
    slot = svc.limits.open_stream(request.environ, "long-polling")  # or 503/429
    try:
        source = open_source()
    except SubscriptionClosed:
        slot.release()
        raise ApiError(
            503, "shutting_down", "the server is shutting down; poll again shortly", {"Retry-After": "1"}
        ) from None
    except BaseException:
        slot.release()
        raise
    metrics = svc.metrics
    # A parked poll never outlives its token: it wakes at exp and answers 401.
    wait = timeout if token_left is None else max(0.0, min(timeout, token_left))
    gauge = metrics.connections.labels("long-polling")
    gauge.inc()
    metrics.long_polls_parked.inc()

    def release() -> None:
        metrics.long_polls_parked.dec()
        gauge.dec()
        slot.release()

    raw = request.environ.get(ENVIRON_RAW_RESPONSE)
    client = slot.client
    json = current_app.json  # the body's bytes as jsonify writes them (compact, sorted or not)
    parked = ParkedPoll(
        source, limit, wait, lambda items: conclude(items, client), lambda body: json.response(body).get_data(), release
    )
    deferred = raw.defer(parked.start) if raw is not None else None
    if deferred is not None:
        placeholder = _no_content()  # its headers (and the hooks') are kept for the answer
        placeholder.call_on_close(lambda: parked.abandon(deferred))  # an error after all: nothing is parked
        return placeholder
    try:
        try:
            items = source.get_many(limit, wait)
        except SubscriptionClosed:  # hub shutdown (DESIGN.md §8): the client polls again
            items = []
    finally:
        source.close()
        release()
    return _respond(conclude(items, client))


def _nothing(metrics: Metrics, identity: Identity, token_left: float | None) -> Outcome:
    """The answer of a poll that took nothing: 204, or 401 if its token expired meanwhile."""
    if token_left is not None and identity.seconds_left() <= 0:
        return refusal(
            Unauthorized("the token expired while the poll was parked", invalid_token=True, expired=True), metrics
        )
    return 204, None, ()


def _log_slow(items: list[Item], client: str) -> None:
    for topic in sorted({item.topic for item in items if isinstance(item, Gap) and item.slow}):
        log.info(
            "slow consumer dropped: client %s, transport long-polling, topic %s: its queue and history "
            "overflowed while parked; answered gap:true",
            client,
            topic,
        )


@bp.get("/api/topics/<topic>/long-poll")
def long_poll(topic: str) -> Response:
    """Answer with the events after ``since`` now, or park until one arrives (200) or the timeout (204)."""
    check_topic(topic)
    identity = authorize("subscribe", topic, "long-polling")
    since = resume_cursor(request)
    limit = read_limit(request)
    timeout = read_timeout(request, services().settings.longpoll_timeout)
    token_left = identity.seconds_left()
    hub = services().hub
    count_poll(hub, [topic], identity, hold=timeout)  # present while parked, and a while after

    if since:
        page = hub.history(topic, since=since, limit=limit)
        if page.events or page.gap:
            services().metrics.delivered.labels("long-polling").inc(len(page.events))
            if page.gap:
                services().metrics.gaps.labels("resume").inc()
            return _respond((200, page.to_dict(), ()))

    metrics = services().metrics

    def conclude(items: list[Item], client: str) -> Outcome:
        events = [item for item in items if isinstance(item, Event)]
        gap = any(isinstance(item, Gap) for item in items)
        _log_slow(items, client)
        if not events and not gap:
            return _nothing(metrics, identity, token_left)
        metrics.delivered.labels("long-polling").inc(len(events))
        return 200, Page(events, events[-1].id if events else (since or ""), gap).to_dict(), ()

    # Starts at ``since``: whatever is published from here on (or was, since the history
    # read above) is replayed or queued live, exactly once (seam rule).
    return _park(services(), lambda: hub.subscribe(topic, since=since), limit, timeout, token_left, conclude)


def _compound_body(items: list[Item], positions: dict[str, str], metrics: Metrics) -> dict:
    """The multi-topic 200's body: the polling body, with a compound ``cursor`` and
    ``gaps`` (the topics that had one; ``gap`` is true when any did)."""
    events = [item for item in items if isinstance(item, Event)]
    for event in events:
        positions[event.topic] = event.id
    gaps = list(dict.fromkeys(item.topic for item in items if isinstance(item, Gap)))
    metrics.delivered.labels("long-polling").inc(len(events))
    return {
        "events": [event.to_dict() for event in events],
        "cursor": format_compound(positions),
        "gap": bool(gaps),
        "gaps": gaps,
    }


def _newer(hub: Hub, resume: dict[str, str], positions: dict[str, str], limit: int) -> list[Item]:
    """What history already holds after the client's positions: the oldest ``limit``
    events across topics, and a :class:`Gap` for each topic that lost some.

    A topic's gap is told with its first event; if the limit leaves all of that topic's
    events for the next poll, so is the gap (its position has not moved). A gap with no
    event after it is told now, and ``positions`` moves past it.
    """
    gaps: list[str] = []
    pending: set[str] = set()
    pages: list[list[Event]] = []
    for topic, since in resume.items():
        page = hub.history(topic, since=since, limit=limit)
        if page.gap and not page.events:
            gaps.append(topic)
            if page.cursor:
                positions[topic] = page.cursor
            else:  # nothing in this epoch yet: live, as a topic never seen
                positions.pop(topic, None)
        elif page.gap:
            pending.add(topic)
        pages.append(page.events)
    # heapq.merge only ever takes a page's head: each topic keeps its order.
    events = list(itertools.islice(heapq.merge(*pages, key=attrgetter("time")), limit))
    told = {event.topic for event in events}
    gaps += [topic for topic in resume if topic in pending and topic in told]
    return [Gap(topic) for topic in gaps] + events


@bp.get("/api/long-poll")
def multi_long_poll() -> Response:
    """Answer with the events of several topics after the compound ``since`` now, or park
    until one arrives (200) or the timeout (204)."""
    settings = services().settings
    topics = read_topics(request, settings.max_stream_topics)
    identity = authorize_topics(topics, "long-polling")
    resume = compound_resume_cursor(request, topics, settings.max_stream_topics)
    limit = read_limit(request)
    timeout = read_timeout(request, settings.longpoll_timeout)
    token_left = identity.seconds_left()
    hub = services().hub
    count_poll(hub, topics, identity, hold=timeout)
    # Every topic gets a position in the answer's cursor, even one without news: the next
    # poll then resumes it from here, not from whenever that poll comes.
    positions = start_positions(hub, topics, resume)

    metrics = services().metrics
    if resume:
        items = _newer(hub, resume, positions, limit)
        if items:
            gaps = sum(isinstance(item, Gap) for item in items)
            if gaps:  # (a parked poll's gaps are counted by the hub)
                metrics.gaps.labels("resume").inc(gaps)
            return _respond((200, _compound_body(items, positions, metrics), ()))

    def conclude(items: list[Item], client: str) -> Outcome:
        _log_slow(items, client)
        if not items:
            return _nothing(metrics, identity, token_left)
        return 200, _compound_body(items, positions, metrics), ()

    return _park(services(), lambda: TopicSet(hub, topics, positions), limit, timeout, token_left, conclude)


def init_app(app: Flask, services: Services) -> dict[str, tuple[str, ...]]:
    """Register the long-poll routes (no WebSocket path)."""
    app.register_blueprint(bp)
    return {}
