"""Long polling against a real gunicorn with the real worker class."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

JSON = {"Content-Type": "application/json"}


# One-shot requests ask the server to close the connection: a keep-alive socket left
# open by a lingering Response object would make the server's graceful stop wait for it.
ONE_SHOT = {"Connection": "close"}


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, headers={**ONE_SHOT, **kwargs.pop("headers", {})}, **kwargs)


def publish(base: str, topic: str, data, session=None) -> dict:
    res = (session or requests).post(
        f"{base}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers=JSON if session else {**JSON, **ONE_SHOT},
        timeout=scaled(10),
    )
    assert res.status_code == 201, res.text
    return res.json()


def long_poll(base: str, topic: str, session=None, **params) -> requests.Response:
    return (session or requests).get(
        f"{base}/api/topics/{topic}/long-poll", params=params, timeout=scaled(40), headers=None if session else ONE_SHOT
    )


def subscribers(base: str) -> int:
    return get(base + "/healthz", timeout=scaled(5)).json()["subscribers"]


class Background:
    """Run a request in a thread; ``result()`` waits for it (bounded)."""

    def __init__(self, fn, *args, **kwargs):
        self._result = None
        self._error = None
        self.finished_at = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self._result = fn(*args, **kwargs)
        except Exception as exc:  # handed to the test thread by result()
            self._error = exc
        self.finished_at = time.monotonic()

    def result(self, timeout: float = 10):
        self._thread.join(scaled(timeout))
        assert not self._thread.is_alive(), "the request did not finish in time"
        if self._error is not None:
            raise self._error
        return self._result


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shared server, with a 3 s maximum so abandoned polls end quickly."""
    with Gunicorn(tmp_path_factory.mktemp("longpoll"), env={"SWITCHBOARD_LONGPOLL_TIMEOUT": "3"}) as running:
        yield running


class TestAnswers:
    def test_returns_at_once_when_something_is_newer_than_since(self, server):
        ids = [publish(server.url, "lp-now", n)["id"] for n in range(3)]
        started = time.monotonic()
        res = long_poll(server.url, "lp-now", since=ids[0], timeout=3)
        assert time.monotonic() - started < scaled(1.0)
        assert res.status_code == 200 and res.headers["Cache-Control"] == "no-store"
        assert res.json() == {"events": res.json()["events"], "cursor": ids[2], "gap": False}
        assert [e["id"] for e in res.json()["events"]] == ids[1:]
        assert [e["data"] for e in res.json()["events"]] == [1, 2]

    def test_body_has_the_polling_shape_and_limit(self, server):
        ids = [publish(server.url, "lp-limit", n)["id"] for n in range(5)]
        page = long_poll(server.url, "lp-limit", since=ids[0], limit=2).json()
        assert list(page) == ["events", "cursor", "gap"]
        assert [e["id"] for e in page["events"]] == ids[1:3] and page["cursor"] == ids[2]
        polled = get(f"{server.url}/api/topics/lp-limit/events", params={"since": ids[0], "limit": 2}, timeout=5).json()
        assert page == polled, "the same body as interval polling"

    def test_parks_then_wakes_promptly_on_publish(self, server):
        last = publish(server.url, "lp-park", "old")["id"]
        waiter = Background(long_poll, server.url, "lp-park", since=last, timeout=3)
        wait_until(lambda: subscribers(server.url) >= 1, timeout=5, message="the poll to park")
        assert waiter.finished_at is None, "nothing newer: it must wait"
        published_at = time.monotonic()
        event = publish(server.url, "lp-park", "new")
        res = waiter.result()
        assert res.status_code == 200
        assert [e["id"] for e in res.json()["events"]] == [event["id"]] and res.json()["cursor"] == event["id"]
        assert waiter.finished_at - published_at < scaled(1.0), "woken by the publish, not by the timeout"

    def test_without_since_waits_for_the_next_new_event(self, server):
        publish(server.url, "lp-next", "already there")
        waiter = Background(long_poll, server.url, "lp-next", timeout=3)
        wait_until(lambda: subscribers(server.url) >= 1, timeout=5, message="the poll to park")
        event = publish(server.url, "lp-next", "fresh")
        page = waiter.result().json()
        assert [e["data"] for e in page["events"]] == ["fresh"] and page["cursor"] == event["id"]

    def test_timeout_is_a_204_without_body(self, server):
        started = time.monotonic()
        res = long_poll(server.url, "lp-quiet", timeout=0.5)
        elapsed = time.monotonic() - started
        assert res.status_code == 204 and res.content == b""
        assert "Content-Type" not in res.headers and res.headers["Cache-Control"] == "no-store"
        assert 0.45 <= elapsed < 0.5 + scaled(1.0), elapsed
        assert long_poll(server.url, "lp-quiet", timeout=0).status_code == 204

    def test_timeout_is_clamped_to_the_configured_maximum(self, start_server):
        short = start_server({"SWITCHBOARD_LONGPOLL_TIMEOUT": "0.6"})
        for params in ({"timeout": "3600"}, {}):  # too long, and the default (= the maximum)
            started = time.monotonic()
            res = long_poll(short.url, "lp-clamp", **params)
            elapsed = time.monotonic() - started
            assert res.status_code == 204 and 0.55 <= elapsed < 0.6 + scaled(1.0), (params, elapsed)

    def test_old_cursor_or_other_epoch_is_a_gap_at_once(self, start_server):
        small = start_server({"SWITCHBOARD_HISTORY_SIZE": "3"})
        ids = [publish(small.url, "lp-gap", n)["id"] for n in range(6)]
        page = long_poll(small.url, "lp-gap", since=ids[0], timeout=5).json()
        assert page["gap"] is True and [e["id"] for e in page["events"]] == ids[3:]
        foreign = "zzzz-" + ids[-1].rsplit("-", 1)[1]
        page = long_poll(small.url, "lp-gap", since=foreign, timeout=5).json()
        assert page["gap"] is True and [e["id"] for e in page["events"]] == ids[3:]

    @pytest.mark.parametrize(
        "params, code",
        [
            ({"timeout": "abc"}, "bad_timeout"),
            ({"timeout": "-1"}, "bad_timeout"),
            ({"timeout": "nan"}, "bad_timeout"),
            ({"timeout": "inf"}, "bad_timeout"),
            ({"since": "not a cursor"}, "bad_cursor"),
            ({"limit": "0"}, "bad_limit"),
            ({"limit": "1001"}, "bad_limit"),
        ],
    )
    def test_bad_parameters_are_400_json(self, server, params, code):
        started = time.monotonic()
        res = long_poll(server.url, "lp-bad", **params)
        assert res.status_code == 400 and res.json()["error"] == code and res.json()["message"]
        assert time.monotonic() - started < scaled(1.0), "refused before parking"

    def test_bad_topic_is_400_json(self, server):
        res = get(f"{server.url}/api/topics/-nope/long-poll", timeout=5)
        assert res.status_code == 400 and res.json()["error"] == "bad_topic"


