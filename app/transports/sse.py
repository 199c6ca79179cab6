"""Server-Sent Events: one long ``text/event-stream`` response per client.

What goes on the wire (WHATWG HTML, "Server-sent events"), in order:

1. At once, before any event: ``retry: <ms>`` and a comment line. A proxy or a browser
   that sees no byte for a while may give up on the stream (the seed's note about a 503
   on first connect); the headers and these bytes leave in the first write.
2. If the client resumes (``Last-Event-ID`` header on an automatic reconnect, or the
   ``last_event_id`` query on a first connection, since EventSource cannot set headers):
   the events it missed, replayed from history, then live ones, each exactly once and
   in order. A cursor older than history, or from another epoch, gets ``event: gap``
   first (its ``id`` is the client's own cursor, unchanged), then what history still holds.
3. Each event as ``id: <cursor>``, ``event: <type>`` (so ``addEventListener(type)``
   works; ``onmessage`` only sees type ``message``) and ``data: <the event as one-line
   JSON>``. JSON escapes CR, LF and NUL inside strings, and cursors and types never
   contain them, so the framing holds for any payload. The bytes are built once per
   event (``Event.encoded``) and shared by every client; whatever is queued when a
   writer wakes goes out in one write.
4. ``: ping`` comments after each ``SWITCHBOARD_SSE_HEARTBEAT`` seconds of silence. They
   keep proxies from timing the stream out, and they are how a gone client is found:
   gevent's WSGI server learns it only when a write fails (it skips empty chunks, so the
   heartbeat must be real bytes), and the generator's ``finally`` then releases the
   subscription.
5. A subscriber too slow for its queue and for history gets ``event: gap`` and the
   stream ends; EventSource reconnects with ``Last-Event-ID`` and resumes from there.
6. On shutdown (DESIGN.md §8) the stream ends after a last ``retry:`` between
   ``SWITCHBOARD_SSE_RETRY_MS`` and that plus :data:`SHUTDOWN_JITTER_MS` (at least
   1 s), chosen at random per stream, so that the clients of a stopping worker come
   back spread out instead of all at once.

Several topics on one stream (``GET /api/stream?topic=a&topic=b``): the same wire, with
three differences. Each event's ``id`` is a compound cursor (``app/transports/cursor.py``)
naming the last event written of every topic, so ``Last-Event-ID`` resumes them all; the
opening carries the compound cursor the stream starts from as an ``id:`` of its own; a
gap is per topic (its data names the topic, its ``id`` is the compound cursor before it).
The data line is the one-topic stream's, and it names its topic.

A stream counts against the connection limits (``app/limits.py``): beyond them the
request is answered 503 or 429 with ``Retry-After`` instead of a stream. A multi-topic
stream is one stream, however many topics it follows.
"""

from __future__ import annotations

import json
import logging
import random
import re
from typing import Callable, Iterator

from flask import Blueprint, Flask, Request, Response, request

from ..auth import Identity
from ..auth.web import authorize
from ..config import Settings
from ..delivery import Delivery
from ..errors import ApiError
from ..events import Event, Gap, check_topic
from ..hub import Subscription, SubscriptionClosed
from ..limits import Slot
from ..metrics import Metrics
from ..server.outbox import Outbox
from ..server.raw_response import ENVIRON_RAW_RESPONSE, RawResponse
from ..services import Services, services
from .cursor import compound_resume_cursor, format_compound, resume_cursor
from .sse_keeper import SseKeeper, SseLife
from .topics import TopicSet, authorize_topics, read_topics, start_positions

log = logging.getLogger(__name__)

bp = Blueprint("sse", __name__)

CONTENT_TYPE = "text/event-stream"
# The spread of the last retry: on shutdown, in ms (see the module docstring, 6).
SHUTDOWN_JITTER_MS = 2000
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token.
_BEARER_RE = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)\Z", re.IGNORECASE)


def encode_event(event: Event) -> bytes:
    """One event as an SSE block: ``id``, ``event`` and ``data`` lines, then a blank line."""
    data = event.json()
    try:
        payload = data.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a "\ud800" escape in the published JSON) has no UTF-8 form:
        # keep it escaped, as ASCII JSON, rather than fail every subscriber's stream.
        payload = json.dumps(event.to_dict(), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode("ascii"), event.type.encode("ascii"), payload)


def encode_gap(gap: Gap, position: str | None) -> bytes:
    """The gap signal. Its ``id`` repeats the position the client had (where the gap
    starts), so a client's last event id stays put even in a reading of the spec where
    each new connection starts with an empty id buffer (browsers keep the old one)."""
    body = json.dumps({"topic": gap.topic, "slow": gap.slow}, separators=(",", ":")).encode("ascii")
    if position is None:
        return b"event: gap\ndata: %s\n\n" % body
    return b"id: %s\nevent: gap\ndata: %s\n\n" % (position.encode("ascii"), body)


