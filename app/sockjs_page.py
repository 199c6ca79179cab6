"""The ``/sockjs`` page: the study notes' SockJS + stomp.js 2.3.3 chat client on the seed's
endpoint (``/websocket/stomp``), with a picker that forces each SockJS transport and
counters of what each one costs on the wire."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_babel import lazy_gettext as _l

from .pages import TECHNIQUES, page_sender

bp = Blueprint("sockjs_page", __name__)

#: sockjs-client 1.6's transports, in its own order of preference; ``""`` lets it choose.
SOCKJS_TRANSPORTS = (
    ("", _l("any (sockjs-client picks: WebSocket first)")),
    ("websocket", "websocket"),
    ("xhr-streaming", "xhr-streaming"),
    ("eventsource", "eventsource"),
    ("iframe-eventsource", "iframe-eventsource"),
    ("htmlfile", "htmlfile"),
    ("iframe-htmlfile", "iframe-htmlfile"),
    ("xhr-polling", "xhr-polling"),
    ("iframe-xhr-polling", "iframe-xhr-polling"),
    ("jsonp-polling", "jsonp-polling"),
)


@bp.get("/sockjs")
def sockjs():
    """Show the seed's chat client over SockJS, with a transport picker and wire counters."""
    return render_template("sockjs.html", techniques=TECHNIQUES, sender=page_sender(), transports=SOCKJS_TRANSPORTS)
