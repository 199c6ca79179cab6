"""Write the README's screenshots: the index and the compare page, in English and in Korean.

Run from the repository root:  .venv/bin/python tests/browser/screenshot_docs.py [output-dir]

It starts its own gunicorn on a free port and Debian's chromium (once with English, once
with ``--lang=ko`` and a Korean Accept-Language), and writes ``index-en.png``,
``index-ko.png``, ``compare-en.png`` and ``compare-ko.png`` (in docs/ by default). For the
compare page it publishes at a steady rate for a while, sends a burst, runs the drop test,
and shoots the page from the top down to the latency chart. Korean needs a font with Hangul
(``make system-deps`` installs fonts-nanum). Not collected by pytest (the name does not
start with test_).
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
WIDTH = 1280
LANGUAGES = {"en": {"args": [], "locale": "en-US"}, "ko": {"args": ["--lang=ko"], "locale": "ko-KR"}}


def shoot_index(page, base_url: str, out: Path) -> None:
    page.goto(f"{base_url}/")
    page.wait_for_selector(".cards")
    page.screenshot(path=str(out), full_page=True)


def shoot_compare(page, base_url: str, out: Path) -> None:
    page.goto(f"{base_url}/compare")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-pane]')].every(p => p.dataset.state === 'open')", timeout=15_000
    )
    page.fill("#rate", "4")
    page.click("[data-rate-toggle]")  # start the steady rate
    page.wait_for_timeout(STEADY_SECONDS * 1000 // 2)
    page.fill("#burst-size", "30")
    page.click("[data-burst-form] button[type=submit]")
    page.wait_for_timeout(STEADY_SECONDS * 1000 // 2)
    page.click("[data-rate-toggle]")  # stop
    page.fill("#drop-count", "5")
    page.click("[data-drop]")
    page.wait_for_selector("body[data-drop=done]", timeout=30_000)
    page.wait_for_timeout(500)  # let the last numbers render
    chart = page.locator("[data-chart]").bounding_box()
    bottom = chart["y"] + chart["height"] + 24
    page.screenshot(path=str(out), full_page=True, clip={"x": 0, "y": 0, "width": WIDTH, "height": bottom})


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory() as logs, Gunicorn(Path(logs)) as server, sync_playwright() as playwright:
        for lang, options in LANGUAGES.items():
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *options["args"]]
            )
            page = browser.new_page(
                viewport={"width": WIDTH, "height": 900}, device_scale_factor=1, locale=options["locale"]
            )
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            shoot_index(page, server.url, out_dir / f"index-{lang}.png")
            shoot_compare(page, server.url, out_dir / f"compare-{lang}.png")
            assert page.evaluate("document.documentElement.lang") == lang
            browser.close()
            print(f"wrote {out_dir}/index-{lang}.png and {out_dir}/compare-{lang}.png")
    if errors:
        raise SystemExit("the pages logged errors:\n" + "\n".join(errors))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
