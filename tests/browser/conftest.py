"""Browser fixtures: one headless Chromium per session, a fresh context per user, a console
watcher that fails the test on any console error or uncaught page error, a screenshot
helper, and one gunicorn (behind a TCP proxy that can cut every connection) per session.

Debian's chromium is driven through Playwright's own protocol; `playwright install` is
never run (``make test`` installs the ``chromium`` package).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS, DESKTOP
from tests.browser.netproxy import TcpProxy
from tests.support.servers import Gunicorn

# What Chromium itself logs as a console error when a connection is cut: a test that cuts
# connections on purpose allows these (and only these) with console_errors.allow_network().
NETWORK_ERRORS = (
    r"net::ERR_",  # "GET <url> net::ERR_CONNECTION_RESET", "Failed to load resource: net::ERR_..."
    r"WebSocket connection to '.*' failed",
)


class ConsoleErrors:
    """Console errors and uncaught exceptions of every page a test opened."""

    def __init__(self):
        self.errors: list[str] = []
        self._allowed: list[re.Pattern] = []

    def watch(self, context) -> None:
        context.on("console", self._on_console)
        context.on("weberror", lambda web_error: self.errors.append(f"page error: {web_error.error}"))

    def _on_console(self, message) -> None:
        if message.type != "error":
            return
        text = message.text
        if any(pattern.search(text) for pattern in self._allowed):
            return
        location = message.location or {}
        self.errors.append(f"console error: {text} ({location.get('url', '?')}:{location.get('lineNumber', '?')})")

    def allow_network(self) -> None:
        """From now on, ignore the errors Chromium logs for cut or refused connections."""
        self.allow(*NETWORK_ERRORS)

    def allow(self, *patterns: str) -> None:
        """From now on, ignore console errors matching these patterns (e.g. a 401 a test expects)."""
        self._allowed.extend(re.compile(p) for p in patterns)

    def check(self) -> None:
        errors, self.errors = self.errors, []
        assert not errors, "the page logged errors:\n" + "\n".join(errors)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # The console is checked as part of the test, so a console error fails the test itself.
    result = yield
    watcher = item.funcargs.get("console_errors") if hasattr(item, "funcargs") else None
    if watcher is not None:
        watcher.check()
    return result


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One gunicorn (default settings, in-memory hub) for every browser test."""
    with Gunicorn(tmp_path_factory.mktemp("browser-server")) as server:
        yield server


@pytest.fixture(scope="session")
def _proxy(live_server):
    proxy = TcpProxy(live_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(_proxy):
    """The TCP proxy in front of ``live_server``; pages opened at ``proxy.url`` can be cut off."""
    _proxy.up()
    yield _proxy
    _proxy.up()


@pytest.fixture(scope="session")
def browser(live_server):
    # Depends on live_server so that the browser closes its connections before gunicorn
    # stops (a graceful stop waits for open connections).
    from playwright.sync_api import sync_playwright

    # Fail, not skip, without a browser: a skipped browser suite would pass CI unseen.
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: run `make system-deps` (Debian package chromium)"
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def console_errors():
    return ConsoleErrors()


@pytest.fixture
def new_user(browser, console_errors):
    """Factory: a fresh browser context (own cookies, so its own sender) per call."""
    contexts = []

    def make(viewport: dict | None = None, **options):
        context = browser.new_context(viewport=viewport or DESKTOP, **options)
        context.set_default_timeout(10_000)
        console_errors.watch(context)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def screenshot(screenshot_dir):
    """``screenshot(page, name)`` writes ``<screenshots>/<name>.png`` (full page) and prints its path."""

    def take(page, name: str) -> Path:
        path = screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    return take


def pytest_terminal_summary(terminalreporter, config):
    base = getattr(config, "_tmp_path_factory", None)
    if base is None:
        return
    try:
        folder = base.getbasetemp() / "screenshots"
    except (OSError, ValueError):
        return
    if folder.is_dir() and any(folder.iterdir()):
        terminalreporter.write_line(f"browser screenshots: {folder}")
