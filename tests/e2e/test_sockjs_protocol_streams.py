"""The SockJS protocol (0.3.3), continued: the streaming transports, JSONP, the JSON
encoding of every code point the spec lists, closing, HTTP/1.0 and 1.1, heartbeats and the
session timeout; on the protocol suite's test app (see test_sockjs_protocol.py)."""

from __future__ import annotations

import json
import re
import time

import requests
import websocket  # websocket-client

from tests.support.rawhttp import RawHttp
from tests.support.sockjs_protocol import (  # noqa: F401 (fixtures)
    NOT_CACHED,
    Held,
    content_type,
    get,
    post,
    quick,
    session_url,
    sockjs,
    verify_not_cached,
    verify_options,
    ws_url,
)
from tests.support.timing import scaled, wait_until

# ---------------------------------------------------------------- streaming transports


def test_XhrStreaming(sockjs):
    verify_options(sockjs.url + "/echo/abc/abc/xhr_streaming", "OPTIONS, POST")
    url = session_url(sockjs.url + "/echo")
    r = Held(url + "/xhr_streaming")
    assert r.response.status == 200
    assert r.response["content-type"].replace(" ", "") == "application/javascript;charset=UTF-8"
    assert r.response["access-control-allow-origin"] == "*"
    assert r.response["cache-control"] == NOT_CACHED
    assert r.read() == "h" * 2048 + "\n"
    assert r.read() == "o\n"
    assert post(url + "/xhr_send", '["x"]').status_code == 204
    assert r.read() == 'a["x"]\n'
    r.close()


def test_XhrStreaming_response_limit(sockjs):
    url = session_url(sockjs.url + "/echo")
    r = Held(url + "/xhr_streaming")
    assert r.read() and r.read() == "o\n"
    msg = '"' + "x" * 128 + '"'
    for _ in range(31):
        assert post(url + "/xhr_send", "[" + msg + "]").status_code == 204
        assert r.read() == "a[" + msg + "]\n"
    assert r.read() == ""  # 4096 bytes written: the response ends; the session lives on
    r2 = Held(url + "/xhr_streaming")
    assert r2.read().startswith("h")
    assert post(url + "/xhr_send", '["next"]').status_code == 204
    assert r2.read() == 'a["next"]\n'
    r2.close()


def test_EventSource(sockjs):
    url = session_url(sockjs.url + "/echo")
    r = Held(url + "/eventsource", method="GET")
    assert r.response.status == 200
    assert r.response["content-type"].replace(" ", "") == "text/event-stream;charset=UTF-8"
    assert r.response["cache-control"] == NOT_CACHED
    assert r.read() == "\r\n"
    assert r.read() == "data: o\r\n\r\n"
    assert post(url + "/xhr_send", '["x"]').status_code == 204
    assert r.read() == 'data: a["x"]\r\n\r\n'
    assert post(url + "/xhr_send", r'["  \u0000\n\r "]').status_code == 204
    assert r.read() == 'data: a["  \\u0000\\n\\r "]\r\n\r\n'
    r.close()
    url = session_url(sockjs.url + "/echo")
    r = Held(url + "/eventsource", method="GET")
    assert r.read() and r.read() == "data: o\r\n\r\n"
    msg = '"' + "x" * 4096 + '"'
    assert post(url + "/xhr_send", "[" + msg + "]").status_code == 204
    assert r.read() == "data: a[" + msg + "]\r\n\r\n"
    assert r.read() == ""


HTMLFILE_HEAD = r"""
<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>
""".strip()


def test_HtmlFile(sockjs):
    url = session_url(sockjs.url + "/echo")
    r = Held(url + "/htmlfile?c=%63allback", method="GET")
    assert r.response.status == 200
    assert r.response["content-type"].replace(" ", "") == "text/html;charset=UTF-8"
    assert r.response["cache-control"] == NOT_CACHED
    head = r.read()
    assert head.strip() == HTMLFILE_HEAD % "callback" and len(head) > 1024
    assert r.read() == '<script>\np("o");\n</script>\r\n'
    assert post(url + "/xhr_send", '["x"]').status_code == 204
    assert r.read() == '<script>\np("a[\\"x\\"]");\n</script>\r\n'
    r.close()
    r = get(sockjs.url + "/echo/a/a/htmlfile")
    assert r.status_code == 500 and '"callback" parameter required' in r.text
    # A callback is written into a page of ours: only a plain name is taken.
    for hostile in ("alert(1)//", "a;b", "</script>", "x y"):
        r = requests.get(sockjs.url + "/echo/a/b/htmlfile", params={"c": hostile}, timeout=scaled(5))
        assert r.status_code == 500 and "callback" in r.text and hostile not in r.text
    url = session_url(sockjs.url + "/echo")
    r = Held(url + "/htmlfile?c=callback", method="GET")
    assert r.read() and r.read() == '<script>\np("o");\n</script>\r\n'
    msg = "x" * 4096
    assert post(url + "/xhr_send", '["' + msg + '"]').status_code == 204
    assert r.read() == '<script>\np("a[\\"' + msg + '\\"]");\n</script>\r\n'
    assert r.read() == ""


