"""Korean and English: the catalog, and every page in Chromium in both languages.

The catalog tests need no browser: every msgid has a Korean translation (no fuzzy entry, the
same placeholders and markup hooks), the catalog holds exactly what the sources mark, the
committed .mo says what the .po says, and the JavaScript uses only msgids from the one list
(app/js_messages.py).

The browser tests open every page in a Chromium started with ``--lang=ko`` (and a context
whose Accept-Language is Korean), let the page's JavaScript run and show its statuses (a chat
message sent, a connection dropped and resumed, the fetch-event-source reader connected, the
compare page's ten test streams opened and closed, the proxy doctor's checks run), and
then read every visible text and every title, aria-label and placeholder: no English word may
be left outside code (``code``, ``kbd``, ``samp``), text marked ``translate="no"`` (names,
ids and what the server or the wire wrote), and an allow-list of protocol and code names.
English is the default, and the switch on every page overrides Accept-Language for good.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from app.i18n import safe_next
from app.js_messages import JS_MESSAGES
from tests.browser.helpers import (
    CHAT_PAGES,
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    assert_no_horizontal_scroll,
    ms,
    publish,
    send_chat,
    wait_chat_ready,
    wait_message,
)
from tests.support.nginx import Nginx
from tests.support.servers import Gunicorn
from tests.support.timing import scaled

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PO = ROOT / "translations" / "ko" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")
PAGES = ("/", *(f"/{slug}" for slug in CHAT_PAGES), "/compare", "/doctor", "/sockjs")
KOREAN = {"locale": "ko-KR"}  # Playwright sends Accept-Language: ko-KR

# Names that stay as they are in Korean text: protocols, headers, APIs, products, code.
ALLOWED = {
    # protocols, formats and their parts
    "HTTP",
    "HTTPS",
    "TCP",
    "JSON",
    "SSE",
    "STOMP",
    "WebSocket",
    "WebSockets",
    "EventSource",
    "SockJS",
    "Server-Sent",
    "Events",
    "GET",
    "POST",
    "URL",
    "API",
    "EOL",
    "NUL",
    "ACK",
    "ID",
    "id",
    "Last-Event-ID",
    "Authorization",
    "Bearer",
    "Connection",
    "Upgrade",
    "Origin",
    "HttpOnly",
    "Not",
    "Modified",
    "Switching",
    "Protocols",
    "Service",
    "Unavailable",
    "Created",
    "CONNECT",
    "CONNECTED",
    "SUBSCRIBE",
    "SEND",
    "MESSAGE",
    "RECEIPT",
    "ERROR",
    "DISCONNECT",
    "X-Accel-Buffering",
    "retry",
    "ms",
    "KB",
    "MB",
    "B",
    # browser and library APIs, tools, products
    "fetch",
    "fetch-event-source",
    "setTimeout",
    "setInterval",
    "onmessage",
    "addEventListener",
    "sessionStorage",
    "document",
    "cookie",
    "Resource",
    "Timing",
    "DeferredResult",
    "Spring",
    "setAllowedOrigins",
    "EnableWebSocketMessageBroker",
    "stompjs",
    "stomp",
    "py",
    "greenlet",
    "nginx",
    "Redis",
    "Chrome",
    "Microsoft",
    "Switchboard",
    "Can",
    "I",
    "use",
    "English",
    "upstream",
    "proxy_http_version",
    "off",
    "no",
    "close",
    "upgrade",
    "ping",
    "Enter",
    # the proxy doctor's: headers, nginx directives, time sync, CI
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "location",
    "keepalive",
    "NTP",
    "chrony",
    "systemd-timesyncd",
    "CI",
    # SockJS: its transports as sockjs-client names them, the iframe and JSONP techniques, its /info request
    "websocket",
    "xhr-streaming",
    "xhr-polling",
    "eventsource",
    "htmlfile",
    "jsonp-polling",
    "iframe-eventsource",
    "iframe-htmlfile",
    "iframe-xhr-polling",
    "iframe",
    "JSONP",
    "info",
    # the demo's topic names
    "chat",
    "compare",
    "ticks",
}
# A Latin word: letters, maybe joined by hyphens or apostrophes ("Last-Event-ID", "don't").
WORD = re.compile(r"^[A-Za-z]+(?:[-'’][A-Za-z]+)*$")
# A token with one of these in it is code, not a word: a path, a URL, a parameter (/healthz,
# wss://..., since=..., user.<name>, @stomp/stompjs).
CODE_CHARS = re.compile(r"[=/@_{}<>\[\]]|\w\.\w")
EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")

# Runs in the page: every visible text outside code and translate="no", the attributes a user
# meets (title, aria-label, placeholder, alt), and the document's title.
COLLECT_TEXT = """() => {
    const skip = (el) => el.closest('script, style, code, kbd, samp, [translate="no"], [hidden]')
        || (el.closest('[lang]') && el.closest('[lang]').lang !== document.documentElement.lang);
    const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const found = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const el = node.parentElement;
        if (!node.textContent.trim() || skip(el) || !visible(el)) continue;
        found.push({ where: el.tagName.toLowerCase(), text: node.textContent });
    }
    for (const el of document.body.querySelectorAll('[title], [aria-label], [placeholder], [alt]')) {
        if (skip(el)) continue;
        for (const name of ['title', 'aria-label', 'placeholder', 'alt']) {
            const value = el.getAttribute(name);
            if (value) found.push({ where: `${el.tagName.toLowerCase()}[${name}]`, text: value });
        }
    }
    found.push({ where: 'title', text: document.title });
    return found;
}"""


def english_words(texts: list[dict]) -> list[str]:
    """Each Latin word not in the allow-list, with where it was ("p: ... word ...")."""
    allowed = {word.lower() for word in ALLOWED}
    flagged = []
    for item in texts:
        for token in item["text"].split():
            if CODE_CHARS.search(token):
                continue
            word = EDGE.sub("", token)
            if len(word) >= 2 and WORD.match(word) and word.lower() not in allowed:
                flagged.append(f"{item['where']}: {word!r} in {item['text'].strip()[:120]!r}")
    return flagged


def overflowing(page) -> list[str]:
    """The innermost elements that reach past the right edge of the window (with their text)."""
    return page.evaluate("""() => [...document.body.querySelectorAll('*')]
        .filter(el => el.getBoundingClientRect().right > window.innerWidth + 0.5
                      && ![...el.children].some(c => c.getBoundingClientRect().right > window.innerWidth + 0.5))
        .map(el => `${el.tagName.toLowerCase()}.${el.className}: ${el.textContent.trim().slice(0, 80)}`)""")


def assert_no_english(page, context: str) -> None:
    assert page.evaluate("document.documentElement.lang") == "ko", context
    flagged = english_words(page.evaluate(COLLECT_TEXT))
    assert not flagged, f"English on {context}:\n" + "\n".join(flagged)


# ----------------------------------------------------------------- the catalog (no browser)


def catalog():
    with PO.open("rb") as f:
        return read_po(f, locale="ko")


def placeholders(text: str) -> list[str]:
    """{name} and %(name)s placeholders, and the tags and data-* hooks the pages rely on."""
    found = re.findall(r"\{\w+\}|%\(\w+\)s", text)
    found += re.findall(r"</?[a-z]+\b|\bdata-[a-z-]+(?:=\"[^\"]*\")?|\bfor=\"[^\"]*\"|\btranslate=\"no\"", text)
    return sorted(found)


def test_every_msgid_has_a_korean_translation():
    entries = [m for m in catalog() if m.id]
    assert len(entries) > 300, "the catalog looks empty"
    problems = []
    for m in entries:
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        strings = m.string if isinstance(m.string, tuple) else (m.string,)
        if m.fuzzy:
            problems.append(f"fuzzy: {ids[0]!r}")
        if not all(s.strip() for s in strings):
            problems.append(f"untranslated: {ids[0]!r}")
            continue
        for s in strings:
            if placeholders(s) != placeholders(ids[0]):
                problems.append(f"placeholders or markup differ: {ids[0]!r} -> {s!r}")
            # A translation without Hangul keeps the msgid on purpose (a protocol name, "{code}: {message}").
            if not re.search(r"[가-힣]", s) and s != ids[0]:
                problems.append(f"no Korean in the translation: {ids[0]!r} -> {s!r}")
        # Technique cards render as markup (lazy strings): no "<" or "&" in them.
        if any(path.endswith("pages.py") for path, _ in m.locations):
            if any(ch in text for ch in "<&" for text in (*ids, *strings)):
                problems.append(f"'<' or '&' in a card text: {ids[0]!r}")
    assert not problems, "\n".join(problems)


def test_catalog_is_up_to_date_with_the_sources(tmp_path):
    pot = tmp_path / "messages.pot"
    # The Makefile's own extraction command (`make translations` runs the same).
    subprocess.run(
        ["make", "-s", "--no-print-directory", "pot", f"POT={pot}"], cwd=ROOT, check=True, timeout=scaled(120)
    )
    with pot.open("rb") as f:
        extracted = {m.id for m in read_po(f) if m.id}
    translated = {m.id for m in catalog() if m.id}
    assert extracted - translated == set(), "new msgids: run `make translations` and translate them"
    assert translated - extracted == set(), "msgids no source uses any more: run `make translations`"


def test_the_compiled_catalog_says_what_the_po_says():
    def normal(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    with MO.open("rb") as f:
        compiled = {normal(m.id): normal(m.string) for m in read_mo(f) if m.id}
    written = {normal(m.id): normal(m.string) for m in catalog() if m.id}
    assert compiled == written, "messages.mo is stale: run `make translations` (it compiles the .po)"


JS_CALL = re.compile(r'(?<![\w.])(?:S\.)?(t|tx|tn)\(\s*"((?:[^"\\]|\\.)*)"(?:\s*,\s*"((?:[^"\\]|\\.)*)")?')


def test_javascript_takes_its_strings_from_the_one_list():
    used = set()
    for script in (ROOT / "static" / "js").glob("*.js"):
        for kind, first, second in JS_CALL.findall(script.read_text()):
            first = json.loads(f'"{first}"')
            used.add((first, json.loads(f'"{second}"')) if kind == "tn" else first)
    listed = set(JS_MESSAGES)
    assert used - listed == set(), "msgids the JavaScript shows but app/js_messages.py does not list"
    assert listed - used == set(), "msgids app/js_messages.py lists but no script uses"


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/compare", "/compare"),
        ("/sse?x=1", "/sse?x=1"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("/\r\nSet-Cookie: x=1", "/"),
    ],
)
def test_the_switch_only_goes_back_to_this_site(target, expected):
    assert safe_next(target) == expected


# ----------------------------------------------------------------- Chromium in Korean


@pytest.fixture(scope="module")
def ko_browser(browser):
    """A second Chromium, started with --lang=ko (its UI and navigator.language in Korean)."""
    instance = browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, "--lang=ko"])
    yield instance
    instance.close()


@pytest.fixture
def korean_user(ko_browser, console_errors):
    """Factory: a fresh context in the Korean Chromium, with Accept-Language ko-KR."""
    contexts = []

    def make(**options):
        context = ko_browser.new_context(viewport=DESKTOP, **KOREAN, **options)
        context.set_default_timeout(10_000)
        console_errors.watch(context)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def exercise(page, path: str, base_url: str) -> None:
    """Make the page show what it shows when used: statuses, messages, counters, logs."""
    tag = uuid.uuid4().hex[:8]
    if path == "/":
        page.wait_for_selector(".cards")
    elif path == "/compare":
        page.wait_for_function(
            """() => document.body.dataset.ready === 'true'
                  && [...document.querySelectorAll('[data-pane]')].every(p => p.dataset.state === 'open')""",
            timeout=ms(15),
        )
        page.click("[data-publish-one]")
        page.wait_for_selector("[data-publisher-status][data-kind=ok]", timeout=ms(10))
        page.fill("#drop-count", "1")
        page.click("[data-drop]")
        page.wait_for_selector("body[data-drop=done]", timeout=ms(30))
        # Ten test streams: over HTTP/1.1 some open and the others wait (each says which).
        page.click("[data-limit-toggle]")
        page.wait_for_function(
            """() => document.querySelectorAll('.stream-slots li[data-state]').length === 10
                  && Number(document.querySelector('[data-limit-stat=open]').textContent) >= 1""",
            timeout=ms(10),
        )
        assert_no_english(page, "/compare with ten test streams")
        page.click("[data-limit-toggle]")  # closed: the status says how many it closed
        page.wait_for_selector(".stream-slots li", state="detached", timeout=ms(10))
    elif path == "/doctor":
        # Every check run, with the shortest waits: each row shows its verdict, explanation and fix.
        page.fill("[data-idle-seconds]", "1")
        page.fill("[data-poll-seconds]", "1")
        page.click("[data-run]")
        page.wait_for_selector("[data-summary][data-state=done]", timeout=ms(60))
        assert page.locator('[data-check][data-verdict="pending"], [data-check][data-verdict="running"]').count() == 0
    elif path == "/sockjs":
        # The seed's client over a forced fallback: status, transport, counters and frame log filled.
        page.wait_for_selector(".chat [data-status][data-kind=ok]", timeout=ms(20))
        page.select_option("#transport", "xhr-polling")
        page.wait_for_function(
            "() => document.querySelector('[data-transport]').textContent === 'xhr-polling'", timeout=ms(15)
        )
        page.wait_for_selector(".chat [data-status][data-kind=ok]", timeout=ms(20))
        page.fill("#message", tag)
        page.click("#send-message-button")
        page.locator("#message-container li", has_text=tag).wait_for(timeout=ms(15))
    else:
        wait_chat_ready(page)
        text = f"{tag}"
        send_chat(page, text)
        wait_message(page, text)
        publish(base_url, "chat", {"text": f"{tag}-elsewhere"})
        wait_message(page, f"{tag}-elsewhere")
        if path == "/sse":
            page.click("[data-fetch-connect]")
            page.locator("[data-fetch-log] [data-kind=comment]").first.wait_for(timeout=ms(10))
            publish(base_url, "chat", {"text": f"{tag}-fetch"})
            page.locator("[data-fetch-log] [data-kind=event]", has_text=f"{tag}-fetch").wait_for(timeout=ms(10))
            page.click("[data-ticks-toggle]")  # stop: the tick line says so
            page.click("[data-fetch-disconnect]")
        if path in ("/websocket", "/stomp"):
            page.click("[data-drop]")
            page.wait_for_selector(".chat [data-status][data-kind=error]", timeout=ms(10))
            assert_no_english(page, f"{path} while dropped")
            wait_chat_ready(page, timeout=30)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_in_korean_has_no_english_left(path, korean_user, live_server, console_errors):
    page = korean_user().new_page()
    page.goto(f"{live_server.url}{path}")
    assert page.evaluate("navigator.language").startswith("ko"), "Chromium runs with --lang=ko"
    exercise(page, path, live_server.url)
    assert_no_english(page, path)
    page.set_viewport_size(PHONE)  # Korean lines break between words (word-break: keep-all)
    # The compare page's chart takes its new width from a ResizeObserver: give it two frames.
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    assert not overflowing(page), f"wider than the phone on {path}: {overflowing(page)}"
    assert_no_horizontal_scroll(page)


@pytest.mark.nginx
def test_the_compare_page_over_http2_in_korean(korean_user, tmp_path, console_errors):
    """Over HTTP/2 (make run-nginx's TLS port) the connection sentences change their wording:
    that wording comes from the catalog too, as do the ten test streams' statuses."""
    with Gunicorn(tmp_path, env={"SWITCHBOARD_BEHIND_PROXY": "1"}) as app_server:
        nginx = Nginx(app_server.port, tls=True).start()
        try:
            page = korean_user(ignore_https_errors=True).new_page()
            page.goto(f"{nginx.tls_url}/compare")
            page.wait_for_function(
                """() => document.body.dataset.ready === 'true'
                      && [...document.querySelectorAll('[data-pane]')].every(p => p.dataset.state === 'open')""",
                timeout=ms(15),
            )
            assert "h2" in page.locator('[data-conn="protocol"]').inner_text()
            page.click("[data-limit-toggle]")
            page.wait_for_function(
                "() => document.querySelector('[data-limit-stat=open]').textContent === '10'", timeout=ms(10)
            )
            meter = page.locator(".connections p").first.inner_text()
            assert "HTTP/2 연결 하나" in meter, meter
            assert_no_english(page, "/compare over HTTP/2 with ten test streams")
            page.click("[data-limit-toggle]")
        finally:
            nginx.stop()


AUTH_ENV = {
    "SWITCHBOARD_AUTH_SECRET": "i18n-" + uuid.uuid4().hex * 2,
    "SWITCHBOARD_DEMO_USERS": "alice,bob",
    "SWITCHBOARD_ANONYMOUS_SUBSCRIBE": "chat,ticks",
    "SWITCHBOARD_ANONYMOUS_PUBLISH": "",
}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """As `make run-auth` starts it: the index page has the demo sign-in."""
    with Gunicorn(tmp_path_factory.mktemp("i18n-auth"), env=AUTH_ENV) as server:
        yield server


def test_the_demo_sign_in_in_korean(auth_server, korean_user, console_errors):
    console_errors.allow(r"status of 40[13]", r"EventSource's response has")  # the refusals it shows
    page = korean_user().new_page()
    page.goto(f"{auth_server.url}/")
    page.wait_for_selector("[data-auth-panel][data-ready=true]", timeout=ms(15))
    page.wait_for_selector('[data-probe="user.alice"] [data-subscribe][data-result="401"]', timeout=ms(10))
    assert_no_english(page, "the index, not signed in")
    page.locator('[data-sign-in="bob"]').click()
    page.wait_for_selector('[data-auth-panel][data-sub="bob"]', timeout=ms(10))
    page.wait_for_selector('[data-probe="user.alice"] [data-subscribe][data-result="403"]', timeout=ms(10))
    page.locator('[data-probe="room.members"] [data-publish]').click()
    page.wait_for_selector('[data-probe="room.members"] [data-publish-result][data-result="403"]', timeout=ms(10))
    page.locator('[data-probe="user.bob"] [data-publish]').click()
    page.wait_for_selector('[data-probe="user.bob"] [data-publish-result][data-result="allowed"]', timeout=ms(10))
    refused = page.locator('[data-probe="room.members"] [data-publish-result]').inner_text()
    assert "403" in refused and "권한 없음" in refused, refused
    assert_no_english(page, "the index, signed in as bob")
    # An anonymous visitor's post refused on a chat page: the reason in Korean, the server's
    # own words kept as they came.
    page = korean_user().new_page()
    page.goto(f"{auth_server.url}/polling")
    wait_chat_ready(page)
    send = page.locator("#chat-input")
    send.fill("안녕하세요")
    send.press("Enter")
    page.locator("li.notice", has_text="보내지 못함").wait_for(timeout=ms(10))
    assert_no_english(page, "/polling, a post refused")


# ----------------------------------------------------------------- English, and the switch


@pytest.mark.parametrize("options", [{}, {"locale": "en-US"}, {"locale": "fr-FR"}], ids=["default", "en-US", "fr-FR"])
def test_english_is_the_default(options, new_user, live_server, console_errors):
    page = new_user(**options).new_page()
    for path in ("/", "/compare", "/sse"):
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate("document.documentElement.lang") == "en", (options, path)
    page.goto(f"{live_server.url}/")
    assert page.locator("h1").inner_text() == "Five ways a browser can hear a server"
    assert page.locator('.language a[aria-current="true"]').inner_text() == "English"


# While the switch's redirect is being followed there is a moment with no document element yet.
HTML_LANG_IS = "lang => document.documentElement !== null && document.documentElement.lang === lang"


def test_the_switch_overrides_accept_language_and_is_remembered(korean_user, new_user, live_server, console_errors):
    context = korean_user()
    page = context.new_page()
    page.goto(f"{live_server.url}/compare")
    assert page.evaluate("document.documentElement.lang") == "ko"
    assert page.locator("h1").inner_text() == "다섯 가지 기법 비교"

    with page.expect_navigation(wait_until="load", timeout=ms(10)):
        page.locator('.language a[lang="en"]').click()
    page.wait_for_function(HTML_LANG_IS, arg="en", timeout=ms(10))
    assert page.url == f"{live_server.url}/compare", "the switch comes back to the same page"
    assert page.locator("h1").inner_text() == "Compare the five techniques"
    cookie = next(c for c in context.cookies() if c["name"] == "lang")
    assert cookie["value"] == "en" and cookie["path"] == "/" and cookie["sameSite"] == "Lax"
    assert cookie["expires"] > 0, "remembered beyond this browser session"

    # Other pages, and a new tab, keep the choice although Accept-Language still says Korean.
    page.goto(f"{live_server.url}/sse")
    wait_chat_ready(page)
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.locator(".chat [data-status]").inner_text().startswith("Connected")
    other = context.new_page()
    other.goto(f"{live_server.url}/")
    assert other.locator("h1").inner_text() == "Five ways a browser can hear a server"

    # And back: an English browser chooses Korean.
    english = new_user(locale="en-US").new_page()
    english.goto(f"{live_server.url}/websocket?from=test")
    with english.expect_navigation(wait_until="load", timeout=ms(10)):
        english.locator('.language a[lang="ko"]').click()
    english.wait_for_function(HTML_LANG_IS, arg="ko", timeout=ms(10))
    assert english.url == f"{live_server.url}/websocket?from=test"
    wait_chat_ready(english)
    assert "연결됨" in english.locator(".chat [data-status]").inner_text()


def test_the_switch_endpoint(live_server):
    with requests.Session() as http:
        res = http.get(
            f"{live_server.url}/lang/ko", params={"next": "/stomp"}, allow_redirects=False, timeout=scaled(10)
        )
        assert res.status_code == 303 and res.headers["Location"] == "/stomp"
        assert res.headers["Cache-Control"] == "no-store"
        assert "lang=ko" in res.headers["Set-Cookie"] and "HttpOnly" in res.headers["Set-Cookie"]
        for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            res = http.get(
                f"{live_server.url}/lang/en", params={"next": evil}, allow_redirects=False, timeout=scaled(10)
            )
            assert (res.status_code, res.headers["Location"]) == (303, "/"), evil
        assert http.get(f"{live_server.url}/lang/fr", allow_redirects=False, timeout=scaled(10)).status_code == 404
        korean = {"Accept-Language": "ko-KR,ko;q=0.9"}
        page = http.get(f"{live_server.url}/", headers=korean, timeout=scaled(10))
        assert '<html lang="en">' in page.text, "the cookie the last switch set wins over Accept-Language"
        http.cookies.clear()
        page = http.get(f"{live_server.url}/", headers=korean, timeout=scaled(10))
        assert '<html lang="ko">' in page.text
        assert {"Accept-Language", "Cookie"} <= {v.strip() for v in page.headers["Vary"].split(",")}
        # API answers stay English whatever the page language.
        api = http.get(
            f"{live_server.url}/api/topics/bad%20topic/events", headers={"Accept-Language": "ko"}, timeout=scaled(10)
        )
        assert api.status_code == 400 and api.json()["error"] == "bad_topic"
        assert re.search(r"[a-z]", api.json()["message"]) and not re.search(r"[가-힣]", api.json()["message"])
