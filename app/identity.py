"""Who is talking: a per-browser session id in a signed cookie becomes the ``sender``.

As in the seed's Spring demo (the servlet session id), the identity comes from the
session, never from a message body. WebSocket and STOMP connections carry the same
cookie in their handshake, so one browser has one name on every transport.
"""

from __future__ import annotations

import re
import secrets

from flask import g, session

_SID_RE = re.compile(r"[0-9a-f]{12}\Z")


def current_sender() -> str:
    """The caller's display name, creating its session id on first use."""
    sid = session.get("sid")
    if not isinstance(sid, str) or not _SID_RE.match(sid):
        sid = secrets.token_hex(6)
        session["sid"] = sid
        session.permanent = True
        g.switchboard_new_sender = True
    return f"guest-{sid[:6]}"


def sender_is_new() -> bool:
    """Whether :func:`current_sender` made the caller's name in this request (no valid session
    cookie came): a client that keeps no cookie is a new guest every time it asks."""
    return bool(g.get("switchboard_new_sender"))
