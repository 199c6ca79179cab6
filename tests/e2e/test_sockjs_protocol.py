"""The SockJS protocol (0.3.3) on the SockJS layer alone, with real HTTP and real WebSockets.

The server is ``tests/support/sockjs_test_app.py`` under gunicorn with our worker class:
the test suite's four services (``/echo``, ``/close``, ``/disabled_websocket_echo``,
``/cookie_needed_echo``), streaming responses cut at 4096 bytes. Each test follows the
matching one of sockjs-protocol-0.3.3.py (its class named in the test's name), plus what
that suite leaves out: heartbeats and the session timeout (on a server with short
timings), broken and oversized sends, hostile callbacks and origins.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import websocket  # websocket-client

from tests.support.rawhttp import RawHttp
from tests.support.sockjs_protocol import (
    Held,
    content_type,
    get,
    options,
    post,
    session_url,
    sockjs,  # noqa: F401 (fixtures)
    verify_405,
    verify_cors,
    verify_not_cached,
    verify_options,
    ws_url,
)
from tests.support.timing import scaled

# ---------------------------------------------------------------- static URLs


def test_BaseUrlGreeting(sockjs):
    for url in (sockjs.url + "/echo", sockjs.url + "/echo/"):
        r = get(url)
        assert r.status_code == 200 and content_type(r) == "text/plain;charset=UTF-8"
        assert r.text == "Welcome to SockJS!\n" and "Set-Cookie" not in r.headers
    for suffix in ("/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a/"):
        assert get(sockjs.url + "/echo" + suffix).status_code == 404, suffix


IFRAME_BODY = re.compile(
    r"""
^<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script>
    document.domain = document.domain;
    _sockjs_onload = function\(\){SockJS.bootstrap_iframe\(\);};
  </script>
  <script src="(?P<sockjs_url>[^"]*)"></script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>$
