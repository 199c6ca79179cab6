"""The SSE page's second reader, @microsoft/fetch-event-source, in Chromium.

It sends the Authorization header that EventSource cannot send, and after a cut connection
it reconnects by itself with the same header and ``Last-Event-ID`` set to the last event it
read, so the events published meanwhile arrive, once each. The requests are read as the
browser sent them (Playwright's request events), not from the page's own log.
"""

from __future__ import annotations

import uuid

import pytest

from tests.browser.helpers import ms, publish, wait_chat_ready

pytestmark = pytest.mark.browser

TOKEN = "token-for-the-fetch-reader"


def test_sends_authorization_and_resumes_with_last_event_id(new_user, proxy, live_server, console_errors):
    page = new_user().new_page()
    sent = []  # the fetch reader's stream requests: the only ones with an Authorization header
    page.on(
        "request",
        lambda request: (
            sent.append(request.headers)
            if "/api/topics/chat/stream" in request.url and "authorization" in request.headers
            else None
        ),
    )
    page.goto(f"{proxy.url}/sse")
    wait_chat_ready(page)
    page.fill("#fetch-token", TOKEN)
    page.click("[data-fetch-connect]")
    log = page.locator("[data-fetch-log]")
    # The server acknowledges the header in its opening comment (access control is off here).
    log.locator("[data-kind=comment]", has_text=f"Bearer token of {len(TOKEN)} characters received").wait_for(
        timeout=ms(10)
    )
    assert sent and sent[0]["authorization"] == f"Bearer {TOKEN}"
    assert "last-event-id" not in sent[0], "a first connection has nothing to resume from"

    tag = uuid.uuid4().hex[:8]
    before = publish(live_server.url, "chat", {"text": f"before the cut {tag}"})
    log.locator("[data-kind=event]", has_text=f"before the cut {tag}").wait_for(timeout=ms(10))

    console_errors.allow_network()
    proxy.down()
    missed = [publish(live_server.url, "chat", {"text": f"while cut {n} {tag}"}) for n in range(3)]
    proxy.wait_refused(1)  # the reader noticed and tried to come back
    proxy.up()
    for event in missed:
        log.locator("[data-kind=event]", has_text=event["data"]["text"]).wait_for(timeout=ms(20))

    resumed = [headers for headers in sent[1:] if headers.get("last-event-id")]
    assert resumed, "the reconnect carried Last-Event-ID"
    assert resumed[-1]["last-event-id"] == before["id"], "it resumes after the last event it read"
    assert all(headers["authorization"] == f"Bearer {TOKEN}" for headers in sent), "every attempt sends the token"
    for event in missed:
        assert log.locator("[data-kind=event]", has_text=event["data"]["text"]).count() == 1, "each missed event once"
    page.click("[data-fetch-disconnect]")
