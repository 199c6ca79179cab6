"""The five technique pages in Chromium: two users chat, and a cut connection loses nothing.

Both users reach gunicorn through a TCP proxy. Cutting it closes every long poll, stream
and socket the pages hold and refuses reconnects; events published meanwhile (straight to
gunicorn, by a third party) must all appear once the proxy is back, exactly once and in
order, on both pages.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.browser.helpers import (
    CHAT_PAGES,
    message_ids,
    publish,
    send_chat,
    wait_chat_ready,
    wait_message,
    whoami,
)

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("slug", CHAT_PAGES)
def test_two_users_chat_and_resume_after_a_drop(slug, new_user, proxy, live_server, console_errors, screenshot):
    alice, bob = new_user().new_page(), new_user().new_page()
    for page in (alice, bob):
        page.goto(f"{proxy.url}/{slug}")
        wait_chat_ready(page)
    names = whoami(alice), whoami(bob)
    assert names[0] != names[1], "two browser contexts, two senders"

    tag = uuid.uuid4().hex[:8]
    for sender, name in ((alice, names[0]), (bob, names[1])):
        text = f"{slug} hello from {name} {tag}"
        send_chat(sender, text)
        for page in (alice, bob):
            item = wait_message(page, text)
            assert item.locator(".sender").inner_text() == name

    # The server side goes away: every connection closes, reconnects are refused.
    console_errors.allow_network()
    proxy.down()
    with requests.Session() as third_party:
        published = [
            publish(live_server.url, "chat", {"text": f"{slug} while away {n} {tag}"}, third_party) for n in range(3)
        ]
    proxy.wait_refused(2)  # the pages noticed and tried to come back
    proxy.up()

    for page in (alice, bob):
        for event in published:
            wait_message(page, event["data"]["text"], timeout=20)
        ids = message_ids(page)
        missed = [event["id"] for event in published]
        assert [i for i in ids if i in missed] == missed, "missed events shown once each, in order"
        assert len(ids) == len(set(ids)), "no message shown twice"

    # And live delivery works again after the reconnect.
    text = f"{slug} back again {tag}"
    send_chat(bob, text)
    for page in (alice, bob):
        assert wait_message(page, text).locator(".sender").inner_text() == names[1]
    screenshot(alice, f"{slug}-after-drop")
