"""The proxy doctor from the command line, behind real nginx: the shipped nginx.conf passes
every check, and each of four configs broken in one way is caught by exactly the checks
that thing breaks. Then the doctor's endpoints: bounds, rate limit, stream cap, access
control (public), shutdown.

The app runs with a 4 s heartbeat and a 4 s long-poll timeout, so the doctor's waits (5 s)
cover them and a 3 s proxy_read_timeout falls short of both: the whole file stays under a
minute.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.support.auth import auth_env
from tests.support.nginx import (
    Nginx,
    buffering_with_gzip,
    http_10_upstream,
    no_upgrade_headers,
    read_timeout_3s,
    replace_once,
)
from tests.support.servers import ROOT, Gunicorn, free_port
from tests.support.timing import scaled

pytestmark = pytest.mark.nginx

FAST = {"SWITCHBOARD_SSE_HEARTBEAT": "4", "SWITCHBOARD_LONGPOLL_TIMEOUT": "4"}
WAITS = ["--idle-seconds", "5", "--poll-seconds", "5", "--events", "5", "--interval", "0.4"]
ALL_CHECKS = {"buffering", "idle-cut", "websocket", "stomp", "long-poll", "upstream", "forwarded", "clock"}
LINE = re.compile(r"(ok|problem|unknown) +(\S+) +(.+)  fix: (.+)")

# Each variant of the shipped nginx.conf breaks one thing (tests/support/nginx.py), and the
# checks it must fail.
VARIANTS = {
    "shipped": (None, set()),
    "buffering-gzip": (buffering_with_gzip, {"buffering"}),
    "no-upgrade-headers": (no_upgrade_headers, {"websocket", "stomp"}),
    "read-timeout-3s": (read_timeout_3s, {"idle-cut", "long-poll"}),
    "http-1.0-upstream": (http_10_upstream, {"upstream"}),
}


def doctor(url: str, *args: str, timeout: float = 60) -> tuple[int, dict[str, tuple[str, str, str]], str]:
    """Run ``python -m app.doctor url args``; returns (exit status, {check: (verdict, explanation, fix)}, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "app.doctor", url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )
    results = {}
    for line in proc.stdout.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a doctor line: {line!r}"
        results[match.group(2)] = (match.group(1), match.group(3), match.group(4))
    return proc.returncode, results, proc.stderr


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    # The proxy is under test here, not the doctor's rate limit (tested below on its own server).
    env = {"SWITCHBOARD_BEHIND_PROXY": "1", "SWITCHBOARD_DOCTOR_RATE": "0", **FAST}
    with Gunicorn(tmp_path_factory.mktemp("doctor-app"), env=env) as server:
        yield server


class TestBehindNginx:
    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_the_doctor_names_exactly_the_broken_thing(self, app_server, variant):
        edit, broken = VARIANTS[variant]
        nginx = Nginx(app_server.port, edit=edit).start()
        try:
            status, results, stderr = doctor(nginx.url, *WAITS)
        finally:
            nginx.stop()
        assert set(results) == ALL_CHECKS, stderr
        problems = {check for check, (verdict, _, _) in results.items() if verdict == "problem"}
        assert problems == broken, "\n".join(f"{c}: {v} {e}" for c, (v, e, _) in results.items())
        assert all(results[check][0] == "ok" for check in ALL_CHECKS - broken), results
        assert status == (1 if broken else 0), stderr
        # Each problem says what was measured, and names the nginx line that fixes it.
        said = {
            "buffering": ("in one clump", "proxy_buffering off;"),
            "websocket": ("the app got a plain GET", "proxy_set_header Upgrade $http_upgrade;"),
            "stomp": ("the app got a plain GET", "proxy_set_header Connection $connection_upgrade;"),
            "idle-cut": ("a silent stream was cut after", "proxy_read_timeout 60s;"),
            "long-poll": ("answered 504 after", "proxy_read_timeout 60s;"),
            "upstream": ("HTTP/1.0 with Connection: close", 'proxy_http_version 1.1; proxy_set_header Connection "";'),
        }
        for check in broken:
            verdict, explanation, fix = results[check]
            assert said[check][0] in explanation and said[check][1] in fix, (check, explanation, fix)

    def test_x_accel_buffering_saves_the_stream(self, app_server):
        """With proxy_buffering on and gzip, nginx still streams: the app's X-Accel-Buffering: no wins."""

        def buffering_on(config: str) -> str:
            config = replace_once(config, "            proxy_buffering off;\n", "            proxy_buffering on;\n")
            return replace_once(
                config,
                "            gzip off;\n",
                "            gzip on; gzip_min_length 0; gzip_types text/event-stream;\n",
            )

        nginx = Nginx(app_server.port, edit=buffering_on).start()
        try:
            status, results, _ = doctor(nginx.url, "--only", "buffering", "--events", "5", "--interval", "0.4")
        finally:
            nginx.stop()
        verdict, explanation, _ = results["buffering"]
        assert (status, verdict) == (0, "ok") and "gzip" in explanation, explanation


