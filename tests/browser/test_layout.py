"""Every demo page at 375 px and at desktop width, with the keyboard only, with named controls.

One test per page: no horizontal scroll at either width; every control has an accessible
name (Chromium's own accessibility tree); Tab reaches the input with a visible focus ring,
typing and Enter sends; screenshots at both widths.
"""

from __future__ import annotations

import uuid

import pytest

from tests.browser.helpers import (
    CHAT_PAGES,
    DESKTOP,
    PHONE,
    assert_no_horizontal_scroll,
    focus_is_visible,
    ms,
    tab_to,
    unlabelled_controls,
    wait_chat_ready,
    wait_message,
)

pytestmark = pytest.mark.browser


def check_layout(page) -> None:
    assert_no_horizontal_scroll(page)
    missing = unlabelled_controls(page)
    assert not missing, "controls without an accessible name:\n" + "\n".join(missing)


@pytest.mark.parametrize("slug", CHAT_PAGES)
def test_chat_page_small_screen_keyboard_and_labels(slug, new_user, live_server, console_errors, screenshot):
    page = new_user(viewport=PHONE).new_page()
    page.goto(f"{live_server.url}/{slug}")
    wait_chat_ready(page)
    check_layout(page)

    tab_to(page, "#chat-input")
    assert focus_is_visible(page), "the focused input shows no focus ring"
    text = f"typed on {slug} {uuid.uuid4().hex[:8]}"
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    wait_message(page, text)
    page.keyboard.press("Tab")  # on to the Send button: a button shows its focus too
    assert page.evaluate("document.activeElement.tagName") == "BUTTON" and focus_is_visible(page)
    screenshot(page, f"{slug}-375px")

    page.set_viewport_size(DESKTOP)
    check_layout(page)
    screenshot(page, f"{slug}-desktop")


def test_compare_page_small_screen_keyboard_and_labels(new_user, live_server, console_errors, screenshot):
    page = new_user(viewport=PHONE).new_page()
    page.goto(f"{live_server.url}/compare")
    page.wait_for_selector("body[data-ready=true]", timeout=ms(15))
    check_layout(page)

    tab_to(page, "#pub-text")
    assert focus_is_visible(page)
    page.keyboard.press("Control+A")
    page.keyboard.type("sent with the keyboard")
    page.keyboard.press("Enter")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-stat="received"]')].every(dd => Number(dd.dataset.value) >= 1)""",
        timeout=ms(10),
    )
    tab_to(page, "[data-drop]")
    assert focus_is_visible(page)
    check_layout(page)  # with numbers and chart dots in place
    screenshot(page, "compare-375px")

    page.set_viewport_size(DESKTOP)
    check_layout(page)
    screenshot(page, "compare-desktop")
