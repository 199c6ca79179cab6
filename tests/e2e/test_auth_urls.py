"""Credentials and URLs, against a real gunicorn behind the repo's nginx.

* ``?token=`` and ``?access_token=`` are refused everywhere (publish, polling, long poll,
  SSE, a page, an unknown path, static files, health and metrics): 400 ``token_in_url``
  whose message names the three ways that work.
* A ticket from ``POST /api/tickets`` works once on SSE and on long poll; the second use
  is 401; a ticket older than ``SWITCHBOARD_AUTH_TICKET_TTL`` is 401.
* Neither gunicorn's access log (``SWITCHBOARD_ACCESS_LOG``) nor nginx's, nor either error
  log, holds a ticket or a token after requests that carried them in their URLs.
* ``/metrics``: 401 without ``SWITCHBOARD_METRICS_TOKEN``, 200 with it; through nginx it is
  served to loopback and refused (403, JSON) to any other address.
"""

from __future__ import annotations

import http.client
import re
import secrets
import time

import jwt
import pytest
import requests

from tests.support.auth_helpers import INVALID_TOKEN, claims
from tests.support.nginx import Nginx, shipped_config
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

pytestmark = pytest.mark.nginx

SECRET = secrets.token_urlsafe(40)
METRICS_TOKEN = secrets.token_urlsafe(24)
ENV = {
    "SWITCHBOARD_TICKS": "0",
    "SWITCHBOARD_PUBLISH_RATE": "0",
    "SWITCHBOARD_AUTH_SECRET": SECRET,
    "SWITCHBOARD_METRICS_TOKEN": METRICS_TOKEN,
    "SWITCHBOARD_BEHIND_PROXY": "1",
    "SWITCHBOARD_SSE_HEARTBEAT": "0.5",
}  # an abandoned stream ends (and is logged) within a second
THREE_WAYS = ("Authorization: Bearer", "/api/session", "/api/tickets")


def token(sub: str = "alice", **extra) -> str:
    return jwt.encode(claims(sub=sub, subscribe=["urls.*"], publish=["urls.*"], **extra), SECRET, algorithm="HS256")