def test_JsonPolling(sockjs):
    url = session_url(sockjs.url + "/echo")
    r = get(url + "/jsonp?c=%63allback")
    assert r.status_code == 200 and content_type(r) == "application/javascript;charset=UTF-8"
    verify_not_cached(r)
    assert r.text == 'callback("o");\r\n'
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = post(url + "/jsonp_send", "d=%5B%22x%22%5D", headers=form)
    assert (r.status_code, r.text) == (200, "ok") and content_type(r) == "text/plain;charset=UTF-8"
    verify_not_cached(r)
    assert get(url + "/jsonp?c=%63allback").text == 'callback("a[\\"x\\"]");\r\n'
    r = get(sockjs.url + "/echo/a/a/jsonp")
    assert r.status_code == 500 and '"callback" parameter required' in r.text
    # Invalid JSON, missing payloads: 500, the session intact.
    url = session_url(sockjs.url + "/echo")
    assert get(url + "/jsonp?c=x").text == 'x("o");\r\n'
    r = post(url + "/jsonp_send", "d=%5B%22x", headers=form)
    assert r.status_code == 500 and "Broken JSON encoding." in r.text
    for data in ("", "d=", "p=p"):
        r = post(url + "/jsonp_send", data, headers=form)
        assert r.status_code == 500 and "Payload expected." in r.text
    assert post(url + "/jsonp_send", "d=%5B%22b%22%5D", headers=form).text == "ok"
    assert get(url + "/jsonp?c=x").text == 'x("a[\\"b\\"]");\r\n'
    # Content types: a form, or the raw body.
    url = session_url(sockjs.url + "/echo")
    assert get(url + "/jsonp?c=x").text == 'x("o");\r\n'
    assert post(url + "/jsonp_send", "d=%5B%22abc%22%5D", headers=form).text == "ok"
    assert post(url + "/jsonp_send", '["%61bc"]', headers={"Content-Type": "text/plain"}).text == "ok"
    assert get(url + "/jsonp?c=x").text == 'x("a[\\"abc\\",\\"%61bc\\"]");\r\n'
    # Close.
    url = session_url(sockjs.url + "/close")
    assert get(url + "/jsonp?c=x").text == 'x("o");\r\n'
    assert get(url + "/jsonp?c=x").text == 'x("c[3000,\\"Go away!\\"]");\r\n'
    assert get(url + "/jsonp?c=x").text == 'x("c[3000,\\"Go away!\\"]");\r\n'