def _identity(req: Request, identity: Identity) -> str:
    """Who the server thinks the client is, for the opening comment (one line, ASCII).

    With access control on, the token was verified: the comment names its subject and
    how it came. With it off, ``Authorization: Bearer <token>`` is still acknowledged, to
    show that a header set by a fetch-based reader reaches the server (EventSource cannot
    set one); nothing can verify it then, and the comment says so.
    """
    if identity.via != "open":
        left = identity.seconds_left()
        return f"you are {identity.sender} ({identity.via}" + (
            f", token expires in {int(left)} s)" if left is not None else ")"
        )
    who = f"you are {identity.sender} (session cookie)"
    header = req.headers.get("Authorization")
    if header is None:
        return who
    match = _BEARER_RE.match(header)
    if match is None:
        return who + "; an Authorization header came but is not a Bearer token, ignored"
    token = match.group(1)
    return who + (
        f"; Authorization: Bearer token of {len(token)} characters received, "
        f"starting {token[:6]!r} (not verified: demo only)"
    )


def shutdown_retry(retry_ms: int) -> bytes:
    """The last bytes of a stream ended by shutdown: a jittered ``retry:`` and a comment."""
    delay = retry_ms + random.randint(0, max(SHUTDOWN_JITTER_MS, retry_ms))
    return b"retry: %d\n: server shutting down, reconnect with Last-Event-ID\n\n" % delay


def _chunk(block: bytes) -> bytes:
    # RFC 9112 7.1: chunk-size in hex, CRLF, the data, CRLF.
    return b"%x\r\n%s\r\n" % (len(block), block)


def _chunked_event(event: Event) -> bytes:
    return _chunk(encode_event(event))


class _Framer:
    """An SSE stream's wire format for the delivery layer (:class:`app.delivery.Framer`):
    each block in its own HTTP chunk when the response is chunked (HTTP/1.1), as is
    otherwise (HTTP/1.0: the body ends with the connection)."""

    chunked = True  # set from the server's choice once the headers are out
    retry_ms = 2000

    def wrap(self, block: bytes) -> bytes:
        return _chunk(block) if self.chunked else block

    def closed(self, reason: str, out: list) -> bool:
        # After a slow-consumer gap (already framed) or on shutdown: the stream ends;
        # EventSource reconnects with Last-Event-ID.
        if reason == "shutdown":
            out.append(self.wrap(shutdown_retry(self.retry_ms)))
        return True


class _TopicFramer(_Framer):
    """Frames a one-topic stream: each event's ``id`` is its own cursor. The chunk of an
    event is built once and shared by every client (``Event.encoded``)."""

    def __init__(self, since: str | None):
        self.position = since  # the id of the last event written (or the client's own)

    def frame(self, items: list, out: list) -> int:
        events = 0
        chunked = self.chunked
        for item in items:
            if isinstance(item, Gap):
                out.append(self.wrap(encode_gap(item, self.position)))
            else:
                self.position = item.id
                out.append(item.encoded("sse-chunk", _chunked_event) if chunked else item.encoded("sse", encode_event))
                events += 1
        return events


class _CompoundFramer(_Framer):
    """Frames a multi-topic stream: each event's ``id`` is the compound cursor after it,
    so the ``Last-Event-ID`` of a reconnect resumes every topic."""

    def __init__(self, positions: dict[str, str]):
        self.positions = dict(positions)  # topic -> the id of its last event written

    @property
    def position(self) -> str | None:
        return format_compound(self.positions) or None

    def frame(self, items: list, out: list) -> int:
        events = 0
        for item in items:
            if isinstance(item, Gap):
                out.append(self.wrap(encode_gap(item, self.position)))
                continue
            self.positions[item.topic] = item.id
            # The one-topic chunk, built once and shared, with its chunk header and id line
            # swapped for this client's compound cursor: a view, nothing copied.
            shared = item.encoded("sse-chunk", _chunked_event)
            skip = shared.index(b"\r\n") + len(b"\r\nid: \n") + len(item.id)
            fields = memoryview(shared)[skip:-2]
            id_line = b"id: %s\n" % format_compound(self.positions).encode("ascii")
            if self.chunked:
                out += (b"%x\r\n%s" % (len(id_line) + len(fields), id_line), fields, b"\r\n")
            else:
                out += (id_line, fields)
            events += 1
        return events


class _Release:
    """What a stream holds until it ends: its source and its connection slot. Released
    when the response closes, unless the stream was handed to the keeper (which then
    releases them when the stream is done)."""

    __slots__ = ("source", "slot", "kept")

    def __init__(self, source: Subscription | TopicSet, slot: Slot):
        self.source = source
        self.slot = slot
        self.kept = False

    def __call__(self) -> None:
        if not self.kept:
            self.source.close()
            self.slot.release()