class TestCommandLine:
    def test_json_output_and_strict(self, app_server):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.doctor",
                app_server.url,
                "--json",
                "--strict",
                "--only",
                "upstream,clock,idle-cut",
                "--idle-seconds",
                "1",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )
        results = {r["check"]: r for r in json.loads(proc.stdout)}
        assert set(results) == {"upstream", "clock", "idle-cut"}
        # 1 s of silence says nothing about a 4 s heartbeat: "could not tell", which --strict fails.
        assert results["idle-cut"]["verdict"] == "unknown" and "--idle-seconds" in results["idle-cut"]["explanation"]
        assert proc.returncode == 1

    def test_nothing_there_exits_2(self):
        status, results, stderr = doctor(f"http://127.0.0.1:{free_port()}/", "--timeout", "2")
        assert status == 2 and results == {} and "no Switchboard doctor answers" in stderr

    def test_bad_flags_exit_2(self, app_server):
        for args in (["--only", "nonsense"], ["--events", "500"], ["--idle-seconds", "-1"]):
            assert doctor(app_server.url, *args)[0] == 2, args

    def test_the_client_imports_no_flask_and_no_gevent(self):
        code = (
            "import sys\n"
            "for name in ('flask', 'werkzeug', 'gevent', 'geventwebsocket', 'redis', 'jwt'): sys.modules[name] = None\n"
            "import app.doctor.cli, app.doctor.checks, app.doctor.wire\n"
            "assert not any(m.split('.')[0] in ('flask', 'gevent') for m in sys.modules if sys.modules[m])\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=scaled(30))


# ------------------------------------------------------------------ the doctor's endpoints


def raw_stream(url: str, path: str) -> socket.socket:
    """A GET held open on a raw socket; its headers are read."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=scaled(5))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    return sock


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the headers: {data!r}"
        data += chunk
    return data


def rejections(url: str, limit: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    match = re.search(rf'switchboard_limit_rejections_total\{{limit="{limit}"\}} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


class TestEndpoints:
    @pytest.mark.parametrize(
        "query",
        [
            "timed-stream?count=0",
            "timed-stream?count=51",
            "timed-stream?count=2.5",
            "timed-stream?interval=0.01",
            "timed-stream?interval=3",
            "timed-stream?count=50&interval=1",
            "timed-stream?count=nan",
            "idle-stream?seconds=0",
            "idle-stream?seconds=121",
            "idle-stream?seconds=inf",
            "slow-poll?seconds=-1",
            "slow-poll?seconds=1e9",
        ],
    )
    def test_every_parameter_is_bounded(self, app_server, query):
        res = requests.get(f"{app_server.url}/api/doctor/{query}", timeout=5)
        assert res.status_code == 400 and res.json()["error"] == "bad_parameter", res.text
        assert re.search(r"from [0-9.]+ to [0-9.]+|at most", res.json()["message"])

    def test_echo_says_what_reached_the_app(self, app_server):
        res = requests.get(f"{app_server.url}/api/doctor/echo", headers={"X-Forwarded-Proto": "https"}, timeout=5)
        body = res.json()
        assert res.headers["Cache-Control"] == "no-store"
        assert body["upstream"]["protocol"] == "HTTP/1.1" and body["upstream"]["connection"] == "keep-alive"
        assert body["forwarded"] == {"for": None, "proto": "https", "host": None, "trusted": True}
        assert body["seen"]["scheme"] == "https"  # trusted: ProxyFix applied it
        assert body["server"]["sse_heartbeat"] == 4 and body["server"]["longpoll_timeout"] == 4
        assert abs(body["time"] - time.time()) < 5

    def test_timed_stream_has_the_real_streams_headers(self, app_server):
        res = requests.get(f"{app_server.url}/api/doctor/timed-stream?count=2&interval=0.1", timeout=5)
        assert res.headers["Content-Type"].startswith("text/event-stream")
        assert res.headers["Cache-Control"] == "no-cache" and res.headers["X-Accel-Buffering"] == "no"
        assert res.text.startswith("retry: ") and res.text.count("event: tick\n") == 2
        assert res.text.endswith("event: done\ndata: {}\n\n")

    def test_rate_limited_per_client_and_counted(self, start_server):
        server = start_server({"SWITCHBOARD_DOCTOR_BURST": "3", "SWITCHBOARD_DOCTOR_RATE": "0.01"})
        with requests.Session() as http:
            assert [http.get(server.url + "/api/doctor/echo", timeout=5).status_code for _ in range(3)] == [200] * 3
            refused = http.get(server.url + "/api/doctor/echo", timeout=5)
            assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) >= 1
            assert http.get(server.url + "/api/doctor/idle-stream?seconds=1", timeout=5).status_code == 429
            assert http.get(server.url + "/healthz", timeout=5).status_code == 200  # only the doctor is limited
        assert rejections(server.url, "doctor_rate") == 2

    def test_held_responses_are_capped_per_client(self, start_server):
        server = start_server({"SWITCHBOARD_DOCTOR_STREAMS": "2", "SWITCHBOARD_DOCTOR_RATE": "0"})
        held = [
            raw_stream(server.url, "/api/doctor/idle-stream?seconds=3"),
            raw_stream(server.url, "/api/doctor/slow-poll?seconds=3"),
        ]
        try:
            assert b" 200 " in read_head(held[0]).split(b"\r\n")[0]
            time.sleep(0.3)  # the slow poll sends nothing until it answers: give it time to be admitted
            refused = requests.get(server.url + "/api/doctor/timed-stream?count=1&interval=0.1", timeout=5)
            assert refused.status_code == 429 and refused.json()["error"] == "too_many_doctor_streams"
            assert requests.get(server.url + "/api/doctor/echo", timeout=5).status_code == 200  # holds nothing
        finally:
            for sock in held:
                sock.close()
        assert rejections(server.url, "doctor_streams") == 1
        # Once they have ended, the places are free again.
        deadline = time.monotonic() + scaled(10)
        while requests.get(server.url + "/api/doctor/timed-stream?count=1&interval=0.05", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the doctor's places were never given back"
            time.sleep(0.3)

    def test_public_with_access_control_on(self, start_server):
        """The doctor names no topic: with a key configured it still answers anonymous clients."""
        server = start_server(auth_env())
        assert requests.get(server.url + "/api/topics/chat/events", timeout=5).status_code == 401
        assert requests.get(server.url + "/api/doctor/echo", timeout=5).status_code == 200
        status, results, stderr = doctor(
            server.url,
            "--only",
            "buffering,websocket,stomp,upstream,forwarded,clock",
            "--events",
            "3",
            "--interval",
            "0.1",
        )
        assert status == 0 and {v for v, _, _ in results.values()} == {"ok"}, (results, stderr)
        # ...but a token in its URL is refused like anywhere else.
        assert requests.get(server.url + "/api/doctor/echo?token=x", timeout=5).status_code == 400

    def test_held_responses_end_at_once_on_shutdown(self, tmp_path):
        server = Gunicorn(tmp_path).start()
        sock = raw_stream(server.url, "/api/doctor/idle-stream?seconds=60")
        try:
            data = read_head(sock)
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            sock.settimeout(scaled(8))
            while chunk := sock.recv(4096):
                data += chunk
            assert b"server shutting down" in data and time.monotonic() - start < scaled(8)
        finally:
            sock.close()
            server.stop()