def test_JsessionidCookie(sockjs):
    base = sockjs.url + "/cookie_needed_echo"
    r = get(base + "/info")
    assert "Set-Cookie" not in r.headers and r.json()["cookie_needed"] is True

    def verify_cookie(r, value="dummy"):
        parts = r.headers["Set-Cookie"].split(";")
        assert parts[0].strip() == f"JSESSIONID={value}" and parts[1].strip().lower() == "path=/"

    r = post(session_url(base) + "/xhr")
    assert r.text == "o\n"
    verify_cookie(r)
    r = post(session_url(base) + "/xhr", headers={"Cookie": "JSESSIONID=abcdef"})
    verify_cookie(r, "abcdef")
    for transport, method in (("xhr_streaming", "POST"), ("eventsource", "GET"), ("htmlfile?c=%63allback", "GET")):
        held = Held(session_url(base) + "/" + transport, method=method)
        assert held.response.status == 200
        assert held.response["set-cookie"].split(";")[0] == "JSESSIONID=dummy"
        held.close()
    url = session_url(base)
    r = get(url + "/jsonp?c=%63allback")
    verify_cookie(r)
    r = post(url + "/jsonp_send", "d=%5B%22x%22%5D", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.text == "ok"
    verify_cookie(r)


# ---------------------------------------------------------------- JSON encoding

ESCAPABLE_BY_CLIENT = re.compile(
    '[\\\\"\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0604\u070f\u17b4\u17b5\u2000-\u20ff\ufeff\ufff0-\uffff'
    "\u0300-\u0333\u033d-\u0346\u034a-\u034c\u0350-\u0352\u0357-\u0358\u035c-\u0362\u0374\u037e\u0387"
    "\u0591-\u05af\u05c4\u0610-\u0617\u0653-\u0654\u0657-\u065b\u065d-\u065e\u06df-\u06e2\u06eb-\u06ec"
    "\u0730\u0732-\u0733\u0735-\u0736\u073a\u073d\u073f-\u0741\u0743\u0745\u0747\u07eb-\u07f1\u0951"
    "\u0958-\u095f\u09dc-\u09dd\u09df\u0a33\u0a36\u0a59-\u0a5b\u0a5e\u0b5c-\u0b5d\u0e38-\u0e39\u0f43"
    "\u0f4d\u0f52\u0f57\u0f5c\u0f69\u0f72-\u0f76\u0f78\u0f80-\u0f83\u0f93\u0f9d\u0fa2\u0fa7\u0fac\u0fb9"
    "\u1939-\u193a\u1a17\u1b6b\u1cda-\u1cdb\u1dc0-\u1dcf\u1dfc\u1dfe\u1f71\u1f73\u1f75\u1f77\u1f79\u1f7b"
    "\u1f7d\u1fbb\u1fbe\u1fc9\u1fcb\u1fd3\u1fdb\u1fe3\u1feb\u1fee-\u1fef\u1ff9\u1ffb\u1ffd\u2000-\u2001"
    "\u20d0-\u20d1\u20d4-\u20d7\u20e7-\u20e9\u2126\u212a-\u212b\u2329-\u232a\u2adc\u302b-\u302c"
    "\uaab2-\uaab3\uf900-\ufa0d\ufa10\ufa12\ufa15-\ufa1e\ufa20\ufa22\ufa25-\ufa26\ufa2a-\ufa2d"
    "\ufa30-\ufa6d\ufa70-\ufad9\ufb1d\ufb1f\ufb2a-\ufb36\ufb38-\ufb3c\ufb3e\ufb40-\ufb41\ufb43-\ufb44"
    "\ufb46-\ufb4e]"
)
ESCAPABLE_BY_SERVER = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff]")
CLIENT_KILLER = '"' + "".join(r"\u%04x" % i for i in range(65536) if ESCAPABLE_BY_CLIENT.match(chr(i))) + '"'
SERVER_KILLER = '"' + "".join(r"\u%04x" % i for i in range(255, 65536) if ESCAPABLE_BY_SERVER.match(chr(i))) + '"'


def test_JSONEncoding_server_encodes(sockjs):
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    assert post(url + "/xhr_send", '["' + json.loads(SERVER_KILLER) + '"]').status_code == 204
    r = post(url + "/xhr")
    assert r.text.strip()[2:-1] == SERVER_KILLER  # every one of them escaped, as \uXXXX


def test_JSONEncoding_server_decodes(sockjs):
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    assert post(url + "/xhr_send", "[" + CLIENT_KILLER + "]").status_code == 204
    r = post(url + "/xhr")
    assert json.loads(r.text.strip()[2:-1]) == json.loads(CLIENT_KILLER)


def test_JSONEncoding_surrogates_and_astral(sockjs):
    # A lone surrogate (a JavaScript string may hold one) reaches the application as U+FFFD,
    # as WebSocket.send would deliver it, so STOMP and /ws see the same text on every
    # transport; an astral character and Korean go back as themselves, in UTF-8.
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    assert post(url + "/xhr_send", r'["\ud800 \udfff 😀 한국어"]').status_code == 204
    assert post(url + "/xhr").content == 'a["\\ufffd \\ufffd 😀 한국어"]\n'.encode("utf-8")


# ---------------------------------------------------------------- closing


def test_HandlingClose_close_frame(sockjs):
    url = session_url(sockjs.url + "/close")
    r1 = Held(url + "/xhr_streaming")
    r1.read()
    assert r1.read() == "o\n"
    assert r1.read() == 'c[3000,"Go away!"]\n'
    r2 = Held(url + "/xhr_streaming")
    r2.read()
    assert r2.read() == 'c[3000,"Go away!"]\n'
    assert r1.read() == "" and r2.read() == ""


def test_HandlingClose_close_request(sockjs):
    url = session_url(sockjs.url + "/echo")
    r1 = Held(url + "/xhr_streaming")
    r1.read()
    assert r1.read() == "o\n"
    r2 = Held(url + "/xhr_streaming")
    r2.read()
    assert r2.read() == 'c[2010,"Another connection still open"]\n'
    assert r2.read() == ""
    r1.close()
    # The aborted receiver interrupted the session (noticed within a second): the next one is told so.
    time.sleep(scaled(1.5))
    r3 = Held(url + "/xhr_streaming")
    r3.read()
    assert r3.read() in ("o\n", 'c[1002,"Connection interrupted"]\n')
    r3.close()


