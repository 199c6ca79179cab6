"""HTTP/2 and TLS through the repo's nginx.conf, with its "#tls " lines on (as `make run-nginx`).

Chromium against the TLS port opens ten SSE streams at once, all on one HTTP/2 connection;
against the plain port (HTTP/1.1) six open and the seventh waits, with no error, until one
closes. The compare page's "ten streams at once" section shows both. WebSockets (/ws, STOMP)
still work through the TLS port: nginx offers no WebSocket over HTTP/2 (RFC 8441), so the
browser upgrades over HTTP/1.1 on a TLS connection of its own.
"""

from __future__ import annotations

import json
import socket
import ssl
import uuid

import pytest
import requests
import websocket

from tests.browser.helpers import PHONE, assert_no_horizontal_scroll, ms, publish
from tests.support.nginx import Nginx
from tests.support.servers import Gunicorn
from tests.support.timing import scaled

pytestmark = [pytest.mark.browser, pytest.mark.nginx]

PANES = ("polling", "longpoll", "sse", "websocket", "stomp")
STREAMS = 10

# Open `count` EventSource streams on the page; each records whether it opened and the
# ids of the events it got. A stream that has not opened is waiting in the browser.
OPEN_STREAMS = """([path, count]) => {
    window.streams = Array.from({length: count}, () => {
        const stream = {source: new EventSource(path), opened: false, events: []};
        stream.source.addEventListener('open', () => { stream.opened = true; });
        stream.source.addEventListener('message', (ev) => stream.events.push(JSON.parse(ev.data).id));
        return stream;
    });
}"""
OPENED = "() => window.streams.filter(s => s.opened).length"
PAGE_PROTOCOL = "() => performance.getEntriesByType('navigation')[0].nextHopProtocol"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    # Behind the proxy: the app sees https (X-Forwarded-Proto), so a page served over TLS
    # passes the same-origin check on publish and the Origin check on WebSockets.
    with Gunicorn(tmp_path_factory.mktemp("http2-app"), env={"SWITCHBOARD_BEHIND_PROXY": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def tls_proxy(app_server):
    """nginx on two free ports: plain HTTP/1.1 at ``.url`` and TLS with HTTP/2 at ``.tls_url``."""
    nginx = Nginx(app_server.port, tls=True).start()
    yield nginx
    nginx.stop()


def stream_path() -> str:
    return f"/api/topics/h2-{uuid.uuid4().hex[:8]}/stream"


def topic_of(path: str) -> str:
    return path.split("/")[3]


def test_tls_port_offers_http2_and_http11(tls_proxy):
    """ALPN: h2 for browsers, http/1.1 for clients without it; the certificate is valid for 127.0.0.1."""
    for offer, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        context = ssl.create_default_context(cafile=str(tls_proxy.certificate))
        context.set_alpn_protocols(offer)
        with socket.create_connection(("127.0.0.1", tls_proxy.tls_port), timeout=scaled(5)) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.selected_alpn_protocol() == chosen
    res = requests.get(tls_proxy.tls_url + "/healthz", verify=str(tls_proxy.certificate), timeout=scaled(5))
    assert res.status_code == 200 and res.json()["status"] == "ok"


def test_ten_sse_streams_open_at_once_over_http2(tls_proxy, new_user, console_errors):
    page = new_user(ignore_https_errors=True).new_page()
    page.goto(tls_proxy.tls_url + "/")
    assert page.evaluate(PAGE_PROTOCOL) == "h2"

    path = stream_path()
    page.evaluate(OPEN_STREAMS, [path, STREAMS])
    page.wait_for_function(f"() => ({OPENED})() === {STREAMS}", timeout=ms(5))
    event = publish(tls_proxy.url, topic_of(path), "to all ten")
    page.wait_for_function("(id) => window.streams.every(s => s.events.includes(id))", arg=event["id"], timeout=ms(5))

    # A stream's Resource Timing entry appears when it ends: close them, then read how they went.
    page.evaluate("() => window.streams.forEach(s => s.source.close())")
    url = tls_proxy.tls_url + path
    protocols = page.wait_for_function(
        """([url, count]) => {
            const entries = performance.getEntriesByName(url);
            return entries.length === count && entries.map(e => e.nextHopProtocol);
        }""",
        arg=[url, STREAMS],
        timeout=ms(5),
    ).json_value()
    assert protocols == ["h2"] * STREAMS


def test_over_http11_the_seventh_stream_waits_until_one_closes(tls_proxy, new_user, console_errors):
    page = new_user().new_page()
    page.goto(tls_proxy.url + "/")  # the index page holds no connection of its own
    assert page.evaluate(PAGE_PROTOCOL) == "http/1.1"

    path = stream_path()
    page.evaluate(OPEN_STREAMS, [path, STREAMS])
    page.wait_for_function(f"() => ({OPENED})() === 6", timeout=ms(5))
    # Synchronise on an event, not a sleep: once the six open streams have it, the other
    # four have still had nothing at all: their requests never left the browser.
    event = publish(tls_proxy.url, topic_of(path), "to the six")
    page.wait_for_function(
        "(id) => window.streams.filter(s => s.events.includes(id)).length === 6", arg=event["id"], timeout=ms(5)
    )
    state = page.evaluate("() => window.streams.map(s => [s.opened, s.events.length, s.source.readyState])")
    assert state == [[True, 1, 1]] * 6 + [[False, 0, 0]] * 4, state  # readyState 0: CONNECTING

    page.evaluate("() => window.streams[0].source.close()")
    page.wait_for_function("() => window.streams[6].opened", timeout=ms(5))  # the 7th gets the freed connection
    assert page.evaluate(OPENED) == 7
    assert page.evaluate("() => window.streams.slice(7).map(s => s.opened)") == [False] * 3
    page.evaluate("() => window.streams.forEach(s => s.source.close())")


def test_websocket_and_stomp_through_the_tls_port(tls_proxy):
    """wss:// round trips, with an https Origin and the certificate verified."""
    wss = tls_proxy.tls_url.replace("https", "wss")
    options = {"sslopt": {"ca_certs": str(tls_proxy.certificate)}, "origin": tls_proxy.tls_url, "timeout": scaled(5)}
    ws = websocket.create_connection(wss + "/ws", **options)
    try:
        ws.send(json.dumps({"op": "subscribe", "topic": "h2-ws", "ref": 1}))
        assert json.loads(ws.recv())["op"] == "ok"
        ws.send(json.dumps({"op": "publish", "topic": "h2-ws", "data": {"text": "over wss"}, "ref": 2}))
        seen = [json.loads(ws.recv()) for _ in range(2)]
        assert {m["op"] for m in seen} == {"ok", "event"}
        assert next(m for m in seen if m["op"] == "event")["data"] == {"text": "over wss"}
    finally:
        ws.close()

    stomp = websocket.create_connection(wss + "/stomp", subprotocols=["v10.stomp", "v12.stomp"], **options)
    try:
        assert stomp.getsubprotocol() == "v12.stomp"
        stomp.send("CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\x00")
        assert stomp.recv().startswith("CONNECTED\n")
        stomp.send("SUBSCRIBE\nid:0\ndestination:/topic/h2-stomp\nreceipt:r1\n\n\x00")
        assert stomp.recv().startswith("RECEIPT\n")
        event = publish(tls_proxy.url, "h2-stomp", "over wss")
        frame = stomp.recv()
        assert frame.startswith("MESSAGE\n") and f"event-id:{event['id']}" in frame
    finally:
        stomp.close()


# ---------------------------------------------------------------- the compare page's section


def open_compare(page, url: str) -> None:
    page.goto(f"{url}/compare")
    page.wait_for_function(
        """() => document.body.dataset.ready === 'true'
              && [...document.querySelectorAll('[data-pane]')].every(p => p.dataset.state === 'open')""",
        timeout=ms(15),
    )


def wait_received(page, n: int, timeout: float = 10) -> None:
    page.wait_for_function(
        """(n) => [...document.querySelectorAll('[data-pane] [data-stat="received"]')]
              .every(dd => dd.dataset.value === String(n))""",
        arg=n,
        timeout=ms(timeout),
    )


def limit_stats(page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-limit-stat]')]
              .map(dd => [dd.dataset.limitStat, dd.textContent]))"""
    )


def test_compare_page_over_http2_opens_all_ten(tls_proxy, new_user, console_errors, screenshot):
    page = new_user(ignore_https_errors=True).new_page()
    open_compare(page, tls_proxy.tls_url)  # the WebSocket and STOMP panes are open: wss works
    page.click("[data-publish-one]")  # a publish over h2 passes the same-origin check
    wait_received(page, 1)
    assert "h2" in page.locator('[data-conn="protocol"]').inner_text()

    page.click("[data-limit-toggle]")
    page.wait_for_function(
        f"() => document.querySelector('[data-limit-stat=open]').textContent === '{STREAMS}'", timeout=ms(5)
    )
    assert limit_stats(page) == {"open": str(STREAMS), "waiting": "0", "protocol": "h2"}
    assert page.locator('.stream-slots li[data-state="open"]').count() == STREAMS
    status = page.locator("[data-limit-status]").inner_text()
    assert status.startswith(f"All {STREAMS} open over h2"), status
    # The meter is redrawn on the page's render tick: wait for the tick that counts the streams.
    page.wait_for_function(
        f"() => Number(document.querySelector('.connections [data-conn=http]').textContent) >= {STREAMS + 2}",
        timeout=ms(5),
    )
    meter = page.locator(".connections p").first.inner_text()
    assert (
        "all on one HTTP/2 connection" in meter
        and int(page.locator('.connections [data-conn="http"]').inner_text()) >= STREAMS + 2
    ), meter
    # The streams are real: an event on their topic reaches all ten.
    publish(tls_proxy.url, "connection-test", "hello, ten")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.stream-slots li')].every(li => li.dataset.events === '1')", timeout=ms(5)
    )
    screenshot(page, "compare-http2-ten-streams")
    page.set_viewport_size(PHONE)
    assert_no_horizontal_scroll(page)  # ten stream boxes fit a phone

    page.click("[data-limit-toggle]")
    assert page.locator("[data-limit-status]").inner_text() == f"Closed the {STREAMS} test streams."
    assert limit_stats(page)["open"] == "0"


def test_compare_page_over_http11_shows_streams_waiting(tls_proxy, new_user, console_errors, screenshot):
    page = new_user().new_page()
    open_compare(page, tls_proxy.url)
    assert page.locator('[data-conn="protocol"]').inner_text() == "http/1.1"

    page.click("[data-limit-toggle]")
    # The panes hold at least two connections (a long poll and an SSE stream), so at most
    # four test streams open; the meter shows all six in use and more requests queued.
    page.wait_for_function(
        """() => document.querySelector('.connections [data-conn="http"]').textContent === '6'
              && Number(document.querySelector('[data-limit-stat=open]').textContent) >= 1""",
        timeout=ms(5),
    )
    # An event on the test topic reaches the open streams; the waiting ones still have nothing.
    publish(tls_proxy.url, "connection-test", "hello, the open ones")
    page.wait_for_function(
        """() => [...document.querySelectorAll('.stream-slots li[data-state=open]')]
              .every(li => li.dataset.events === '1')""",
        timeout=ms(5),
    )
    stats = limit_stats(page)
    open_, waiting = int(stats["open"]), int(stats["waiting"])
    assert open_ + waiting == STREAMS and 1 <= open_ <= 4 and stats["protocol"] == "http/1.1", stats
    waiting_items = page.locator('.stream-slots li[data-state="waiting"]')
    assert waiting_items.count() == waiting
    assert all(item.get_attribute("data-events") == "0" for item in waiting_items.all())
    assert page.locator(".connections [data-conn-queued]").is_visible()
    assert "waiting" in page.locator("[data-limit-status]").inner_text()
    screenshot(page, "compare-http11-seventh-waits")

    # Closing the test streams frees the connections: the panes work again.
    page.click("[data-limit-toggle]")
    page.click("[data-publish-one]")
    wait_received(page, 1, timeout=15)
    assert int(page.locator('.connections [data-conn="http"]').inner_text()) < 6