class TestSeam:
    def test_no_loss_or_repeat_while_1000_events_are_published_concurrently(self, server):
        topic = "lp-race"
        start = publish(server.url, topic, "start")["id"]
        published: list[str] = []
        lock = threading.Lock()

        def publisher():
            with requests.Session() as session:
                for n in range(125):
                    event = publish(server.url, topic, n, session=session)
                    with lock:
                        published.append(event["id"])

        threads = [threading.Thread(target=publisher) for _ in range(8)]
        for t in threads:
            t.start()
        received, cursor, answers = [], start, {200: 0, 204: 0}
        with requests.Session() as http:
            while True:
                finished = not any(t.is_alive() for t in threads)
                res = long_poll(server.url, topic, session=http, since=cursor, timeout=0.5, limit=1000)
                answers[res.status_code] += 1
                if res.status_code == 204:
                    if finished:
                        break
                    continue
                page = res.json()
                assert not page["gap"]
                received += [e["id"] for e in page["events"]]
                cursor = page["cursor"]
        for t in threads:
            t.join(scaled(30))
        assert len(received) == len(set(received)) == 1000, "no event repeated"
        assert set(received) == set(published), "no event lost"
        positions = [int(i.rsplit("-", 1)[1]) for i in received]
        assert positions == sorted(positions), "in cursor order"
        assert answers[200] >= 2, answers


class TestRelease:
    def test_a_client_gone_mid_park_is_released_by_its_timeout(self, server):
        host, port = server.url.removeprefix("http://").split(":")
        wait_until(lambda: subscribers(server.url) == 0, timeout=10, message="a quiet server")
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"GET /api/topics/lp-gone/long-poll?timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: subscribers(server.url) == 1, timeout=5, message="the poll to park")
        left = time.monotonic()
        sock.close()
        wait_until(lambda: subscribers(server.url) == 0, timeout=5, message="the abandoned poll to end")
        assert time.monotonic() - left < 1 + scaled(1.0)
        # The worker is fine afterwards.
        assert long_poll(server.url, "lp-gone", timeout=0).status_code == 204

    def test_parked_polls_answer_and_release_after_a_publish(self, server):
        wait_until(lambda: subscribers(server.url) == 0, timeout=10, message="a quiet server")
        waiters = [Background(long_poll, server.url, "lp-many", timeout=3) for _ in range(20)]
        wait_until(lambda: subscribers(server.url) == 20, timeout=5, message="20 parked polls")
        event = publish(server.url, "lp-many", "for everyone")
        for waiter in waiters:
            assert [e["id"] for e in waiter.result().json()["events"]] == [event["id"]]
        assert subscribers(server.url) == 0
