"""What each SockJS transport costs per message: HTTP requests and bytes on the wire.

The /sockjs page (the seed's client: sockjs-client 1.6.1 and stomp.js 2.3.3 on
/websocket/stomp) runs in headless Chromium, forced onto each transport in turn, through a
TCP proxy that counts every byte both ways (HTTP headers, chunk sizes, WebSocket framing and
the iframe transports' own requests included) and every HTTP request line. Per transport:

* receive: ``N`` chat events published straight to gunicorn (not through the proxy), each
  awaited on the page before the next, so every one is a separate delivery (the worst case
  for the polling transports, which batch whatever arrives between two polls);
* send: ``N`` messages typed into the page, each awaited as it comes back (so a send's
  figure includes its own echo, the seed's chat body on /sub/chat).

Usage: ``.venv/bin/python bench/sockjs_cost.py [--messages 20] [--json out.json]``. The
figures in the README come from it. STOMP heart-beats (stomp.js: 10 s both ways) may fall
into a phase and add a request; a phase of 20 messages lasts about a second, so rarely.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.servers import Gunicorn, free_port  # noqa: E402

TRANSPORTS = (
    "websocket",
    "xhr-streaming",
    "eventsource",
    "iframe-eventsource",
    "htmlfile",
    "iframe-htmlfile",
    "xhr-polling",
    "iframe-xhr-polling",
    "jsonp-polling",
)
REQUEST_LINE = re.compile(rb"(?:GET|POST|OPTIONS|HEAD) (/\S*) HTTP/1\.[01]\r\n")
SOCKJS_PREFIX = b"/websocket/stomp"


class CountingProxy:
    """Forward 127.0.0.1:<port> to gunicorn, counting bytes each way and request lines."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.up = self.down = self.requests = self.sockjs_requests = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.requests, self.up, self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        carry = b""  # a request line may straddle two reads
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                with self._lock:
                    if upward:
                        self.up += len(chunk)
                        seen = carry + chunk
                        for m in REQUEST_LINE.finditer(seen):
                            if m.end() > len(carry):
                                self.requests += 1
                                self.sockjs_requests += m.group(1).startswith(SOCKJS_PREFIX)
                        carry = seen[-200:]
                    else:
                        self.down += len(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def publish(base: str, text: str) -> None:
    res = requests.post(
        f"{base}/api/topics/chat/events",
        data=json.dumps({"data": {"text": text}}),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    res.raise_for_status()


def shown(page, text: str, timeout_ms: float = 10_000) -> bool:
    try:
        page.locator("#message-container li", has_text=text).first.wait_for(timeout=timeout_ms)
        return True
    except Exception:  # Playwright's TimeoutError
        return False


def per_message(before, after, n: int) -> dict[str, float]:
    requests_, up, down = (b - a for a, b in zip(before, after))
    return {"requests": requests_ / n, "bytes_up": up / n, "bytes_down": down / n}


def measure(browser, server: Gunicorn, transport: str, n: int) -> dict:
    proxy = CountingProxy(server.port)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{proxy.url}/sockjs?transport={transport}")
        page.wait_for_function("() => document.querySelector('[data-status]').dataset.kind === 'ok'", timeout=20_000)
        open_requests = proxy.sockjs_requests  # /info, the transport's first requests, CONNECT's send
        # The SUBSCRIBE follows CONNECTED: a warm-up event shows when it is in place.
        for attempt in range(10):
            publish(server.url, f"warm-up {transport} {attempt}")
            if shown(page, f"warm-up {transport} {attempt}", 3000):
                break
        else:
            raise RuntimeError(f"{transport}: no warm-up event arrived")
        opened = proxy.snapshot()
        tag = f"{transport}-{time.monotonic_ns()}"
        for i in range(n):
            publish(server.url, f"in {tag} {i}")
            assert shown(page, f"in {tag} {i}"), f"{transport}: event {i} not shown"
        received = proxy.snapshot()
        for i in range(n):
            page.fill("#message", f"out {tag} {i}")
            page.click("#send-message-button")
            assert shown(page, f"out {tag} {i}"), f"{transport}: message {i} did not come back"
        sent = proxy.snapshot()
        return {
            "transport": page.locator("[data-transport]").inner_text(),
            "open_requests": open_requests,
            "receive": per_message(opened, received, n),
            "send": per_message(received, sent, n),
        }
    finally:
        context.close()
        proxy.close()


def table(results: dict[str, dict], n: int) -> str:
    lines = [
        f"SockJS transports in Chromium (sockjs-client 1.6.1, stomp.js 2.3.3), {n} messages each way;",
        "bytes on the wire incl. HTTP headers; 'send' includes the message's own echo",
        f"{'transport':<20}{'open req':>9}{'recv req/msg':>14}{'recv B/msg':>12}{'send req/msg':>14}{'send B/msg':>12}",
    ]
    for name, r in results.items():
        rec, snd = r["receive"], r["send"]
        lines.append(
            f"{name:<20}{r['open_requests']:>9}{rec['requests']:>14.2f}"
            f"{rec['bytes_up'] + rec['bytes_down']:>12.0f}{snd['requests']:>14.2f}"
            f"{snd['bytes_up'] + snd['bytes_down']:>12.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as logs, Gunicorn(Path(logs)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        results = {}
        for transport in TRANSPORTS:
            results[transport] = measure(browser, server, transport, args.messages)
            assert results[transport]["transport"] == transport, results[transport]
        browser.close()
    print(table(results, args.messages))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
