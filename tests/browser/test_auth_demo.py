"""Access control in Chromium: the index page's demo sign-in and its HttpOnly cookie.

A gunicorn configured as ``make run-auth`` configures it (an HS256 key, demo users alice and
bob, anonymous visitors may read chat and ticks, not post): signing in sets an HttpOnly,
SameSite=Strict cookie that the page's EventSource (and WebSocket) carry; the panel and
the chat pages tell 401 (sign in) from 403 (not allowed). Without a key there is no sign-in
and the pages work as before. The demo endpoint refuses unknown names, other origins, and
does not exist without demo users.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid

import jwt
import pytest
import requests

from tests.browser.helpers import (
    CHAT_PAGES,
    PHONE,
    assert_no_horizontal_scroll,
    ms,
    send_chat,
    unlabelled_controls,
    wait_chat_ready,
    wait_message,
    whoami,
)
from tests.support.servers import Gunicorn
from tests.support.timing import scaled

pytestmark = pytest.mark.browser

SECRET = secrets.token_urlsafe(48)
COOKIE = "switchboard_token"
DEMO_TOKEN_SECONDS = 15 * 60
# As `make run-auth` starts it.
AUTH_ENV = {
    "SWITCHBOARD_AUTH_SECRET": SECRET,
    "SWITCHBOARD_DEMO_USERS": "alice,bob",
    "SWITCHBOARD_ANONYMOUS_SUBSCRIBE": "chat,ticks",
    "SWITCHBOARD_ANONYMOUS_PUBLISH": "",
}
# What Chromium logs for a 401 or 403 the test provokes on purpose (fetch, EventSource).
REFUSALS_IN_CONSOLE = (r"status of 40[13]", r"EventSource's response has")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """One gunicorn with access control on and the demo sign-in, for this module."""
    with Gunicorn(tmp_path_factory.mktemp("auth-server"), env=AUTH_ENV) as server:
        yield server


def mint(sub: str, *, subscribe=(), publish=(), lifetime: float = 300) -> str:
    """A token for ``sub`` signed with the server's key, made here as an application would."""
    now = int(time.time())
    return jwt.encode(
        {
            "sub": sub,
            "iat": now,
            "exp": now + int(lifetime),
            "switchboard": {"subscribe": list(subscribe), "publish": list(publish)},
        },
        SECRET,
        algorithm="HS256",
    )


def open_index(context, server):
    page = context.new_page()
    page.goto(f"{server.url}/")
    page.wait_for_selector("[data-auth-panel][data-ready=true]", timeout=ms(15))
    return page


def sign_in(page, user: str) -> None:
    page.locator(f'[data-sign-in="{user}"]').click()
    page.wait_for_selector(f'[data-auth-panel][data-sub="{user}"]', timeout=ms(10))


def sign_out(page) -> None:
    page.locator("[data-sign-out]").click()
    page.wait_for_selector('[data-auth-panel][data-sub=""] [data-auth-status][data-kind="info"]', timeout=ms(10))


def result(page, topic: str, what: str, expected: str):
    """Wait until the row of ``topic`` shows ``expected`` (allowed, 401, 403) for ``what``
    (``subscribe`` or ``publish-result``); returns the text it shows."""
    selector = f'[data-probe="{topic}"] [data-{what}][data-result="{expected}"]'
    page.wait_for_selector(selector, timeout=ms(10))
    return page.locator(selector).inner_text()


def stream_status(page, path: str) -> int:
    """The status a fetch() from the page gets for a stream (then it lets the stream go)."""
    return page.evaluate(
        """async (path) => {
            const controller = new AbortController();
            const timer = setTimeout(() => controller.abort(), 10000);
            try {
                return (await fetch(path, { signal: controller.signal })).status;
            } finally {
                clearTimeout(timer);
                controller.abort();
            }
        }""",
        path,
    )


def ws_reply(page, op: dict) -> dict:
    """Open a WebSocket from the page to /ws, send ``op`` (with a ref), return its reply."""
    return page.evaluate(
        """(op) => new Promise((resolve, reject) => {
            const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
            const timer = setTimeout(() => { ws.close(); reject(new Error("no reply within 10 s")); }, 10000);
            ws.onopen = () => ws.send(JSON.stringify({ ...op, ref: "probe" }));
            ws.onmessage = (ev) => {
                const message = JSON.parse(ev.data);
                if (message.ref !== "probe") return;
                clearTimeout(timer);
                ws.close();
                resolve(message);
            };
            ws.onclose = (ev) => { clearTimeout(timer); reject(new Error(`closed with ${ev.code} before a reply`)); };
        })""",
        op,
    )