def test_HandlingClose_abort_xhr_polling(sockjs):
    url = session_url(sockjs.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    r1 = Held(url + "/xhr", answer_now=False)
    time.sleep(scaled(0.2))
    assert post(url + "/xhr").text == 'c[2010,"Another connection still open"]\n'
    r1.close()
    time.sleep(scaled(1.5))  # the parked poll checks its client once a second
    assert post(url + "/xhr").text in ("o\n", 'c[1002,"Connection interrupted"]\n')


# ---------------------------------------------------------------- HTTP/1.0 and 1.1


def test_Http10(sockjs):
    c = RawHttp(sockjs.url)
    r = c.request("GET", sockjs.url + "/echo", http="1.0", headers={"Connection": "Keep-Alive"})
    assert r.status == 200 and r.http in ("1.0", "1.1") and not r["transfer-encoding"]
    if r["content-length"]:
        assert int(r["content-length"]) == 19 and c.read_exact(19) == b"Welcome to SockJS!\n"
    else:
        assert r["connection"].lower() == "close" and r.read_body() == "Welcome to SockJS!\n"
    c.close()
    url = session_url(sockjs.url + "/close")
    c = RawHttp(url)
    r = c.request("POST", url + "/xhr_streaming", http="1.0", headers={"Connection": "Keep-Alive"})
    assert r.status == 200 and not r["transfer-encoding"] and not r["content-length"]
    body = r.read_body()  # until the server closes the connection
    assert body == "h" * 2048 + "\n" + "o\n" + 'c[3000,"Go away!"]\n'
    c.close()


def test_Http11(sockjs):
    c = RawHttp(sockjs.url)
    r = c.request("GET", sockjs.url + "/echo", http="1.1", headers={"Connection": "Keep-Alive"})
    assert (r["connection"] or "").lower() in ("keep-alive", "")
    assert r.read_body() == "Welcome to SockJS!\n"
    r = c.request("GET", sockjs.url + "/echo", http="1.1", headers={"Connection": "Keep-Alive"})
    assert r.status == 200 and r.read_body() == "Welcome to SockJS!\n"  # the same connection
    c.close()
    url = session_url(sockjs.url + "/close")
    c = RawHttp(url)
    r = c.request("POST", url + "/xhr_streaming", http="1.1", headers={"Connection": "Keep-Alive"})
    assert r.status == 200 and r["transfer-encoding"].lower() == "chunked" and not r["content-length"]
    assert r.read_chunk()[0] == "h"
    assert r.read_chunk() == "o\n"
    assert r.read_chunk() == 'c[3000,"Go away!"]\n'
    assert r.read_chunk() == ""
    c.close()


# ---------------------------------------------------------------- heartbeats and timeouts


def test_heartbeats_on_streams_polls_and_websockets(quick):
    url = session_url(quick.url + "/echo")
    r = Held(url + "/xhr_streaming")
    assert r.read() and r.read() == "o\n"
    started = time.monotonic()
    assert r.read() == "h\n" and r.read() == "h\n"
    assert time.monotonic() - started >= 0.8  # two 0.5 s silences
    r.close()
    url = session_url(quick.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    assert post(url + "/xhr").text == "h\n"  # a poll with nothing to say answers h after the interval
    ws = websocket.create_connection(ws_url(session_url(quick.url + "/echo")) + "/websocket", timeout=scaled(5))
    assert ws.recv() == "o" and ws.recv() == "h"
    ws.close()


def test_a_session_without_receiver_times_out(quick):
    url = session_url(quick.url + "/echo")
    assert post(url + "/xhr").text == "o\n"
    assert post(url + "/xhr_send", '["a"]').status_code == 204
    wait_until(
        lambda: post(url + "/xhr_send", '["b"]').status_code == 404,
        timeout=5,
        message="the session to time out after its disconnect delay",
    )
    assert post(url + "/xhr").text == "o\n"  # the id now makes a new session


def test_a_receiver_keeps_the_session(quick):
    url = session_url(quick.url + "/echo")
    r = Held(url + "/xhr_streaming")
    assert r.read() and r.read() == "o\n"
    time.sleep(scaled(1.5))  # three disconnect delays, with a receiver the whole time
    assert post(url + "/xhr_send", '["still here"]').status_code == 204
    while (chunk := r.read()) == "h\n":
        pass
    assert chunk == 'a["still here"]\n'
    r.close()