def _stream(
    raw: RawResponse,
    owned: _Release,
    framer: _Framer,
    opening: bytes,
    heartbeat: float,
    metrics: Metrics,
    delivery: Delivery,
    keeper: SseKeeper,
    write_timeout: float | None,
    identity: Identity | None = None,
) -> Iterator[bytes]:
    # The headers and the opening go out through WSGI; after that the delivery layer
    # writes the body to the socket itself, the response is detached from this request's
    # greenlet, which ends, and the worker's keeper does the rest (sse_keeper.py).
    source, slot = owned.source, owned.slot
    gauge = metrics.connections.labels("sse")
    gauge.inc()
    try:
        yield opening
        framer.chunked = raw.chunked
        outbox = Outbox(raw.socket, f"{slot.client} (sse)", write_timeout, raw.written)
        stream = delivery.stream(outbox, "sse", slot.client)
        delivery.attach(stream, source, framer)
        detached = raw.detach()
        owned.kept = True
    finally:
        if not owned.kept:
            gauge.dec()
            source.close()

    def release() -> None:
        try:
            stream.close()
            outbox.clear()
            source.close()
            slot.release()
            gauge.dec()
        finally:
            detached.finish()  # the last chunk, the close, the access log line

    keeper.add(SseLife(stream, framer.wrap, heartbeat, identity, release))


def _opening(settings: Settings, what: str, identity: Identity, position: str | None = None) -> bytes:
    """The first bytes: ``retry:``, a comment naming the stream and the client, and on a
    multi-topic stream an ``id:`` with the compound cursor it starts from (a block without
    data: EventSource keeps the id as its last event id and dispatches nothing)."""
    text = (
        f"retry: {settings.sse_retry_ms}\n"
        f": switchboard stream of {what}, heartbeat every {settings.sse_heartbeat:g} s; "
        f"{_identity(request, identity)}\n"
    )
    if position:
        text += f"id: {position}\n"
    return (text + "\n").encode("ascii", "replace")


def _respond(
    open_source: Callable[[], Subscription | TopicSet], framer: _Framer, opening: bytes, identity: Identity
) -> Response:
    """Admit the stream (connection limits), open its subscriptions, and answer with it."""
    settings = services().settings
    raw = request.environ.get(ENVIRON_RAW_RESPONSE)
    if raw is None:
        raise ApiError(
            501,
            "unsupported_server",
            "event streams need Switchboard's server: gunicorn with app.server.lifecycle.Worker, or python wsgi.py",
        )
    slot = services().limits.open_stream(request.environ, "sse")  # or 503/429
    try:
        source = open_source()
    except SubscriptionClosed:
        slot.release()
        raise ApiError(
            503, "shutting_down", "the server is shutting down; reconnect shortly", {"Retry-After": "1"}
        ) from None
    except BaseException:
        slot.release()
        raise
    framer.retry_ms = settings.sse_retry_ms
    owned = _Release(source, slot)
    stream_body = _stream(
        raw,
        owned,
        framer,
        opening,
        settings.sse_heartbeat,
        services().metrics,
        services().delivery,
        services().sse_keeper,
        settings.write_timeout or None,
        identity,
    )
    response = Response(stream_body, status=200, content_type=CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each write on at once
    # Runs even if the generator never starts (HEAD, or a failure before the first write).
    response.call_on_close(owned)
    return response


@bp.get("/api/topics/<topic>/stream")
def stream(topic: str) -> Response:
    """Stream the topic's events as text/event-stream, resuming after Last-Event-ID."""
    check_topic(topic)
    identity = authorize("subscribe", topic, "sse")
    since = resume_cursor(request)
    opening = _opening(services().settings, f"topic {topic}", identity)
    return _respond(
        lambda: services().hub.subscribe(topic, since=since, member=identity.sender),
        _TopicFramer(since),
        opening,
        identity,
    )


@bp.get("/api/stream")
def multi_stream() -> Response:
    """Stream several topics on one text/event-stream, resuming each after the compound Last-Event-ID."""
    settings = services().settings
    topics = read_topics(request, settings.max_stream_topics)
    identity = authorize_topics(topics, "sse")
    resume = compound_resume_cursor(request, topics, settings.max_stream_topics)
    hub = services().hub
    positions = start_positions(hub, topics, resume)
    framer = _CompoundFramer(positions)
    opening = _opening(settings, "topics " + ", ".join(topics), identity, framer.position)
    return _respond(lambda: TopicSet(hub, topics, positions, member=identity.sender), framer, opening, identity)


def init_app(app: Flask, services: Services) -> dict[str, tuple[str, ...]]:
    """Register the event-stream routes (no WebSocket path)."""
    app.register_blueprint(bp)
    return {}
