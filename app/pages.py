"""The demo pages: an index with one card per technique, one page per technique, the
side-by-side comparison and the proxy doctor."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, abort, render_template
from flask_babel import LazyString
from flask_babel import lazy_gettext as _l

from .auth import AccessError
from .auth.demo import DEMO_QUEUES, demo_topics
from .auth.web import request_identity
from .identity import current_sender
from .services import services

bp = Blueprint("pages", __name__)


@dataclass(frozen=True)
class Technique:
    """One card of the index (and the intro of its page). The texts are lazy: each request
    reads them in its own language (app/i18n.py). Like every gettext result in a template,
    they are trusted text from the catalog (rendered as markup): keep "<" and "&" out."""

    slug: str
    title: LazyString
    definition: LazyString
    strengths: tuple[LazyString, ...]
    costs: tuple[LazyString, ...]
    use_when: LazyString
    pitfalls: tuple[LazyString, ...]


# The cards say what the study notes this project grew from (shared/seed) say of each
# technique: what it is, what it costs, when to use it, and what trips people up.
TECHNIQUES = (
    Technique(
        "polling",
        _l("Interval polling"),
        _l("The browser asks the server for news on a timer (setTimeout or setInterval)."),
        (
            _l("Simplest to build: plain HTTP requests, works through every proxy."),
            _l("A 304 Not Modified keeps an empty answer cheap."),
        ),
        (
            _l("Costs a request every interval even when nothing happens."),
            _l("Freshness is the interval: short = fresher but heavier, long = lighter but staler."),
        ),
        _l(
            "Data that need not be instant: dashboards, weather, a sports ticker "
            "(Naver Sports' live text commentary polls every 10 seconds)."
        ),
        (
            _l(
                "setInterval fires again even while the last request is still out, so a slow server "
                "gets a pile of them; schedule the next poll with setTimeout once the answer is in."
            ),
            _l("Every open tab polls: halving the interval doubles the load, for nothing when nothing happens."),
            _l(
                "Without a cursor (the last id seen, sent back as since=), an event published between "
                "two polls is missed or shown twice."
            ),
        ),
    ),
    Technique(
        "long-polling",
        _l("Long polling"),
        _l(
            "The server holds the request until there is news or a timeout, answers, and the "
            "browser asks again at once."
        ),
        (_l("Near-instant delivery with plain HTTP."), _l("Far fewer empty requests than short-interval polling.")),
        (
            _l(
                "Each waiting client holds a connection; on a thread-per-request server it holds a "
                "thread (Spring offloads with DeferredResult). Here a parked request is a greenlet: about 20 KB "
                "measured with 10,000 parked at once, not a thread."
            ),
            _l(
                "One request per delivery burst; events published between requests must be "
                "caught with a cursor, or they are lost."
            ),
        ),
        _l("Instant updates where only HTTP gets through, or as a fallback for streaming."),
        (
            _l(
                "A server that parks requests on its request threads runs out of threads: hand the "
                "wait to something else (Spring: DeferredResult and an executor; here: greenlets)."
            ),
            _l(
                "The hold time must stay below every timeout on the way (proxy read timeouts, load "
                "balancers), or the answer is cut off as an error."
            ),
            _l("Asking again at once after an error is a hot loop: back off, capped and with jitter."),
        ),
    ),
    Technique(
        "sse",
        _l("Server-Sent Events"),
        _l(
            "One long HTTP response (text/event-stream) on which the server writes events, one way, "
            "server to browser; EventSource reconnects by itself."
        ),
        (
            _l("Built into browsers (EventSource), plain HTTP, automatic reconnect."),
            _l("Last-Event-ID on reconnect lets the server replay what was missed, with no duplicates."),
        ),
        (
            _l("One way only: the browser sends with ordinary requests."),
            _l(
                "HTTP/1.1 allows 6 connections per host in Chrome, so at most 6 tabs of streams (HTTP/2: 100 by default)."
            ),
            _l("Check browser support (Can I use) for the browsers you must serve."),
        ),
        _l("Server-to-browser feeds: notifications, live scores, progress, logs."),
        (
            _l(
                "Send something as soon as the stream opens: a stream that stays silent until a timeout "
                "can fail its first connection (the notes met a 503 Service Unavailable). This server "
                "writes retry: and a comment at once, then a heartbeat comment when idle."
            ),
            _l(
                "EventSource cannot set headers (Authorization needs a fetch-based reader); a library "
                "makes that simple: the SSE page uses fetch-event-source."
            ),
            _l('onmessage only sees events of type "message"; any other type needs addEventListener(type).'),
            _l(
                "Behind nginx: proxy_http_version 1.1 with an empty Connection header (to the upstream "
                "HTTP/1.0 means Connection: close), and no buffering (proxy_buffering off or "
                "X-Accel-Buffering: no), which has costs of its own."
            ),
        ),
    ),
    Technique(
        "websocket",
        _l("WebSocket"),
        _l(
            "An HTTP request upgraded (101 Switching Protocols) into a full-duplex message channel "
            "on one TCP connection."
        ),
        (_l("Both ways on one connection, no request per message."), _l("Small framing overhead; binary or text.")),
        (
            _l("Reconnect, resume and message format are yours to design (here: cursors and a JSON protocol)."),
            _l("A socket is state on the server: scaling out needs a shared hub (here: Redis)."),
        ),
        _l("Chat, collaboration, games: anything interactive in both directions."),
        (
            _l("Proxies must pass Upgrade and Connection: upgrade (nginx needs proxy_http_version 1.1)."),
            _l("On an HTTPS page use wss://, the WebSocket form of HTTPS."),
            _l(
                "Check the Origin of the upgrade request (as Spring's setAllowedOrigins does): cookies "
                "travel with a socket that any site can open."
            ),
        ),
    ),
    Technique(
        "stomp",
        _l("STOMP over WebSocket"),
        _l(
            "A text messaging protocol (frames with headers: CONNECT, SUBSCRIBE, SEND, MESSAGE) carried "
            "in WebSocket messages, as Spring's @EnableWebSocketMessageBroker does."
        ),
        (
            _l("Destinations, receipts, acks and transactions come with the protocol."),
            _l("Client libraries exist for every language (@stomp/stompjs, stomp.py)."),
        ),
        (
            _l("A protocol on top of a protocol: more bytes per message, more to learn."),
            _l("Brokers rarely resume after a drop; here SUBSCRIBE takes a last-event-id header."),
        ),
        _l("Apps already built around a message broker, or wanting pub/sub semantics with acks."),
        (
            _l("Heart-beats are negotiated in CONNECT: with none, an idle proxy may close the socket unseen."),
            _l(
                "The client must offer the STOMP sub-protocols (v12.stomp ...) and the server echo one, "
                "or the browser fails the handshake."
            ),
            _l("Every frame ends with a NUL octet; a hand-made frame without it is never delivered."),
        ),
    ),
)

_BY_SLUG = {t.slug: t for t in TECHNIQUES}


def page_sender() -> str:
    """The name a page shows: the signed-in identity's, else the session's guest name.

    A cookie whose token fails (expired, or signed by the key of an earlier ``make
    run-auth``) must not break the page: it shows the guest name, and the page's own
    requests are refused with the reason.
    """
    try:
        return request_identity().sender
    except AccessError:
        return current_sender()


@dataclass(frozen=True)
class DoctorCheck:
    name: str  # as the command-line doctor names it (app/doctor/checks.py)
    title: LazyString  # lazy, like the cards: the page's language (the command line stays English)
    question: LazyString


# The proxy doctor's checks, in the order static/js/doctor.js runs them; the study notes'
# reverse-proxy pitfalls, plus what a browser alone can see (its HTTP version, its clock).
DOCTOR_CHECKS = (
    DoctorCheck(
        "upstream",
        _l("Upstream HTTP version and keep-alive"),
        _l("How did the proxy speak to the app: HTTP/1.1 with keep-alive, or HTTP/1.0 with Connection: close?"),
    ),
    DoctorCheck(
        "forwarded",
        _l("Forwarded headers"),
        _l("Do X-Forwarded-For and -Proto reach the app, does it trust them, and only the proxy's own?"),
    ),
    DoctorCheck(
        "clock",
        _l("Clock offset"),
        _l("How far is the server's clock from this browser's? It skews every latency figure on the pages."),
    ),
    DoctorCheck(
        "websocket",
        _l("WebSocket upgrade"),
        _l("Does /ws answer 101 Switching Protocols, and do frames pass both ways?"),
    ),
    DoctorCheck(
        "stomp",
        _l("STOMP upgrade"),
        _l("Does /stomp answer 101 with the STOMP sub-protocol echoed, and answer CONNECT?"),
    ),
    DoctorCheck(
        "buffering",
        _l("SSE buffering"),
        _l("The server sends events at a steady pace: do they arrive spaced, or in one clump?"),
    ),
    DoctorCheck(
        "http-version",
        _l("HTTP version and the connection limit"),
        _l("Which HTTP version did this browser use, and does a 7th request at once have to wait?"),
    ),
    DoctorCheck(
        "idle-cut", _l("Idle cut"), _l("How long does a silent stream survive, against the server's heartbeat?")
    ),
    DoctorCheck(
        "long-poll",
        _l("Long-poll timeout"),
        _l("Does an answer held silent past the long-poll timeout come back, or does the proxy give up first?"),
    ),
)


@bp.get("/")
def index():
    """Show one card per technique, and the demo sign-in when demo users are configured."""
    users = services().settings.demo_users
    return render_template(
        "index.html",
        techniques=TECHNIQUES,
        sender=page_sender(),
        demo_users=users,
        demo_topics=demo_topics(users) if users else (),
    )


@bp.get("/compare")
def compare():
    """Show the five transports side by side."""
    return render_template(
        "compare.html", techniques=TECHNIQUES, sender=page_sender(), compare_queue=DEMO_QUEUES["compare"]
    )


@bp.get("/doctor")
def doctor():
    """Show the proxy doctor: checks of what sits between this browser and the server."""
    settings = services().settings
    return render_template(
        "doctor.html",
        techniques=TECHNIQUES,
        sender=page_sender(),
        checks=DOCTOR_CHECKS,
        heartbeat=settings.sse_heartbeat,
        longpoll_timeout=settings.longpoll_timeout,
        max_wait=settings.doctor_max_wait,
        idle_default=min(settings.sse_heartbeat + 2, settings.doctor_max_wait),
        poll_default=min(settings.longpoll_timeout + 2, settings.doctor_max_wait),
    )


@bp.get("/<slug>")
def technique(slug: str):
    """Show one technique's demo page."""
    found = _BY_SLUG.get(slug)
    if found is None:
        abort(404)
    return render_template(f"{slug}.html", technique=found, techniques=TECHNIQUES, sender=page_sender())
