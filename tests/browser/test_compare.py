"""The compare page in Chromium: one event reaches all six panes, the numbers are numbers,
the page stays within the browser's six connections, and the drop test recovers every pane."""

from __future__ import annotations

import math
import re
import uuid

import pytest

from tests.browser.helpers import ms, pane_stats, publish

pytestmark = pytest.mark.browser

PANES = ("polling", "longpoll", "sse", "websocket", "stomp", "sockjs")
LATENCY_TEXT = re.compile(r"^\d+(\.\d)? m?s$")


def open_compare(page, base_url):
    page.goto(f"{base_url}/compare")
    page.wait_for_function(
        """() => document.body.dataset.ready === 'true'
              && [...document.querySelectorAll('[data-pane]')].every(p => p.dataset.state === 'open')""",
        timeout=ms(15),
    )


def wait_received(page, counts: dict[str, int], timeout: float = 10) -> None:
    """Wait until every pane has received exactly its expected number of events."""
    page.wait_for_function(
        """(want) => Object.entries(want).every(([key, n]) =>
              document.querySelector(`[data-pane="${key}"] [data-stat="received"]`).dataset.value === String(n))""",
        arg=counts,
        timeout=ms(timeout),
    )


def test_one_event_reaches_all_six_panes_with_numeric_latency(new_user, live_server, console_errors, screenshot):
    page = new_user().new_page()
    open_compare(page, live_server.url)
    text = f"compare {uuid.uuid4().hex[:8]}"
    page.fill("#pub-text", text)
    page.click("[data-publish-one]")
    wait_received(page, {key: 1 for key in PANES})

    stats = pane_stats(page)
    for key in PANES:
        for stat in ("last", "p50", "p95"):
            value = float(stats[key][stat])
            assert math.isfinite(value) and 0 <= value < 10_000, (key, stat, value)
            shown = page.locator(f'[data-pane="{key}"] [data-stat="{stat}"]').inner_text()
            assert LATENCY_TEXT.match(shown), (key, stat, shown)
        assert int(stats[key]["requests"]) >= 1 and int(stats[key]["bytes"]) > 0, (key, stats[key])
        assert stats[key]["duplicates"] == "0" and stats[key]["gaps"] == "0"
    # Pushing techniques beat a 1 s polling interval on a local machine.
    assert float(stats["websocket"]["last"]) < 1000

    # A third party's event on the same topic counts too: the panes listen, not just echo.
    publish(live_server.url, "compare", {"n": 0, "text": "from elsewhere"})
    wait_received(page, {key: 2 for key in PANES})

    # Connections: at most 6 HTTP/1.1 at once, ever; the meter is on the page.
    http_now = int(page.locator('.connections [data-conn="http"]').inner_text())
    peak = int(page.locator('.connections [data-conn="peak"]').inner_text())
    assert 2 <= http_now <= peak <= 6, (http_now, peak)  # a long poll and an SSE stream are always open
    assert page.locator('.connections [data-conn="ws"]').inner_text() == "2"
    assert "7th" in page.locator(".connections").inner_text()
    screenshot(page, "compare-one-event")


def test_drop_all_connections_recovers_every_pane(new_user, live_server, console_errors, screenshot):
    page = new_user().new_page()
    open_compare(page, live_server.url)
    page.click("[data-publish-one]")  # every pane gets a cursor of its own
    wait_received(page, {key: 1 for key in PANES})

    page.fill("#drop-count", "5")
    page.click("[data-drop]")
    page.wait_for_selector("body[data-drop=done]", timeout=ms(20))
    for key in PANES:
        pane = page.locator(f'[data-pane="{key}"]')
        note = pane.locator("[data-recovery]").inner_text()
        assert pane.get_attribute("data-recovery") == "recovered", (key, note)
        assert note.startswith("Recovered 5 missed events"), (key, note)
    wait_received(page, {key: 6 for key in PANES})
    stats = pane_stats(page)
    for key in PANES:
        assert stats[key]["duplicates"] == "0" and stats[key]["gaps"] == "0", (key, stats[key])
        assert int(stats[key]["reconnects"]) == 1, (key, stats[key])
    assert "Every pane recovered all 5" in page.locator("[data-drop-status]").inner_text()

    # Live again after the drop.
    page.click("[data-publish-one]")
    wait_received(page, {key: 7 for key in PANES})
    screenshot(page, "compare-after-drop")


def test_naive_reconnect_loses_what_was_missed(new_user, live_server, console_errors):
    """Unticked "resume": the pushing techniques reconnect live-only and report what they lost."""
    page = new_user().new_page()
    open_compare(page, live_server.url)
    page.click("[data-publish-one]")
    wait_received(page, {key: 1 for key in PANES})
    page.uncheck("#drop-resume")
    page.fill("#drop-count", "2")
    page.click("[data-drop]")
    page.wait_for_selector("body[data-drop=done]", timeout=ms(20))
    for key in ("longpoll", "sse", "websocket", "stomp"):
        pane = page.locator(f'[data-pane="{key}"]')
        assert pane.get_attribute("data-recovery") == "missed", key
        assert pane.locator("[data-recovery]").inner_text().startswith("Missed 2 of 2 events"), key
    # Polling without a cursor re-reads the newest events: it gets them back (and duplicates).
    assert page.locator('[data-pane="polling"]').get_attribute("data-recovery") == "recovered"
