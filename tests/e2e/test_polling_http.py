"""Publishing and interval polling against a real gunicorn with the real worker class."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import requests

from tests.support.servers import ROOT
from tests.support.timing import scaled

JSON = {"Content-Type": "application/json"}


def publish(session, base, topic, data, **extra):
    body = {"data": data, **extra}
    return session.post(f"{base}/api/topics/{topic}/events", data=json.dumps(body), headers=JSON, timeout=scaled(10))


def poll(session, base, topic, since=None, **params):
    if since is not None:
        params["since"] = since
    return session.get(f"{base}/api/topics/{topic}/events", params=params, timeout=scaled(10))


class TestPublish:
    def test_publish_returns_the_stored_event_with_the_session_as_sender(self, server, http):
        res = publish(http, server.url, "pub-basic", {"text": "hello"})
        assert res.status_code == 201
        event = res.json()
        assert event["topic"] == "pub-basic" and event["type"] == "message"
        assert event["data"] == {"text": "hello"}
        assert event["sender"].startswith("guest-")
        assert http.get(f"{server.url}/api/whoami", timeout=5).json()["sender"] == event["sender"]
        again = publish(http, server.url, "pub-basic", {"text": "again"}).json()
        assert again["sender"] == event["sender"], "one browser session, one sender"

    def test_two_browsers_have_two_senders(self, server):
        a = publish(requests.Session(), server.url, "pub-two", 1).json()["sender"]
        b = publish(requests.Session(), server.url, "pub-two", 2).json()["sender"]
        assert a != b

    def test_body_cannot_choose_the_sender(self, server, http):
        res = publish(http, server.url, "pub-sender", {"text": "x"}, sender="admin")
        assert res.status_code == 400
        assert res.json()["error"] == "bad_body" and "sender" in res.json()["message"]

    def test_custom_type(self, server, http):
        res = publish(http, server.url, "pub-type", 1, type="score")
        assert res.status_code == 201 and res.json()["type"] == "score"


class TestPolling:
    def test_poll_with_cursor_then_304(self, server, http):
        ids = [publish(http, server.url, "poll-a", n).json()["id"] for n in range(3)]
        first = poll(http, server.url, "poll-a")
        assert first.status_code == 200
        page = first.json()
        assert [e["data"] for e in page["events"]] == [0, 1, 2] and page["cursor"] == ids[-1]
        assert first.headers["ETag"] == f'"{ids[-1]}"'
        assert first.headers["Cache-Control"] == "no-store"

        nothing = http.get(
            f"{server.url}/api/topics/poll-a/events",
            params={"since": page["cursor"]},
            headers={"If-None-Match": first.headers["ETag"]},
            timeout=10,
        )
        assert nothing.status_code == 304 and nothing.content == b""
        assert nothing.headers["ETag"] == first.headers["ETag"]

        publish(http, server.url, "poll-a", 3)
        changed = http.get(
            f"{server.url}/api/topics/poll-a/events",
            params={"since": page["cursor"]},
            headers={"If-None-Match": first.headers["ETag"]},
            timeout=10,
        )
        assert changed.status_code == 200 and [e["data"] for e in changed.json()["events"]] == [3]

    def test_since_without_if_none_match_is_an_empty_200(self, server, http):
        last = publish(http, server.url, "poll-b", 0).json()["id"]
        res = poll(http, server.url, "poll-b", since=last)
        assert res.status_code == 200 and res.json() == {"events": [], "cursor": last, "gap": False}

    def test_limit_pages_through_history(self, server, http):
        for n in range(7):
            publish(http, server.url, "poll-c", n)
        cursor, seen = None, []
        first = poll(http, server.url, "poll-c", limit=3).json()
        assert [e["data"] for e in first["events"]] == [4, 5, 6], "no since: the newest events"
        page = poll(http, server.url, "poll-c", since=first["events"][0]["id"].rsplit("-", 1)[0] + "-0", limit=3).json()
        while page["events"]:
            seen += [e["data"] for e in page["events"]]
            cursor = page["cursor"]
            page = poll(http, server.url, "poll-c", since=cursor, limit=3).json()
        assert seen == list(range(7))

    def test_empty_topic(self, server, http):
        res = poll(http, server.url, "poll-empty")
        assert res.status_code == 200 and res.json() == {"events": [], "cursor": "", "gap": False}

    def test_no_loss_or_repeat_while_1000_events_are_published_concurrently(self, server, http):
        topic = "poll-race"
        start = publish(http, server.url, topic, "start").json()["id"]
        published: list[str] = []
        lock = threading.Lock()

        def publisher(offset):
            with requests.Session() as s:
                for n in range(125):
                    event = publish(s, server.url, topic, offset * 1000 + n).json()
                    with lock:
                        published.append(event["id"])

        threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        received, cursor = [], start
        done = lambda: not any(t.is_alive() for t in threads)  # noqa: E731
        while True:
            finished = done()
            res = poll(http, server.url, topic, since=cursor, limit=1000)
            assert res.status_code == 200
            page = res.json()
            assert not page["gap"]
            received += [e["id"] for e in page["events"]]
            cursor = page["cursor"]
            if finished and not page["events"]:
                break
        for t in threads:
            t.join(scaled(30))
        assert len(received) == len(set(received)) == 1000, "no event repeated"
        assert set(received) == set(published), "no event lost"
        positions = [int(i.rsplit("-", 1)[1]) for i in received]
        assert positions == sorted(positions), "in cursor order"


class TestGaps:
    def test_cursor_older_than_history_gets_gap(self, start_server):
        small = start_server({"SWITCHBOARD_HISTORY_SIZE": "10"})
        with requests.Session() as http:
            ids = [publish(http, small.url, "gap", n).json()["id"] for n in range(30)]
            page = poll(http, small.url, "gap", since=ids[0]).json()
            assert page["gap"] is True
            assert [e["data"] for e in page["events"]] == list(range(20, 30))
            ok = poll(http, small.url, "gap", since=ids[19]).json()
            assert ok["gap"] is False and len(ok["events"]) == 10

    def test_cursor_from_another_epoch_gets_gap(self, server, http):
        mine = publish(http, server.url, "gap-epoch", "x").json()["id"]
        foreign = "zzz9-" + mine.rsplit("-", 1)[1]
        page = poll(http, server.url, "gap-epoch", since=foreign).json()
        assert page["gap"] is True and [e["data"] for e in page["events"]] == ["x"]

    def test_restart_starts_a_new_epoch(self, start_server):
        first = start_server()
        with requests.Session() as http:
            old = publish(http, first.url, "restart", "before").json()["id"]
            port = first.port
            first.stop()
            second = start_server(port=port)
            publish(http, second.url, "restart", "after")
            page = poll(http, second.url, "restart", since=old).json()
            assert page["gap"] is True and [e["data"] for e in page["events"]] == ["after"]


class TestBadInput:
    """Every bad input gets its JSON error and status, and the server keeps serving."""

    @pytest.fixture(autouse=True)
    def still_serving(self, server):
        yield
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200

    def expect(self, res, status, code):
        assert res.status_code == status, res.text
        assert res.headers["Content-Type"].startswith("application/json")
        body = res.json()
        assert body["error"] == code and body["message"]

    @pytest.mark.parametrize("topic", ["bad%20topic", "-dash", "a" * 129, "%C3%A9t%C3%A9", "a:b:%21"])
    def test_bad_topic(self, server, http, topic):
        self.expect(http.get(f"{server.url}/api/topics/{topic}/events", timeout=5), 400, "bad_topic")
        self.expect(
            http.post(f"{server.url}/api/topics/{topic}/events", data='{"data":1}', headers=JSON, timeout=5),
            400,
            "bad_topic",
        )

    @pytest.mark.parametrize("body", ["{", "nope", '{"data": NaN}', "[" * 100000, ""])
    def test_bad_json(self, server, http, body):
        self.expect(http.post(f"{server.url}/api/topics/t/events", data=body, headers=JSON, timeout=5), 400, "bad_json")

    @pytest.mark.parametrize("body", ["[1]", "3", '{"type": "message"}', '{"data": 1, "extra": 2}'])
    def test_bad_body_shape(self, server, http, body):
        self.expect(http.post(f"{server.url}/api/topics/t/events", data=body, headers=JSON, timeout=5), 400, "bad_body")

    @pytest.mark.parametrize("type_", ["gap", "", "a b", 5])
    def test_bad_type(self, server, http, type_):
        res = http.post(
            f"{server.url}/api/topics/t/events", data=json.dumps({"type": type_, "data": 1}), headers=JSON, timeout=5
        )
        self.expect(res, 400, "bad_type")

    @pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
    def test_not_json(self, server, http, content_type):
        headers = {"Content-Type": content_type} if content_type else {}
        res = http.post(f"{server.url}/api/topics/t/events", data='{"data": 1}', headers=headers, timeout=5)
        self.expect(res, 415, "unsupported_media_type")

    def test_body_over_the_limit(self, server, http):
        big = json.dumps({"data": "x" * (1024 * 1024 + 10)})
        self.expect(
            http.post(f"{server.url}/api/topics/t/events", data=big, headers=JSON, timeout=10), 413, "too_large"
        )

    def test_wrong_method(self, server, http):
        res = http.put(f"{server.url}/api/topics/t/events", data="{}", headers=JSON, timeout=5)
        self.expect(res, 405, "method_not_allowed")
        assert "POST" in res.headers["Allow"] and "GET" in res.headers["Allow"]

    @pytest.mark.parametrize("since", ["garbage", "x-y", "a-1-2-3", "%0A"])
    def test_bad_since(self, server, http, since):
        self.expect(http.get(f"{server.url}/api/topics/t/events?since={since}", timeout=5), 400, "bad_cursor")

    @pytest.mark.parametrize("limit", ["0", "-1", "1001", "ten", "1.5"])
    def test_bad_limit(self, server, http, limit):
        self.expect(poll(http, server.url, "t", limit=limit), 400, "bad_limit")

    def test_unknown_path(self, server, http):
        self.expect(http.get(f"{server.url}/api/nope", timeout=5), 404, "not_found")


class TestPages:
    @pytest.mark.parametrize(
        "path", ["/", "/polling", "/long-polling", "/sse", "/websocket", "/stomp", "/compare", "/doctor"]
    )
    def test_page_renders(self, server, http, path):
        res = http.get(server.url + path, timeout=5)
        assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/html")
        assert "<script" not in res.text.split("</body>")[0].split("<script src")[0].split("<main")[1], (
            "no inline script in the page body"
        )

    def test_static_files_and_no_cdn(self, server, http):
        page = http.get(server.url + "/polling", timeout=5).text
        assert "https://" not in page and "http://" not in page.replace(server.url, "")
        assert http.get(server.url + "/static/js/common.js", timeout=5).status_code == 200
        assert http.get(server.url + "/static/css/site.css", timeout=5).status_code == 200


class TestStartup:
    def run_gunicorn(self, env):
        return subprocess.run(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--check-config", "wsgi:app"],
            cwd=ROOT,
            env={**env, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=scaled(60),
        )

    @pytest.mark.parametrize(
        "name,value",
        [
            ("SWITCHBOARD_HISTORY_SIZE", "lots"),
            ("SWITCHBOARD_QUEUE_SIZE", "0"),
            ("PORT", "99999"),
            ("SWITCHBOARD_LONGPOLL_TIMEOUT", "-1"),
            ("SWITCHBOARD_ALLOWED_ORIGINS", "not an origin"),
            ("SWITCHBOARD_REDIS_URL", "http://x"),
            ("SWITCHBOARD_BEHIND_PROXY", "maybe"),
        ],
    )
    def test_bad_setting_stops_startup_naming_the_variable(self, name, value):
        result = self.run_gunicorn({name: value})
        assert result.returncode != 0
        assert name in result.stderr + result.stdout

    def test_several_workers_without_redis_are_refused(self):
        result = self.run_gunicorn({"WEB_CONCURRENCY": "2"})
        assert result.returncode != 0
        assert "SWITCHBOARD_REDIS_URL" in result.stderr + result.stdout

    def test_create_app_reports_the_variable(self, monkeypatch):
        from app import create_app
        from app.config import ConfigError

        monkeypatch.setenv("SWITCHBOARD_SSE_HEARTBEAT", "often")
        with pytest.raises(ConfigError, match="SWITCHBOARD_SSE_HEARTBEAT"):
            create_app()
