"""The SockJS protocol suite's test server (tests/support/sockjs_test_app.py under gunicorn with our
worker class), its module fixtures and the request helpers of the protocol tests
(tests/e2e/test_sockjs_protocol*.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.rawhttp import RawHttp
from tests.support.servers import free_port
from tests.support.timing import scaled, wait_until

ROOT = Path(__file__).resolve().parents[2]


class SockJSTestServer:
    def __init__(self, log_dir: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"sockjs-{self.port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in env.items()}}

    def start(self) -> "SockJSTestServer":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "app.server.lifecycle.Worker",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                "1",
                "--no-control-socket",
                "--graceful-timeout",
                "5",
                "tests.support.sockjs_test_app:app",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._ready, timeout=30, interval=0.05, message=f"SockJS test app on {self.url}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log_path.read_text(errors="replace")[-4000:])
        try:
            return requests.get(self.url + "/echo", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def sockjs(tmp_path_factory):
    server = SockJSTestServer(tmp_path_factory.mktemp("sockjs"), SOCKJS_TEST_DISCONNECT_DELAY=2).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Heartbeats every 0.5 s, sessions forgotten 0.5 s after their last receiver."""
    server = SockJSTestServer(
        tmp_path_factory.mktemp("sockjs-quick"), SOCKJS_TEST_HEARTBEAT=0.5, SOCKJS_TEST_DISCONNECT_DELAY=0.5
    ).start()
    yield server
    server.stop()


def session_url(base: str) -> str:
    return f"{base}/000/{uuid.uuid4()}"


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://")


def post(url, body="", headers=None):
    return requests.post(
        url, data=body.encode("utf-8") if isinstance(body, str) else body, headers=headers or {}, timeout=scaled(10)
    )


def get(url, headers=None):
    return requests.get(url, headers=headers or {}, timeout=scaled(10))


def options(url, headers=None):
    return requests.options(url, headers=headers or {}, timeout=scaled(10))


def content_type(response) -> str:
    return (response.headers.get("content-type") or "").replace(" ", "")


NOT_CACHED = "no-store, no-cache, must-revalidate, max-age=0"


def verify_not_cached(r):
    assert r.headers["Cache-Control"] == NOT_CACHED
    assert "Expires" not in r.headers and "Last-Modified" not in r.headers


def verify_cors(r, origin=None):
    expected = origin if origin and origin != "null" else "*"
    assert r.headers["access-control-allow-origin"] == expected
    assert r.headers["access-control-allow-credentials"] == "true"


def verify_options(url, methods):
    for origin in (None, "http://test.example", "null"):
        r = options(url, headers={"Origin": origin} if origin else {})
        assert r.status_code == 204
        assert "public" in r.headers["Cache-Control"]
        assert re.search(r"max-age=[1-9][0-9]{6}", r.headers["Cache-Control"])
        assert r.headers["Expires"] and int(r.headers["access-control-max-age"]) > 1_000_000
        assert r.headers["Access-Control-Allow-Methods"] == methods
        assert not r.content
        verify_cors(r, origin)


def verify_405(r):
    assert r.status_code == 405
    assert not r.headers.get("content-type") and r.headers["allow"] and not r.content


class Held:
    """A receiving request held open on a raw socket (the suite's POST_async / GET_async)."""

    def __init__(self, url: str, method: str = "POST", http: str = "1.1", headers=None, answer_now: bool = True):
        self.conn = RawHttp(url)
        if answer_now:  # a stream sends its headers with its prelude
            self.response = self.conn.request(method, url, http=http, headers=headers)
        else:  # a poll answers when it has a frame
            self.conn.send_only(method, url, http=http, headers=headers)

    def answer(self) -> str:
        self.response = self.conn.read_response()
        return self.response.read_body()

    def read(self) -> str:
        return self.response.read_chunk()

    def close(self) -> None:
        self.conn.close()
