"""Write docs/compare.png: the compare page with some traffic, for the README.

Run from the repository root:  .venv/bin/python tests/browser/screenshot_docs.py [output.png]

It starts its own gunicorn on a free port and Debian's chromium, publishes at a steady
rate for a while, sends a burst, runs the drop test, and screenshots the page from the top
down to the latency chart. Not collected by pytest (the name does not start with test_).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.servers import Gunicorn  # noqa: E402

STEADY_SECONDS = 12


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as logs, Gunicorn(Path(logs)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{server.url}/compare")
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-pane]')].every(p => p.dataset.state === 'open')",
            timeout=15_000)
        page.fill("#rate", "4")
        page.click("[data-rate-toggle]")  # start the steady rate
        page.wait_for_timeout(STEADY_SECONDS * 1000 // 2)
        page.fill("#burst-size", "30")
        page.click("text=Send a burst")
        page.wait_for_timeout(STEADY_SECONDS * 1000 // 2)
        page.click("[data-rate-toggle]")  # stop
        page.fill("#drop-count", "5")
        page.click("[data-drop]")
        page.wait_for_selector("body[data-drop=done]", timeout=30_000)
        page.wait_for_timeout(500)  # let the last numbers render
        chart = page.locator("[data-chart]").bounding_box()
        bottom = chart["y"] + chart["height"] + 24
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": bottom})
        browser.close()
        if errors:
            raise SystemExit("the page logged errors:\n" + "\n".join(errors))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "compare.png")
