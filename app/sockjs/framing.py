"""SockJS frames and their wire forms (SockJS protocol 0.3.3), as pure functions on strings.

The server sends four frames: ``o`` (open), ``h`` (heartbeat), ``a[...]`` (a JSON array of
messages) and ``c[code,"reason"]`` (close). Each receiving transport wraps a frame its own
way (:data:`WIRES`): a line for the XHR transports, an SSE ``data:`` field, a ``<script>``
for htmlfile, a callback call for JSONP, nothing for WebSocket.

Clients send messages as a JSON array of strings (a single JSON string is taken too, as
sockjs-node does on its WebSocket transport): :func:`decode_messages`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from .errors import BrokenJson, PayloadExpected

__all__ = [
    "HEARTBEAT_FRAME",
    "OPEN_FRAME",
    "WIRES",
    "Wire",
    "close_frame",
    "decode_messages",
    "encode_json",
    "htmlfile_prelude",
    "iframe_page",
    "message_frame",
    "valid_callback",
]

OPEN_FRAME = "o"
HEARTBEAT_FRAME = "h"

# sockjs-protocol-0.3.3.py, "JSON Unicode Encoding": the characters a server must send
# escaped (browsers mangle them on some transports), plus the surrogates, which have no
# UTF-8 form on their own (Python keeps a lone "\ud800" from JSON as one code point).
_ESCAPE_BY_SERVER = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return "\\u%04x" % ord(match.group())


def encode_json(value: object) -> str:
    """JSON text for ``value`` with the characters SockJS requires escaped as ``\\uXXXX``.

    Everything else goes out as itself (UTF-8 on the wire), so Korean text costs 3 bytes a
    character, not 6.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _ESCAPE_BY_SERVER.sub(_escape, text)


def message_frame(messages: list[str]) -> str:
    """The ``a`` frame carrying ``messages`` in order."""
    return "a" + encode_json(messages)


def close_frame(code: int, reason: str) -> str:
    """The ``c`` frame: ``c[3000,"Go away!"]``."""
    return "c" + encode_json([code, reason])


def decode_messages(payload: str) -> list[str]:
    """The messages of one client send (``["a","b"]``, or a lone ``"a"``).

    Raises:
        PayloadExpected: an empty payload, or JSON that is not strings.
        BrokenJson: the payload is not JSON.
    """
    if not payload:
        raise PayloadExpected()
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise BrokenJson(str(exc)) from None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PayloadExpected("a send is a JSON array of strings")
    return value


# -- the receiving transports' wire forms ---------------------------------------------------

_CALLBACK_RE = re.compile(r"[A-Za-z0-9_.]{1,64}\Z")


def valid_callback(name: str) -> bool:
    """Whether ``name`` may be written into a page as a JavaScript callback (htmlfile, JSONP).

    Letters, digits, ``_`` and ``.`` only (sockjs-client's callbacks are
    ``_jp.a1b2c3.x``): anything else would let a URL write script into our origin.
    """
    return bool(_CALLBACK_RE.match(name))


@dataclass(frozen=True)
class Wire:
    """How one receiving transport puts frames on its HTTP response.

    Attributes:
        streaming: the response stays open for many frames (else one frame, then it ends).
        content_type: the response's Content-Type.
        prelude: written once before the first frame (``callback`` filled in for htmlfile).
        wrap: ``wrap(frame, callback)`` -> the text written for one frame.
    """

    streaming: bool
    content_type: str
    prelude: Callable[[str], str]
    wrap: Callable[[str, str], str]


def htmlfile_prelude(callback: str) -> str:
    """The htmlfile page head that calls ``parent.<callback>``, padded past 1 KiB (Safari
    parses nothing of a page before its first kilobyte)."""
    head = (
        "<!doctype html>\n<html><head>\n"
        '  <meta http-equiv="X-UA-Compatible" content="IE=edge" />\n'
        '  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />\n'
        "</head><body><h2>Don't panic!</h2>\n"
        "  <script>\n"
        "    document.domain = document.domain;\n"
        f"    var c = parent.{callback};\n"
        "    c.start();\n"
        "    function p(d) {c.message(d);};\n"
        "    window.onload = function() {c.stop();};\n"
        "  </script>\n"
    )
    return head + " " * max(0, 1024 - len(head) + 13) + "\r\n\r\n"


def _no_prelude(callback: str) -> str:
    return ""


WIRES: dict[str, Wire] = {
    "xhr": Wire(False, "application/javascript; charset=UTF-8", _no_prelude, lambda frame, callback: frame + "\n"),
    # 2 KiB of "h" first: some browsers deliver nothing of an XHR response before that.
    "xhr_streaming": Wire(
        True,
        "application/javascript; charset=UTF-8",
        lambda callback: "h" * 2048 + "\n",
        lambda frame, callback: frame + "\n",
    ),
    # A newline first: Opera once needed one before the first event.
    "eventsource": Wire(
        True,
        "text/event-stream; charset=UTF-8",
        lambda callback: "\r\n",
        lambda frame, callback: "data: " + frame + "\r\n\r\n",
    ),
    "htmlfile": Wire(
        True,
        "text/html; charset=UTF-8",
        htmlfile_prelude,
        lambda frame, callback: "<script>\np(" + encode_json(frame) + ");\n</script>\r\n",
    ),
    "jsonp": Wire(
        False,
        "application/javascript; charset=UTF-8",
        _no_prelude,
        lambda frame, callback: callback + "(" + encode_json(frame) + ");\r\n",
    ),
}


def iframe_page(sockjs_url: str) -> str:
    """The ``iframe.html`` page, which loads sockjs-client from ``sockjs_url`` in our origin
    (the iframe-based transports talk to the server from inside it)."""
    url = sockjs_url.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '  <meta http-equiv="X-UA-Compatible" content="IE=edge" />\n'
        '  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />\n'
        "  <script>\n"
        "    document.domain = document.domain;\n"
        "    _sockjs_onload = function(){SockJS.bootstrap_iframe();};\n"
        "  </script>\n"
        f'  <script src="{url}"></script>\n'
        "</head>\n<body>\n"
        "  <h2>Don't panic!</h2>\n"
        "  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n"
        "</body>\n</html>"
    )
