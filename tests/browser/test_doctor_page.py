"""The proxy doctor page in real Chromium, behind real nginx: the shipped nginx.conf gets
every check ok; a buffering proxy (proxy_buffering on, gzip on the stream, X-Accel-Buffering
ignored) gets exactly the buffering check marked as a problem, with its fix.

The app runs with a 4 s heartbeat and a 4 s long-poll timeout, and the page's waits are set
to 5 s, so a run takes about 12 s.
"""

from __future__ import annotations

import pytest

from tests.browser.helpers import PHONE, assert_no_horizontal_scroll, ms, unlabelled_controls
from tests.support.nginx import Nginx, buffering_with_gzip
from tests.support.servers import Gunicorn

pytestmark = [pytest.mark.browser, pytest.mark.nginx]

FAST = {"SWITCHBOARD_SSE_HEARTBEAT": "4", "SWITCHBOARD_LONGPOLL_TIMEOUT": "4"}
CHECKS = {"upstream", "forwarded", "clock", "websocket", "stomp", "buffering", "http-version", "idle-cut", "long-poll"}


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    env = {"SWITCHBOARD_BEHIND_PROXY": "1", **FAST}
    with Gunicorn(tmp_path_factory.mktemp("doctor-page"), env=env) as server:
        yield server


def run_doctor(page, url: str) -> dict[str, tuple[str, str, str]]:
    """Open /doctor at ``url``, run it with 5 s waits; {check: (verdict, explanation, fix)}."""
    page.goto(url + "/doctor")
    page.fill("[data-idle-seconds]", "5")
    page.fill("[data-poll-seconds]", "5")
    page.click("[data-run]")
    page.wait_for_selector("[data-summary][data-state=done]", timeout=ms(60))
    rows = page.eval_on_selector_all(
        "[data-check]",
        "rows => rows.map(r => [r.dataset.check, r.dataset.verdict, r.querySelector('[data-explain]').textContent,"
        " r.querySelector('[data-fix]').textContent])",
    )
    return {name: (verdict, explanation, fix) for name, verdict, explanation, fix in rows}


def test_the_shipped_config_passes_every_check(app_server, new_user, console_errors, screenshot):
    nginx = Nginx(app_server.port).start()
    try:
        page = new_user(viewport=PHONE).new_page()
        results = run_doctor(page, nginx.url)
        assert set(results) == CHECKS
        assert {name: verdict for name, (verdict, _, _) in results.items()} == dict.fromkeys(CHECKS, "ok"), results
        # What the browser alone can tell: its HTTP version, measured by the 7th request waiting.
        assert "HTTP/1.1: 6 of 8 requests went at once" in results["http-version"][1]
        assert "Done: 9 ok, 0 problems, 0 could not tell." == page.inner_text("[data-summary]")
        assert_no_horizontal_scroll(page)
        assert not unlabelled_controls(page)
        screenshot(page, "doctor-375px")
    finally:
        nginx.stop()


def test_a_buffering_proxy_is_named(app_server, new_user, console_errors, screenshot):
    nginx = Nginx(app_server.port, edit=buffering_with_gzip).start()
    try:
        page = new_user().new_page()
        results = run_doctor(page, nginx.url)
        problems = {name for name, (verdict, _, _) in results.items() if verdict == "problem"}
        assert problems == {"buffering"}, results
        assert all(verdict == "ok" for name, (verdict, _, _) in results.items() if name != "buffering"), results
        verdict, explanation, fix = results["buffering"]
        assert "in one clump" in explanation and "proxy_buffering off;" in fix
        assert page.get_attribute("[data-summary]", "data-kind") == "error"
        screenshot(page, "doctor-buffering")
    finally:
        nginx.stop()