def bearer(value: str | None = None) -> dict:
    return {"Authorization": f"Bearer {value or token()}"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("access-logs")


@pytest.fixture(scope="module")
def app_server(logs):
    with Gunicorn(logs, env={**ENV, "SWITCHBOARD_ACCESS_LOG": str(logs / "gunicorn-access.log")}) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(app_server):
    nginx = Nginx(app_server.port).start()
    yield nginx
    nginx.stop()


def ticket(base: str) -> str:
    res = requests.post(f"{base}/api/tickets", headers=bearer(), timeout=scaled(10))
    assert res.status_code == 200, res.text
    assert res.headers["Cache-Control"] == "no-store"
    return res.json()["ticket"]


def open_sse(base: str, topic: str, query: str) -> requests.Response:
    """GET the stream; for a 200 its first bytes (``retry:``) are read before returning."""
    res = requests.get(f"{base}/api/topics/{topic}/stream?{query}", stream=True, timeout=scaled(10))
    if res.status_code == 200:
        assert next(res.iter_content(64)).startswith(b"retry:")
    return res


def long_poll(base: str, topic: str, query: str) -> requests.Response:
    return requests.get(f"{base}/api/topics/{topic}/long-poll?timeout=0.2&{query}", timeout=scaled(10))


# ------------------------------------------------------------------ tokens in URLs


REQUESTS = [
    ("POST", "/api/topics/urls.a/events"),
    ("GET", "/api/topics/urls.a/events"),
    ("GET", "/api/topics/urls.a/long-poll"),
    ("GET", "/api/topics/urls.a/stream"),
    ("GET", "/"),
    ("GET", "/sse"),
    ("GET", "/no/such/path"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/whoami"),
    ("POST", "/api/session"),
    ("POST", "/api/tickets"),
    ("GET", "/static/css/site.css"),
]


class TestTokenInUrl:
    @pytest.mark.parametrize("name", ["token", "access_token"])
    @pytest.mark.parametrize("method, path", REQUESTS, ids=[f"{m} {p}" for m, p in REQUESTS])
    def test_refused_with_the_three_ways(self, app_server, method, path, name):
        secret = token()
        res = requests.request(
            method,
            f"{app_server.url}{path}?since=&{name}={secret}",
            json={"data": 1},
            headers=bearer(),
            timeout=scaled(10),
        )
        assert res.status_code == 400, res.text
        body = res.json()
        assert body["error"] == "token_in_url" and f"?{name}=" in body["message"]
        for way in THREE_WAYS:
            assert way in body["message"], way
        assert secret not in res.text

    @pytest.mark.parametrize("query", ["token=", "token", "access_token=&x=1", "%74oken=abc", "x=1&token=abc"])
    def test_any_spelling_even_empty(self, app_server, query):
        res = requests.get(f"{app_server.url}/api/topics/urls.a/events?{query}", timeout=scaled(10))
        assert res.status_code == 400 and res.json()["error"] == "token_in_url", query

    def test_nothing_is_published(self, app_server):
        before = requests.get(f"{app_server.url}/api/topics/urls.b/events", headers=bearer(), timeout=scaled(10))
        res = requests.post(
            f"{app_server.url}/api/topics/urls.b/events?token={token()}",
            json={"data": 1},
            headers=bearer(),
            timeout=scaled(10),
        )
        assert res.status_code == 400
        after = requests.get(f"{app_server.url}/api/topics/urls.b/events", headers=bearer(), timeout=scaled(10))
        assert after.json()["events"] == before.json()["events"]

    def test_through_nginx_too(self, proxy):
        for path in ("/api/topics/urls.a/stream", "/api/topics/urls.a/long-poll", "/sse"):
            res = requests.get(f"{proxy.url}{path}?access_token={token()}", timeout=scaled(10))
            assert res.status_code == 400 and res.json()["error"] == "token_in_url"


# ------------------------------------------------------------------ tickets


class TestTickets:
    def test_sse_once(self, app_server):
        first = ticket(app_server.url)
        with open_sse(app_server.url, "urls.sse", f"ticket={first}") as res:
            assert res.status_code == 200
        again = open_sse(app_server.url, "urls.sse", f"ticket={first}")
        assert again.status_code == 401 and again.headers["WWW-Authenticate"] == INVALID_TOKEN
        assert again.json()["error"] == "unauthorized" and "once" in again.json()["message"]

    def test_long_poll_once(self, app_server):
        first = ticket(app_server.url)
        assert long_poll(app_server.url, "urls.lp", f"ticket={first}").status_code in (200, 204)
        again = long_poll(app_server.url, "urls.lp", f"ticket={first}")
        assert again.status_code == 401 and again.headers["WWW-Authenticate"] == INVALID_TOKEN
        # Spent on one transport is spent on every other.
        other = ticket(app_server.url)
        assert long_poll(app_server.url, "urls.lp", f"ticket={other}").status_code in (200, 204)
        assert open_sse(app_server.url, "urls.lp", f"ticket={other}").status_code == 401

    def test_the_ticket_carries_the_tokens_grants(self, app_server):
        res = long_poll(app_server.url, "other", f"ticket={ticket(app_server.url)}")
        assert res.status_code == 403

    def test_forged_and_malformed(self, app_server):
        real = ticket(app_server.url)
        for forged in (real[:-2] + ("AA" if not real.endswith("AA") else "BB"), "x", "", "a" * 7000, token()):
            res = long_poll(app_server.url, "urls.lp", f"ticket={forged}")
            assert res.status_code == 401 and res.headers["WWW-Authenticate"] == INVALID_TOKEN, forged[:40]
        assert long_poll(app_server.url, "urls.lp", f"ticket={real}").status_code in (200, 204)

    def test_a_ticket_needs_a_bearer_token(self, app_server):
        assert requests.post(f"{app_server.url}/api/tickets", timeout=scaled(10)).status_code == 401

    def test_expired(self, tmp_path):
        with Gunicorn(tmp_path, env={**ENV, "SWITCHBOARD_AUTH_TICKET_TTL": "1"}) as short:
            res = requests.post(f"{short.url}/api/tickets", headers=bearer(), timeout=scaled(10))
            assert res.json()["expires_in"] == 1
            tickets = [res.json()["ticket"], ticket(short.url)]
            time.sleep(1.2)
            res = long_poll(short.url, "urls.lp", f"ticket={tickets[0]}")
            assert res.status_code == 401 and "expired" in res.json()["message"]
            assert open_sse(short.url, "urls.lp", f"ticket={tickets[1]}").status_code == 401
            assert long_poll(short.url, "urls.lp", f"ticket={ticket(short.url)}").status_code in (200, 204)

    def test_never_past_the_tokens_exp(self, app_server):
        res = requests.post(f"{app_server.url}/api/tickets", headers=bearer(token(ttl=5)), timeout=scaled(10))
        assert res.status_code == 200 and res.json()["expires_in"] <= 5


# ------------------------------------------------------------------ logs


class TestLogs:
    def test_no_log_holds_a_ticket_or_token(self, app_server, proxy, logs):
        secrets_used = []
        for base in (proxy.url, app_server.url):
            for path in ("/api/topics/urls.log/long-poll?timeout=0.2&", "/api/topics/urls.log/stream?"):
                value = ticket(base)
                secrets_used.append(value)
                res = requests.get(f"{base}{path}since=&ticket={value}", stream=True, timeout=scaled(10))
                assert res.status_code in (200, 204)
                res.close()
                res = requests.get(f"{base}{path}ticket={value}", timeout=scaled(10))  # spent: 401
                assert res.status_code == 401
            for name in ("token", "access_token", "TOKEN", "%74oken"):
                value = token(sub=f"log-{name.strip('%')}")
                secrets_used.append(value)
                conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=scaled(10))
                conn.request(
                    "GET",
                    f"/api/topics/urls.log/events?limit=1&{name}={value}&ticket={value}",
                    headers={
                        "Referer": f"{base}/sse?ticket={value}",
                        **bearer(value),
                        "Cookie": f"switchboard_token={value}",
                    },
                )
                # 400 for the names the app refuses; ?TOKEN= is no credential to it (names are
                # case-sensitive), so the Bearer header answers: logged redacted all the same.
                assert conn.getresponse().status == (200 if name == "TOKEN" else 400)
                conn.close()
        # Three credentials in one URL: more than nginx's two redaction maps take out one by one.
        value = ticket(proxy.url)
        secrets_used.append(value)
        requests.get(
            f"{proxy.url}/api/topics/urls.log/events?ticket={value}&ticket={value}&ticket={value}", timeout=scaled(10)
        )

        nginx_log = proxy.prefix / ".run" / "nginx" / "access.log"
        gunicorn_log = logs / "gunicorn-access.log"

        def redacted_lines(path) -> int:
            return path.read_text().count("ticket=[redacted]") if path.exists() else 0

        # Streams are logged when they end: nginx's once the client left, gunicorn's at the
        # next heartbeat (0.5 s) after it.
        wait_until(lambda: redacted_lines(nginx_log) >= 4, timeout=10, message="nginx logged the ticket requests")
        wait_until(
            lambda: redacted_lines(gunicorn_log) >= 16, timeout=10, message="gunicorn logged the ticket requests"
        )
        texts = {
            "nginx access log": nginx_log.read_text(),
            "gunicorn access log": gunicorn_log.read_text(),
            "nginx error log": (proxy.prefix / ".run" / "nginx" / "error.log").read_text(),
            "gunicorn output": app_server.log_path.read_text(),
        }
        for where, text in texts.items():
            for value in secrets_used:
                assert value not in text, f"a credential is in the {where}"
                for part in value.split("."):  # no JWT part either (the signature alone is a secret)
                    assert len(part) < 16 or part not in text, f"part of a credential is in the {where}"
        assert "?[redacted]" in texts["nginx access log"]  # the three-credential line
        assert "Bearer [redacted]" not in texts["gunicorn access log"]  # not in the default format at all
        assert '/sse?[redacted]"' in texts["nginx access log"]  # the Referer
        for text in (texts["nginx access log"], texts["gunicorn access log"]):
            assert re.search(
                r'"GET /api/topics/urls\.log/long-poll\?timeout=0\.2&since=&ticket=\[redacted\] HTTP/1\.1" '
                r"(200|204) ",
                text,
            ), "the rest of the request line is kept"


# ------------------------------------------------------------------ /metrics


class TestMetrics:
    def test_needs_the_token(self, app_server):
        assert requests.get(app_server.url + "/metrics", timeout=scaled(10)).status_code == 401
        for wrong in ("Bearer nope", f"Basic {METRICS_TOKEN}", f"Bearer {METRICS_TOKEN}x", f"Bearer {token()}"):
            res = requests.get(app_server.url + "/metrics", headers={"Authorization": wrong}, timeout=scaled(10))
            assert res.status_code == 401 and res.json()["error"] == "unauthorized", wrong
        res = requests.get(app_server.url + "/metrics", headers=bearer(METRICS_TOKEN), timeout=scaled(10))
        assert res.status_code == 200 and "switchboard_auth_refusals_total" in res.text

    def test_through_nginx_from_loopback(self, proxy):
        res = requests.get(proxy.url + "/metrics", headers=bearer(METRICS_TOKEN), timeout=scaled(10))
        assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
        assert requests.get(proxy.url + "/metrics", timeout=scaled(10)).status_code == 401

    def test_through_nginx_from_another_address_is_refused(self, proxy):
        """127.0.0.2 is not 127.0.0.1: from nginx's point of view, another host."""
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=scaled(10), source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/metrics", headers=bearer(METRICS_TOKEN))
            res = conn.getresponse()
            body = res.read()
        finally:
            conn.close()
        assert res.status == 403 and res.getheader("Content-Type") == "application/json"
        assert b'"error": "forbidden"' in body and b"nginx.conf" in body
        # The rest of the site is served to that address.
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=scaled(10), source_address=("127.0.0.2", 0))
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()

    def test_the_config_says_how_to_open_it(self):
        config = shipped_config()
        start = config.index("location = /metrics {")
        block = config[start : config.index("}", start)]
        assert "allow 127.0.0.1;" in block and "allow ::1;" in block and "deny all;" in block
        assert re.search(r"#\s*allow [0-9.]+;.*Prometheus", block)
