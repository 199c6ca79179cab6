"""The demo pages: an index with one card per technique, one page per technique, the
side-by-side comparison and the proxy doctor."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, abort, render_template

from . import state
from .auth import AccessError
from .auth.demo import demo_topics
from .auth.web import request_identity
from .identity import current_sender

bp = Blueprint("pages", __name__)


@dataclass(frozen=True)
class Technique:
    slug: str
    title: str
    definition: str
    strengths: tuple[str, ...]
    costs: tuple[str, ...]
    use_when: str


# The cards follow the study notes this project grew from (shared/seed).
TECHNIQUES = (
    Technique(
        "polling", "Interval polling",
        "The browser asks the server for news on a timer (setTimeout or setInterval).",
        ("Simplest to build: plain HTTP requests, works through every proxy.",
         "A 304 Not Modified keeps an empty answer cheap."),
        ("Costs a request every interval even when nothing happens.",
         "Freshness is the interval: short = fresher but heavier, long = lighter but staler."),
        "Data that need not be instant: dashboards, weather, a sports ticker "
        "(Naver Sports' live text commentary polls every 10 seconds)."),
    Technique(
        "long-polling", "Long polling",
        "The server holds the request until there is news or a timeout, answers, and the "
        "browser asks again at once.",
        ("Near-instant delivery with plain HTTP.",
         "Far fewer empty requests than short-interval polling."),
        ("Each waiting client holds a connection; on a thread-per-request server it holds a "
         "thread (Spring offloads with DeferredResult). Here a parked request is a greenlet: about 20 KB "
         "measured with 10,000 parked at once, not a thread.",
         "One request per delivery burst; events published between requests must be "
         "caught with a cursor, or they are lost."),
        "Instant updates where only HTTP gets through, or as a fallback for streaming."),
    Technique(
        "sse", "Server-Sent Events",
        "One long HTTP response (text/event-stream) on which the server writes events, one way, "
        "server to browser; EventSource reconnects by itself.",
        ("Built into browsers (EventSource), plain HTTP, automatic reconnect.",
         "Last-Event-ID on reconnect lets the server replay what was missed, with no duplicates.",
         "addEventListener(type) routes typed events; onmessage only sees type \"message\"."),
        ("One way only: the browser sends with ordinary requests.",
         "HTTP/1.1 allows 6 connections per host in Chrome, so at most 6 tabs of streams (HTTP/2: 100 by default).",
         "EventSource cannot set headers (Authorization needs a fetch-based reader).",
         "Proxies buffer it unless told not to (X-Accel-Buffering: no, proxy_buffering off)."),
        "Server-to-browser feeds: notifications, live scores, progress, logs."),
    Technique(
        "websocket", "WebSocket",
        "An HTTP request upgraded (101 Switching Protocols) into a full-duplex message channel "
        "on one TCP connection.",
        ("Both ways on one connection, no request per message.",
         "Small framing overhead; binary or text."),
        ("Proxies must pass Upgrade and Connection: upgrade (nginx needs proxy_http_version 1.1).",
         "Reconnect, resume and message format are yours to design (here: cursors and a JSON protocol)."),
        "Chat, collaboration, games: anything interactive in both directions."),
    Technique(
        "stomp", "STOMP over WebSocket",
        "A text messaging protocol (frames with headers: CONNECT, SUBSCRIBE, SEND, MESSAGE) carried "
        "in WebSocket messages, as Spring's @EnableWebSocketMessageBroker does.",
        ("Destinations, receipts, acks and transactions come with the protocol.",
         "Client libraries exist for every language (@stomp/stompjs, stomp.py)."),
        ("A protocol on top of a protocol: more bytes per message, more to learn.",
         "Brokers rarely resume after a drop; here SUBSCRIBE takes a last-event-id header."),
        "Apps already built around a message broker, or wanting pub/sub semantics with acks."),
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
    title: str
    question: str


# The proxy doctor's checks, in the order static/js/doctor.js runs them; the study notes'
# reverse-proxy pitfalls, plus what a browser alone can see (its HTTP version, its clock).
DOCTOR_CHECKS = (
    DoctorCheck("upstream", "Upstream HTTP version and keep-alive",
                "How did the proxy speak to the app: HTTP/1.1 with keep-alive, or HTTP/1.0 with Connection: close?"),
    DoctorCheck("forwarded", "Forwarded headers",
                "Do X-Forwarded-For and -Proto reach the app, does it trust them, and only the proxy's own?"),
    DoctorCheck("clock", "Clock offset",
                "How far is the server's clock from this browser's? It skews every latency figure on the pages."),
    DoctorCheck("websocket", "WebSocket upgrade",
                "Does /ws answer 101 Switching Protocols, and do frames pass both ways?"),
    DoctorCheck("stomp", "STOMP upgrade",
                "Does /stomp answer 101 with the STOMP sub-protocol echoed, and answer CONNECT?"),
    DoctorCheck("buffering", "SSE buffering",
                "The server sends events at a steady pace: do they arrive spaced, or in one clump?"),
    DoctorCheck("http-version", "HTTP version and the connection limit",
                "Which HTTP version did this browser use, and does a 7th request at once have to wait?"),
    DoctorCheck("idle-cut", "Idle cut",
                "How long does a silent stream survive, against the server's heartbeat?"),
    DoctorCheck("long-poll", "Long-poll timeout",
                "Does an answer held silent past the long-poll timeout come back, or does the proxy give up first?"),
)


@bp.get("/")
def index():
    """Show one card per technique, and the demo sign-in when demo users are configured."""
    users = state.settings().demo_users
    return render_template("index.html", techniques=TECHNIQUES, sender=page_sender(),
                           demo_users=users, demo_topics=demo_topics(users) if users else ())


@bp.get("/compare")
def compare():
    """Show the five transports side by side."""
    return render_template("compare.html", techniques=TECHNIQUES, sender=page_sender())


@bp.get("/doctor")
def doctor():
    """Show the proxy doctor: checks of what sits between this browser and the server."""
    settings = state.settings()
    return render_template(
        "doctor.html", techniques=TECHNIQUES, sender=page_sender(), checks=DOCTOR_CHECKS,
        heartbeat=settings.sse_heartbeat, longpoll_timeout=settings.longpoll_timeout,
        max_wait=settings.doctor_max_wait,
        idle_default=min(settings.sse_heartbeat + 2, settings.doctor_max_wait),
        poll_default=min(settings.longpoll_timeout + 2, settings.doctor_max_wait))


@bp.get("/<slug>")
def technique(slug: str):
    """Show one technique's demo page."""
    found = _BY_SLUG.get(slug)
    if found is None:
        abort(404)
    return render_template(f"{slug}.html", technique=found, techniques=TECHNIQUES, sender=page_sender())
