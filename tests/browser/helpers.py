"""What the browser tests do to and read from a page, in one place."""

from __future__ import annotations

import json
import os

import requests

from tests.support.timing import scaled

CHROMIUM = os.environ.get("SWITCHBOARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
CHAT_PAGES = ("polling", "long-polling", "sse", "websocket", "stomp")
# Controls that must have an accessible name, by their computed ARIA role.
CONTROL_ROLES = {
    "textbox",
    "searchbox",
    "button",
    "slider",
    "checkbox",
    "radio",
    "spinbutton",
    "combobox",
    "listbox",
    "switch",
    "link",
}


def ms(seconds: float) -> float:
    """A Playwright timeout (ms) for a bound given in (scaled) seconds."""
    return scaled(seconds) * 1000


def publish(base_url: str, topic: str, data, session: requests.Session | None = None) -> dict:
    """POST one event straight to the server; returns the stored event."""
    if session is None:
        with requests.Session() as own:  # closed at once: an idle keep-alive would slow the server's stop
            return publish(base_url, topic, data, own)
    res = session.post(
        f"{base_url}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers={"Content-Type": "application/json"},
        timeout=scaled(10),
    )
    assert res.status_code == 201, res.text
    return res.json()


def wait_chat_ready(page, timeout: float = 15) -> None:
    """Wait until the page's chat says it is connected (its status has a kind, and not "error")."""
    page.wait_for_function(
        """() => {
            const status = document.querySelector('.chat [data-status]');
            return status && status.dataset.kind && status.dataset.kind !== 'error';
        }""",
        timeout=ms(timeout),
    )


def whoami(page) -> str:
    """The sender the page shows in its header; it must match body[data-sender]."""
    shown = page.locator(".whoami strong").inner_text().strip()
    assert shown and shown == page.evaluate("document.body.dataset.sender"), "header and body[data-sender] disagree"
    return shown


def send_chat(page, text: str) -> None:
    """Type into the chat input and press Enter, as a user would."""
    box = page.locator("#chat-input")
    box.fill(text)
    box.press("Enter")


def message(page, text: str):
    return page.locator("li.message", has_text=text)


def wait_message(page, text: str, timeout: float = 10):
    """Wait for the chat message with this text; returns its locator (exactly one)."""
    item = message(page, text)
    item.first.wait_for(timeout=ms(timeout))
    assert item.count() == 1, f"{text!r} shown {item.count()} times"
    return item


def message_ids(page) -> list[str]:
    return page.eval_on_selector_all("li.message", "items => items.map(li => li.dataset.id)")


def assert_no_horizontal_scroll(page) -> None:
    # Measured after two frames: a page's ResizeObserver (the compare page's chart) takes a
    # new viewport's width in the next frame, not at once.
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    widths = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"horizontal scroll: content {widths[0]} px wide in a {widths[1]} px window"


def unlabelled_controls(page) -> list[str]:
    """Controls (by Chromium's computed accessibility tree) without an accessible name."""
    cdp = page.context.new_cdp_session(page)
    try:
        tree = cdp.send("Accessibility.getFullAXTree")
        missing = []
        for node in tree["nodes"]:
            if node.get("ignored"):
                continue
            role = node.get("role", {}).get("value")
            if role not in CONTROL_ROLES:
                continue
            if str(node.get("name", {}).get("value", "")).strip():
                continue
            described = cdp.send("DOM.describeNode", {"backendNodeId": node["backendDOMNodeId"]})["node"]
            missing.append(f"{role}: <{described['localName']} {' '.join(described.get('attributes', []))}>")
        return missing
    finally:
        cdp.detach()


def tab_to(page, selector: str, max_presses: int = 80) -> None:
    """Press Tab from the top of the page until `selector` has focus."""
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    target = page.locator(selector)
    for _ in range(max_presses):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            return
    raise AssertionError(f"{selector} not reached with {max_presses} Tab presses")


def focus_is_visible(page) -> bool:
    """The focused element matches :focus-visible and draws an outline or a shadow."""
    return page.evaluate(
        """() => {
            const el = document.activeElement;
            if (!el || !el.matches(':focus-visible')) return false;
            const style = getComputedStyle(el);
            const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
            return outline || style.boxShadow !== 'none';
        }"""
    )


def pane_stats(page) -> dict[str, dict[str, str]]:
    """The compare page's numbers: {pane: {stat: data-value}}."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-pane]')].map(pane => [
            pane.dataset.pane,
            Object.fromEntries([...pane.querySelectorAll('[data-stat]')].map(dd => [dd.dataset.stat, dd.dataset.value ?? ''])),
        ]))"""
    )