# ------------------------------------------------------------------- the cookie


def test_sign_in_sets_an_httponly_cookie_that_eventsource_carries(auth_server, new_user, console_errors):
    console_errors.allow(*REFUSALS_IN_CONSOLE)
    context = new_user()
    page = open_index(context, auth_server)
    assert "Not signed in" in page.locator("[data-auth-status]").inner_text()
    assert COOKIE not in {cookie["name"] for cookie in context.cookies()}

    sign_in(page, "alice")
    cookie = next(cookie for cookie in context.cookies() if cookie["name"] == COOKIE)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert 0 < cookie["expires"] - time.time() <= DEMO_TOKEN_SECONDS + 5, "the cookie lives no longer than the token"
    assert COOKIE not in page.evaluate("document.cookie"), "scripts cannot read an HttpOnly cookie"
    claims = jwt.decode(cookie["value"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == DEMO_TOKEN_SECONDS
    assert page.locator('[data-fact="sub"]').inner_text() == "alice"
    assert page.locator('[data-fact="via"]').inner_text() == "the HttpOnly cookie"
    assert whoami(page) == "alice", "the header names the signed-in sender"

    # The page's EventSources carry the cookie: alice follows her topic and the members
    # room; bob's topic is refused with 403 (signed in, not allowed).
    assert result(page, "user.alice", "subscribe", "allowed") == "allowed: listening"
    assert result(page, "room.members", "subscribe", "allowed") == "allowed: listening"
    refused = result(page, "user.bob", "subscribe", "403")
    assert "403 (not allowed)" in refused and "user.bob" in refused
    assert stream_status(page, "/api/topics/user.bob/stream") == 403

    # What an application publishes to alice with a Bearer token reaches the page's stream.
    text = f"for alice only {uuid.uuid4().hex[:8]}"
    with requests.Session() as http:
        res = http.post(
            f"{auth_server.url}/api/topics/user.alice/events",
            json={"data": {"text": text}},
            headers={"Authorization": f"Bearer {mint('alice', publish=['user.{sub}'])}"},
            timeout=scaled(10),
        )
    assert res.status_code == 201, res.text
    assert res.json()["sender"] == "alice"
    page.locator('[data-probe="user.alice"] [data-last-event]', has_text=text).wait_for(timeout=ms(10))

    # Signing out clears the cookie: the same streams are now refused with 401 (sign in).
    sign_out(page)
    assert COOKIE not in {cookie["name"] for cookie in context.cookies()}
    assert "401 (sign in)" in result(page, "user.alice", "subscribe", "401")
    assert stream_status(page, "/api/topics/user.alice/stream") == 401
    assert page.evaluate("sessionStorage.length") == 0, "the demo token is forgotten on sign-out"


def test_websocket_carries_the_cookie(auth_server, new_user, console_errors):
    console_errors.allow(*REFUSALS_IN_CONSOLE)
    alice = open_index(new_user(), auth_server)
    sign_in(alice, "alice")
    assert ws_reply(alice, {"op": "subscribe", "topic": "user.alice"})["op"] == "ok"
    refused = ws_reply(alice, {"op": "subscribe", "topic": "user.bob"})
    assert (refused["op"], refused.get("error")) == ("error", "forbidden")
    anonymous = open_index(new_user(), auth_server)
    refused = ws_reply(anonymous, {"op": "subscribe", "topic": "user.alice"})
    assert (refused["op"], refused.get("error")) == ("error", "unauthorized")


# ------------------------------------------------------------------- 401 vs 403


def test_the_panel_tells_401_from_403(auth_server, new_user, console_errors, screenshot):
    console_errors.allow(*REFUSALS_IN_CONSOLE)
    # An anonymous visitor: every demo topic wants a sign-in (401), to follow and to publish.
    visitor = open_index(new_user(), auth_server)
    for topic in ("room.members", "user.alice", "user.bob"):
        shown = result(visitor, topic, "subscribe", "401")
        assert "401 (sign in)" in shown and "sign in" in shown.split(":", 1)[1], shown
    visitor.locator('[data-probe="user.alice"] [data-publish]').click()
    shown = result(visitor, "user.alice", "publish-result", "401")
    assert "401 (sign in)" in shown and "user.alice" in shown

    # bob is known, and not a member: 403 on the members room and on alice's topic.
    bob = open_index(new_user(), auth_server)
    sign_in(bob, "bob")
    for topic in ("room.members", "user.alice"):
        assert "403 (not allowed)" in result(bob, topic, "subscribe", "403")
    bob.locator('[data-probe="room.members"] [data-publish]').click()
    shown = result(bob, "room.members", "publish-result", "403")
    assert "403 (not allowed)" in shown and "room.members" in shown
    # His own topic he may follow and post to, and his post arrives on his stream.
    result(bob, "user.bob", "subscribe", "allowed")
    bob.locator('[data-probe="user.bob"] [data-publish]').click()
    assert result(bob, "user.bob", "publish-result", "allowed").startswith("allowed: published #")
    bob.locator('[data-probe="user.bob"] [data-last-event]', has_text="bob: hello user.bob").wait_for(timeout=ms(10))
    bob.set_viewport_size(PHONE)  # the panel, full of answers, at 375 px
    assert_no_horizontal_scroll(bob)
    assert not unlabelled_controls(bob)
    screenshot(bob, "index-signed-in-as-bob-375px")

    # An expired token in the cookie is a 401 too, and the panel says what to do.
    late = new_user()
    late.add_cookies(
        [
            {
                "name": COOKIE,
                "value": mint("alice", subscribe=["**"], lifetime=-60),
                "url": auth_server.url,
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )
    page = open_index(late, auth_server)
    shown = page.locator('[data-auth-status][data-kind="error"]').inner_text()
    assert "401 (sign in)" in shown and "expired" in shown and "sign out" in shown
    assert "expired" in result(page, "user.alice", "subscribe", "401")


@pytest.mark.parametrize(
    "slug",
    [
        *(slug for slug in CHAT_PAGES if slug not in ("websocket", "stomp")),
        "websocket",
        "stomp",
    ],
)
def test_chat_pages_say_why_a_post_is_refused(slug, auth_server, new_user, console_errors):
    console_errors.allow(*REFUSALS_IN_CONSOLE)
    page = new_user().new_page()
    page.goto(f"{auth_server.url}/{slug}")
    wait_chat_ready(page)  # anonymous visitors may read the chat
    send_chat(page, f"anonymous on {slug}")
    notice = page.locator("li.notice", has_text="Not sent: Refused with 401 (sign in)")
    notice.wait_for(timeout=ms(15))
    assert "chat" in notice.inner_text().split("(sign in)", 1)[1], "it names the topic or destination"
    assert page.locator("#chat-input").input_value() == f"anonymous on {slug}", "the text is kept to send again"
    assert page.locator("li.message", has_text=f"anonymous on {slug}").count() == 0


def test_socket_pages_explain_the_documented_refusals(live_server, new_user, console_errors):
    """/ws and STOMP refusals, as their servers document them, played by a mock socket
    (Playwright's routeWebSocket), so the pages are checked before those servers refuse."""
    console_errors.allow_network()
    page = new_user().new_page()
    connections = []

    def fake_ws(ws):  # 1st socket: subscribe refused (401); then subscribe ok, publish refused (403)
        connections.append(ws)
        number = len(connections)

        def on_message(text):
            op = json.loads(text)
            if op["op"] == "subscribe" and number == 1:
                ws.send(
                    json.dumps(
                        {
                            "op": "error",
                            "ref": op["ref"],
                            "error": "unauthorized",
                            "message": "sign in to subscribe to topic 'chat': anonymous clients may not",
                        }
                    )
                )
            elif op["op"] == "subscribe":
                ws.send(json.dumps({"op": "ok", "ref": op["ref"], "cursor": ""}))
            elif op["op"] == "publish":
                ws.send(
                    json.dumps(
                        {
                            "op": "error",
                            "ref": op["ref"],
                            "error": "forbidden",
                            "message": "you may not publish to topic 'chat'",
                        }
                    )
                )

        ws.on_message(on_message)

    page.route_web_socket("**/ws", fake_ws)
    page.goto(f"{live_server.url}/websocket")
    page.locator(".chat [data-status]", has_text="Refused with 401 (sign in): sign in to subscribe").wait_for(
        timeout=ms(10)
    )
    wait_chat_ready(page, timeout=30)  # reconnected after its backoff, subscribed
    send_chat(page, "refused over /ws")
    refused = page.locator(
        "li.notice", has_text="Not sent: Refused with 403 (not allowed): you may not publish to topic 'chat'"
    )
    refused.wait_for(timeout=ms(10))
    assert refused.count() == 1 and page.locator("li.message", has_text="refused over /ws").count() == 0

    def fake_stomp(ws):  # CONNECTED, then an ERROR for the SEND (then the server closes)
        def on_message(text):
            command = text.lstrip("\r\n").split("\n", 1)[0]
            if command in ("CONNECT", "STOMP"):
                ws.send("CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00")
            elif command == "SEND":
                ws.send(
                    "ERROR\nmessage:forbidden: you may not publish to /app/chat\ncontent-type:text/plain\n\nrefused\x00"
                )
                ws.close()

        ws.on_message(on_message)

    stomp = new_user().new_page()
    stomp.route_web_socket("**/stomp", fake_stomp)
    stomp.goto(f"{live_server.url}/stomp")
    wait_chat_ready(stomp)
    send_chat(stomp, "refused over STOMP")
    refused = stomp.locator(
        "li.notice", has_text="Not sent: Refused with 403 (not allowed): forbidden: you may not publish to /app/chat"
    )
    refused.wait_for(timeout=ms(10))
    assert refused.count() == 1 and stomp.locator("li.message", has_text="refused over STOMP").count() == 0


def test_signed_in_alice_chats_and_the_fetch_reader_sends_her_token(auth_server, new_user, console_errors):
    console_errors.allow(*REFUSALS_IN_CONSOLE)  # the index page's rows, before the sign-in
    context = new_user()
    page = open_index(context, auth_server)
    sign_in(page, "alice")
    token = next(cookie["value"] for cookie in context.cookies() if cookie["name"] == COOKIE)

    page.goto(f"{auth_server.url}/sse")
    wait_chat_ready(page)
    assert whoami(page) == "alice"
    text = f"alice on sse {uuid.uuid4().hex[:8]}"
    send_chat(page, text)
    assert wait_message(page, text).locator(".sender").inner_text() == "alice"

    # Same tab: the fetch() reader starts with the demo token, and the server verifies it.
    assert page.locator("#fetch-token").input_value() == token
    assert "alice's demo token" in page.locator("[data-fetch-token-note]").inner_text()
    page.locator("[data-fetch-connect]").click()
    page.locator("[data-fetch-log]", has_text="you are alice (bearer").wait_for(timeout=ms(10))
    page.locator("[data-fetch-disconnect]").click()


# ------------------------------------------------------------------- without a key


def test_without_a_key_there_is_no_sign_in_and_every_page_works(live_server, new_user, console_errors):
    page = new_user().new_page()
    page.goto(f"{live_server.url}/")
    page.wait_for_selector(".cards")
    assert page.locator("[data-auth-panel]").count() == 0
    assert page.locator('script[src*="index-auth"]').count() == 0
    tag = uuid.uuid4().hex[:8]
    for slug in CHAT_PAGES:
        page.goto(f"{live_server.url}/{slug}")
        wait_chat_ready(page)
        send_chat(page, f"open {slug} {tag}")
        wait_message(page, f"open {slug} {tag}")


# ------------------------------------------------------------------- the demo endpoint


def demo_session(server, body, **headers) -> requests.Response:
    with requests.Session() as http:
        return http.post(
            f"{server.url}/api/demo/session",
            data=json.dumps(body),
            headers={"Content-Type": "application/json", **headers},
            timeout=scaled(10),
        )


def test_demo_endpoint_mints_and_refuses(auth_server, live_server):
    res = demo_session(auth_server, {"user": "bob"})
    assert res.status_code == 200, res.text
    assert res.headers["Cache-Control"] == "no-store"
    answer = res.json()
    assert answer["sub"] == "bob" and answer["expires_in"] == DEMO_TOKEN_SECONDS
    claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
    queues = ["queue.jobs", "queue.compare.jobs"]  # the STOMP and compare pages' work queues
    assert claims["switchboard"] == {
        "subscribe": ["chat", "ticks", "user.{sub}", *queues],
        "publish": ["chat", "user.{sub}", *queues],
    }
    set_cookie = res.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}={answer['token']};")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie

    unknown = demo_session(auth_server, {"user": "mallory"})
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unknown_user")
    assert "Set-Cookie" not in unknown.headers
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = demo_session(auth_server, {"user": "alice"}, **headers)
        assert (refused.status_code, refused.json()["error"]) == (403, "cross_origin"), headers
        assert "Set-Cookie" not in refused.headers

    missing = demo_session(live_server, {"user": "alice"})  # no SWITCHBOARD_DEMO_USERS there
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
