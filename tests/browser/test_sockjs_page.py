"""The /sockjs page in real Chromium: the seed's client (SockJS + stomp.js 2.3.3 on
/websocket/stomp) forced onto each sockjs-client transport, chatting with the other pages,
straight to gunicorn and through the repo's nginx.conf."""

from __future__ import annotations

import pytest

from tests.browser.helpers import ms, publish, send_chat, wait_chat_ready, wait_message
from tests.support.nginx import Nginx
from tests.support.servers import Gunicorn

pytestmark = pytest.mark.browser

# Every transport sockjs-client 1.6 has; the iframe ones run inside a hidden same-origin iframe.
TRANSPORTS = (
    "websocket",
    "xhr-streaming",
    "eventsource",
    "iframe-eventsource",
    "htmlfile",
    "iframe-htmlfile",
    "xhr-polling",
    "iframe-xhr-polling",
    "jsonp-polling",
)


def open_seed_page(context, base: str, transport: str):
    page = context.new_page()
    page.goto(f"{base}/sockjs?transport={transport}")
    page.wait_for_function("() => document.querySelector('[data-status]').dataset.kind === 'ok'", timeout=ms(20))
    return page


def seed_line(page, text: str):
    item = page.locator("#message-container li", has_text=text)
    item.first.wait_for(timeout=ms(15))
    assert item.count() == 1, f"{text!r} shown {item.count()} times"
    return item.first.inner_text()


def type_in_seed_page(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send-message-button")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_seed_page_chats_over_each_transport(live_server, new_user, transport):
    page = open_seed_page(new_user(), live_server.url, transport)
    assert page.locator("[data-transport]").inner_text() == transport
    sender = page.evaluate("document.body.dataset.sender")
    type_in_seed_page(page, f"typed over {transport}")
    assert seed_line(page, f"typed over {transport}") == f"{sender} >> typed over {transport}"
    event = publish(live_server.url, "chat", {"text": f"from elsewhere to {transport}"})
    assert seed_line(page, f"from elsewhere to {transport}") == f"{event['sender']} >> from elsewhere to {transport}"
    counters = page.evaluate("({...window.SockJSMeter})")
    assert counters["requests"] >= 1 and counters["bytesIn"] > 0
    if not transport.startswith("iframe-"):  # the iframe's own requests are not visible to the page
        assert counters["bytesOut"] > 0 or transport in ("htmlfile", "jsonp-polling")


def test_the_seed_page_and_the_other_pages_see_each_other(live_server, new_user):
    seed = open_seed_page(new_user(), live_server.url, "xhr-streaming")
    others = {}
    for slug in ("websocket", "sse", "stomp"):
        page = new_user().new_page()
        page.goto(f"{live_server.url}/{slug}")
        wait_chat_ready(page)
        others[slug] = page
    seed_sender = seed.evaluate("document.body.dataset.sender")
    type_in_seed_page(seed, "hello from the seed page")
    for slug, page in others.items():
        item = wait_message(page, "hello from the seed page", timeout=15)
        assert seed_sender in item.inner_text(), slug
    for slug, page in others.items():
        send_chat(page, f"hello from the {slug} page")
        sender = page.evaluate("document.body.dataset.sender")
        assert seed_line(seed, f"hello from the {slug} page") == f"{sender} >> hello from the {slug} page"


def test_the_picker_reconnects_on_the_chosen_transport(live_server, new_user):
    page = open_seed_page(new_user(), live_server.url, "websocket")
    page.select_option("#transport", "xhr-polling")
    page.wait_for_function(
        "() => document.querySelector('[data-transport]').textContent === 'xhr-polling'", timeout=ms(15)
    )
    page.wait_for_function("() => document.querySelector('[data-status]').dataset.kind === 'ok'", timeout=ms(15))
    assert page.url.endswith("/sockjs?transport=xhr-polling")
    type_in_seed_page(page, "after switching")
    seed_line(page, "after switching")
    assert int(page.locator('[data-counter="requests"]').inner_text()) >= 3  # info, polls, a send


@pytest.fixture(scope="module")
def behind_nginx(tmp_path_factory):
    """nginx.conf in front of its own gunicorn (which trusts the proxy's forwarded headers)."""
    with Gunicorn(tmp_path_factory.mktemp("sockjs-page-nginx"), env={"SWITCHBOARD_BEHIND_PROXY": "1"}) as server:
        nginx = Nginx(server.port).start()
        yield nginx
        nginx.stop()


@pytest.mark.nginx
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_seed_page_chats_through_nginx_over_each_transport(behind_nginx, new_user, transport):
    seed = open_seed_page(new_user(), behind_nginx.url, transport)
    assert seed.locator("[data-transport]").inner_text() == transport
    sse = new_user().new_page()
    sse.goto(f"{behind_nginx.url}/sse")
    wait_chat_ready(sse)
    type_in_seed_page(seed, f"seed via nginx over {transport}")
    assert (
        seed.evaluate("document.body.dataset.sender")
        in wait_message(sse, f"seed via nginx over {transport}", timeout=15).inner_text()
    )
    send_chat(sse, f"sse via nginx to {transport}")
    sender = sse.evaluate("document.body.dataset.sender")
    assert seed_line(seed, f"sse via nginx to {transport}") == f"{sender} >> sse via nginx to {transport}"