""".strip()
)


def test_IframePage(sockjs):
    base = sockjs.url + "/echo"
    for suffix in (
        "/iframe.html",
        "/iframe-a.html",
        "/iframe-.html",
        "/iframe-0.1.2.html",
        "/iframe-0.1.2abc-dirty.2144.html",
        "/iframe-a.html?t=1234",
        "/iframe-0.1.2.html?t=123414",
    ):
        r = get(base + suffix)
        assert r.status_code == 200 and content_type(r) == "text/html;charset=UTF-8", suffix
        assert "public" in r.headers["Cache-Control"] and re.search(
            r"max-age=[1-9][0-9]{6}", r.headers["Cache-Control"]
        )
        assert r.headers["Expires"] and r.headers["ETag"] and "Last-Modified" not in r.headers
        match = IFRAME_BODY.match(r.text.strip())
        assert match and match.group("sockjs_url").startswith("/")
        assert "Set-Cookie" not in r.headers
        # Framed by our own pages only, and its one inline script allowed by hash.
        assert r.headers["X-Frame-Options"] == "SAMEORIGIN" and "'sha256-" in r.headers["Content-Security-Policy"]
    for suffix in (
        "/iframe.htm",
        "/iframe",
        "/IFRAME.HTML",
        "/IFRAME",
        "/iframe.HTML",
        "/iframe.xml",
        "/iframe-/.html",
    ):
        assert get(base + suffix).status_code == 404, suffix
    r1, r2 = get(base + "/iframe.html"), get(base + "/iframe.html")
    assert r1.headers["etag"] == r2.headers["etag"]
    r = get(base + "/iframe.html", headers={"If-None-Match": r1.headers["etag"]})
    assert r.status_code == 304 and not r.headers.get("content-type") and not r.content


def test_InfoTest(sockjs):
    r = get(sockjs.url + "/echo/info")
    assert r.status_code == 200 and content_type(r) == "application/json;charset=UTF-8"
    assert "Set-Cookie" not in r.headers
    verify_not_cached(r)
    verify_cors(r)
    data = r.json()
    assert data["websocket"] is True and data["cookie_needed"] in (True, False)
    assert data["origins"] == ["*:*"] and isinstance(data["entropy"], int)
    assert data["entropy"] != get(sockjs.url + "/echo/info").json()["entropy"]
    verify_options(sockjs.url + "/echo/info", "OPTIONS, GET")
    r = options(sockjs.url + "/echo/info", headers={"Origin": "null"})
    assert r.status_code == 204 and not r.content and r.headers["access-control-allow-origin"] == "*"
    assert get(sockjs.url + "/disabled_websocket_echo/info").json()["websocket"] is False


# ---------------------------------------------------------------- sessions and framing


def test_SessionURLs(sockjs):
    base = sockjs.url + "/echo"
    for part in ("/a/a", "/_/_", "/1/1", "/abcdefgh_i-j%20/abcdefg_i-j%20"):
        r = post(base + part + "/xhr")
        assert r.status_code == 200 and r.text == "o\n", part
    for suffix in ("//", "/a./a", "/a/a.", "/./.", "/", "///"):
        assert get(base + suffix + "/xhr").status_code == 404, suffix
        assert post(base + suffix + "/xhr").status_code == 404, suffix
    session_id = str(uuid.uuid4())
    assert post(f"{base}/000/{session_id}/xhr").text == "o\n"
    assert post(f"{base}/000/{session_id}/xhr_send", '["a"]').status_code == 204
    assert post(f"{base}/999/{session_id}/xhr").text == 'a["a"]\n'  # the server id is ignored


def test_Protocol_simpleSession_and_2010(sockjs):
    url = session_url(sockjs.url + "/echo")
    r = post(url + "/xhr")
    assert (r.status_code, r.text) == (200, "o\n")
    r = post(url + "/xhr_send", '["a"]')
    assert r.status_code == 204 and not r.content
    assert post(url + "/xhr").text == 'a["a"]\n'
    assert post(sockjs.url + "/echo/000/bad_session/xhr_send", '["a"]').status_code == 404
    # One receiving connection per session: a second gets 2010 and the first is untouched.
    held = Held(url + "/xhr", answer_now=False)
    time.sleep(scaled(0.2))
    r2 = post(url + "/xhr")
    assert (r2.status_code, r2.text) == (200, 'c[2010,"Another connection still open"]\n')
    assert post(url + "/xhr_send", '["still"]').status_code == 204
    assert held.answer() == 'a["still"]\n'
    held.close()


def test_Protocol_closeSession(sockjs):
    url = session_url(sockjs.url + "/close")
    assert post(url + "/xhr").text == "o\n"
    assert post(url + "/xhr").text == 'c[3000,"Go away!"]\n'
    assert post(url + "/xhr").text == 'c[3000,"Go away!"]\n'  # until the session times out


# ---------------------------------------------------------------- WebSocket


def assert_closed(ws) -> None:
    """The server closed the WebSocket: recv() gives the close ("") or raises."""
    try:
        assert ws.recv() == ""
    except websocket.WebSocketConnectionClosedException:
        pass


def test_WebsocketHttpErrors(sockjs):
    r = get(sockjs.url + "/echo/0/0/websocket")
    assert r.status_code == 400 and 'Can "Upgrade" only to "WebSocket".' in r.text
    # (The suite's own check of this body is assertTrue(text, body), always true: the
    # handshake's refusal, before any SockJS code, names the Connection header.)
    r = get(sockjs.url + "/echo/0/0/websocket", headers={"Upgrade": "WebSocket", "Connection": "close"})
    assert r.status_code == 400 and "Connection" in r.text
    verify_405(post(sockjs.url + "/echo/0/0/websocket"))
    # With the upgrade headers, the handshake refuses it first (wsio: a JSON body says why).
    r = post(sockjs.url + "/echo/0/0/websocket", headers={"Upgrade": "WebSocket", "Connection": "Upgrade"})
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_WebsocketHybi10_transport_close_and_broken_json(sockjs):
    ws = websocket.create_connection(ws_url(session_url(sockjs.url + "/echo")) + "/websocket", timeout=scaled(5))
    assert ws.recv() == "o"
    ws.send("")  # ignored
    ws.send('["a"]')
    assert ws.recv() == 'a["a"]'
    ws.send('"single"')  # one JSON string is a message too
    assert ws.recv() == 'a["single"]'
    ws.send('["a')
    assert_closed(ws)
    ws.close()
    ws = websocket.create_connection(ws_url(session_url(sockjs.url + "/close")) + "/websocket", timeout=scaled(5))
    assert ws.recv() == "o"
    assert ws.recv() == 'c[3000,"Go away!"]'
    assert_closed(ws)


def test_WebsocketHybi10_reuse_session_id(sockjs):
    url = ws_url(session_url(sockjs.url + "/echo")) + "/websocket"
    ws1, ws2 = websocket.create_connection(url, timeout=scaled(5)), websocket.create_connection(url, timeout=scaled(5))
    assert ws1.recv() == "o" and ws2.recv() == "o"
    ws1.send('["a"]')
    ws2.send('["b"]')
    assert ws1.recv() == 'a["a"]' and ws2.recv() == 'a["b"]'
    ws1.close()
    ws2.close()
    ws1 = websocket.create_connection(url, timeout=scaled(5))
    assert ws1.recv() == "o"
    ws1.send('["a"]')
    assert ws1.recv() == 'a["a"]'
    ws1.close()


def test_WebsocketHybi10_headers(sockjs):
    url = session_url(sockjs.url + "/echo") + "/websocket"
    conn = RawHttp(url)
    r = conn.request(
        "GET",
        url,
        headers={
            "Upgrade": "websocket",
            "Connection": "keep-alive, Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw==",
        },
    )
    assert r.status == 101 and r["sec-websocket-accept"] == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
    assert r["connection"].lower() == "upgrade" and r["upgrade"].lower() == "websocket" and not r["content-length"]
    conn.close()


def test_RawWebsocket(sockjs):
    ws = websocket.create_connection(ws_url(sockjs.url + "/echo/websocket"), timeout=scaled(5))
    ws.send("Hello world!\uffff")
    assert ws.recv() == "Hello world!\uffff"
    ws.close()
    ws = websocket.create_connection(ws_url(sockjs.url + "/close/websocket"), timeout=scaled(5))
    assert_closed(ws)
    ws.close()


def test_websocket_disabled(sockjs):
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(
            ws_url(session_url(sockjs.url + "/disabled_websocket_echo")) + "/websocket", timeout=scaled(5)
        )


# ---------------------------------------------------------------- XHR polling


def test_XhrPolling(sockjs):
    for suffix in ("/xhr", "/xhr_send"):
        verify_options(sockjs.url + "/echo/abc/abc" + suffix, "OPTIONS, POST")
    url = session_url(sockjs.url + "/echo")
    r = post(url + "/xhr")
    assert (r.status_code, r.text) == (200, "o\n")
    assert content_type(r) == "application/javascript;charset=UTF-8"
    verify_cors(r)
    verify_not_cached(r)
    r = post(url + "/xhr_send", '["x"]')
    assert r.status_code == 204 and not r.content
    assert content_type(r) == "text/plain;charset=UTF-8"
    verify_cors(r)
    verify_not_cached(r)
    assert post(url + "/xhr").text == 'a["x"]\n'
    assert post(session_url(sockjs.url + "/echo") + "/xhr_send", '["x"]').status_code == 404


def test_XhrPolling_invalid_json_keeps_the_session(sockjs):
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    r = post(url + "/xhr_send", '["x')
    assert r.status_code == 500 and "Broken JSON encoding." in r.text
    r = post(url + "/xhr_send", "")
    assert r.status_code == 500 and "Payload expected." in r.text
    for not_strings in ("[1]", "{}", "null"):
        r = post(url + "/xhr_send", not_strings)
        assert r.status_code == 500 and "Payload expected." in r.text
    r = post(url + "/xhr_send", b'["\xff"]')
    assert r.status_code == 500 and "Broken JSON encoding." in r.text
    r = post(url + "/xhr_send", '["a"]')
    assert r.status_code == 204 and not r.content
    r = post(url + "/xhr")
    assert (r.status_code, r.text) == (200, 'a["a"]\n')


def test_XhrPolling_content_types_and_cors_headers(sockjs):
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    types = [
        "text/plain",
        "T",
        "application/json",
        "application/xml",
        "",
        "application/json; charset=utf-8",
        "text/xml; charset=utf-8",
        "text/xml",
    ]
    for ct in types:
        r = post(url + "/xhr_send", '["a"]', headers={"Content-Type": ct})
        assert r.status_code == 204 and not r.content
    assert post(url + "/xhr").text == "a[" + ",".join(['"a"'] * len(types)) + "]\n"
    r = post(session_url(sockjs.url + "/echo") + "/xhr", headers={"Access-Control-Request-Headers": "a, b, c"})
    verify_cors(r)
    assert r.headers["Access-Control-Allow-Headers"] == "a, b, c"
    for headers in ({"Access-Control-Request-Headers": ""}, {}):
        r = post(session_url(sockjs.url + "/echo") + "/xhr", headers=headers)
        verify_cors(r)
        assert "Access-Control-Allow-Headers" not in r.headers


def test_send_too_large_is_413_and_the_session_stays(sockjs):
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    r = post(url + "/xhr_send", '["' + "x" * (1024 * 1024) + '"]')
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    verify_cors(r)
    assert post(url + "/xhr_send", '["small"]').status_code == 204
    assert post(url + "/xhr").text == 'a["small"]\n'
