"""Several topics on one SSE stream and one long poll, against a real gunicorn.

``GET /api/stream?topic=a&topic=b`` and ``GET /api/long-poll?topic=a&topic=b&since=``:
each event names its topic, the id / cursor is a compound cursor that resumes every
topic, and the seam rule holds per topic (every event once, in order, or a gap) while
publishers race the stream's opening and its reconnects.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from urllib.parse import urlencode

import pytest
import requests

from tests.e2e.test_sse import RawStream, TcpProxy, node_client, parse_sse  # noqa: F401 (node_client: a fixture)
from tests.support.auth import auth_env, bearer, mint
from tests.support.redis_server import RedisServer
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until

JSON = {"Content-Type": "application/json"}
ONE_SHOT = {"Connection": "close"}


# ----------------------------------------------------------------------------- helpers


def publish(base: str, topic: str, data, session=None, headers=None) -> dict:
    res = (session or requests).post(
        f"{base}/api/topics/{topic}/events",
        data=json.dumps({"data": data}),
        headers={**JSON, **(headers or {}), **({} if session else ONE_SHOT)},
        timeout=scaled(10),
    )
    assert res.status_code == 201, res.text
    return res.json()


def subscribers(base: str) -> int:
    return requests.get(base + "/healthz", headers=ONE_SHOT, timeout=scaled(5)).json()["subscribers"]


def query(topics: list[str], **params) -> str:
    return urlencode([("topic", topic) for topic in topics] + list(params.items()))


def open_stream(base: str, topics: list[str], headers: dict | None = None, **params) -> RawStream:
    """A multi-topic stream, its head and opening read."""
    raw = RawStream(base, f"/api/stream?{query(topics, **params)}", headers).read_head()
    assert raw.status == 200, raw.status
    raw.read_chunk()  # the opening: retry, comment, maybe the starting id
    return raw


def opening_id(raw: RawStream) -> str:
    """The compound cursor a stream starts from (its opening's id: line)."""
    events, _, _ = parse_sse(raw.chunks[0][1] + b"data: x\n\n")  # a data line makes the id visible
    return events[0]["id"]


def messages(events: list[dict]) -> list[dict]:
    """The event envelopes of the stream's messages, each with the SSE id it came with."""
    return [{**json.loads(e["data"]), "sse_id": e["id"]} for e in events if e["type"] != "gap"]


def long_poll(base: str, topics: list[str], session=None, headers=None, **params) -> requests.Response:
    return (session or requests).get(
        f"{base}/api/long-poll?{query(topics, **params)}",
        timeout=scaled(40),
        headers={**(headers or {}), **({} if session else ONE_SHOT)},
    )


def seq(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


class Publishers:
    """Threads publishing ``count`` events each to random topics; ``published[topic]``
    holds the ids each publish returned (their order is checked by sequence number)."""

    def __init__(self, base: str, topics: list[str], threads: int, count: int):
        self.published: dict[str, list[str]] = {topic: [] for topic in topics}
        self.total = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(base, topics, count, n)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, base: str, topics: list[str], count: int, seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            for n in range(count):
                topic = rng.choice(topics)
                event = publish(base, topic, n, session=session)
                with self._lock:
                    self.published[topic].append(event["id"])
                    self.total += 1

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(scaled(60))
        assert not self.alive(), "the publishers did not finish"


def follow_with_reconnects(
    base: str, topics: list[str], cursor: str, publishers: Publishers, per_connection: int
) -> tuple[dict[str, list[str]], int]:
    """Read the topics' stream as a client that drops its connection after every
    ``per_connection`` events and resumes with the last id it saw, until it has all the
    publishers' events. Returns the event ids received per topic, and the connections made."""
    received: dict[str, list[str]] = {topic: [] for topic in topics}
    connections = 0
    while True:
        have = sum(map(len, received.values()))
        if not publishers.alive() and have >= publishers.total:
            return received, connections

        def enough(events: list[dict]) -> bool:
            got = len(messages(events))
            return got >= per_connection or (not publishers.alive() and have + got >= publishers.total)

        with open_stream(base, topics, {"Last-Event-ID": cursor}) as raw:
            connections += 1
            assert opening_id(raw) == cursor, "each connection starts where the last one stopped"
            events = raw.read_until(enough, timeout=15)
        assert not [e for e in events if e["type"] == "gap"], "no gap: history holds everything"
        for message in messages(events):
            received[message["topic"]].append(message["id"])
            cursor = message["sse_id"]


def assert_each_topic_once_in_order(received: dict[str, list[str]], published: dict[str, list[str]]) -> None:
    for topic, ids in published.items():
        got = received.get(topic, [])
        assert len(got) == len(set(got)), f"{topic}: an event repeated"
        assert set(got) == set(ids), f"{topic}: {len(set(ids) - set(got))} lost, {len(set(got) - set(ids))} foreign"
        assert got == sorted(got, key=seq), f"{topic}: out of order"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shared server: a short heartbeat, so a stream a test left is released quickly,
    and a short long-poll maximum."""
    env = {"SWITCHBOARD_SSE_HEARTBEAT": "1", "SWITCHBOARD_LONGPOLL_TIMEOUT": "3", "SWITCHBOARD_PUBLISH_RATE": "0"}
    with Gunicorn(tmp_path_factory.mktemp("multitopic"), env=env) as running:
        yield running


@pytest.fixture
def own_server(start_server):
    """``start_server`` with a short heartbeat (a quick stop after the test)."""

    def start(env: dict[str, str] | None = None) -> Gunicorn:
        return start_server({"SWITCHBOARD_SSE_HEARTBEAT": "0.3", "SWITCHBOARD_PUBLISH_RATE": "0", **(env or {})})

    return start


# --------------------------------------------------------------------------- the wire


class TestStream:
    def test_every_topic_on_one_stream_each_event_naming_its_topic_with_a_compound_id(self, server):
        old_a = publish(server.url, "mt-wire-a", "old a")["id"]
        old_b = publish(server.url, "mt-wire-b", "old b")["id"]
        with open_stream(server.url, ["mt-wire-a", "mt-wire-b", "mt-wire-c"]) as raw:
            assert raw.headers["content-type"] == "text/event-stream"
            assert raw.headers["cache-control"] == "no-cache" and raw.headers["x-accel-buffering"] == "no"
            _, comments, retry = parse_sse(raw.chunks[0][1])
            assert retry == 2000 and "mt-wire-a, mt-wire-b, mt-wire-c" in comments[0]
            start = opening_id(raw)
            assert start == f"mt-wire-a~{old_a}~mt-wire-b~{old_b}", (
                "the opening names where each topic with history starts (c has none yet)"
            )
            sent = [publish(server.url, topic, n) for n, topic in enumerate(["mt-wire-c", "mt-wire-a", "mt-wire-b"])]
            got = messages(raw.read_events(3))
            assert [(m["topic"], m["id"], m["data"]) for m in got] == [
                (e["topic"], e["id"], e["data"]) for e in sent
            ], "live only (nothing old replayed), each event with its topic"
            assert [m["sse_id"] for m in got] == [
                f"mt-wire-a~{old_a}~mt-wire-b~{old_b}~mt-wire-c~{sent[0]['id']}",
                f"mt-wire-a~{sent[1]['id']}~mt-wire-b~{old_b}~mt-wire-c~{sent[0]['id']}",
                f"mt-wire-a~{sent[1]['id']}~mt-wire-b~{sent[2]['id']}~mt-wire-c~{sent[0]['id']}",
            ], "each id is the compound cursor after that event"
            for block in raw.body.split(b"\n\n")[1:-1]:
                if block != b": ping":
                    id_line, event_line, data_line = block.split(b"\n")
                    assert id_line.startswith(b"id: ") and event_line == b"event: message", block

    def test_the_one_topic_urls_stay(self, server):
        event = publish(server.url, "mt-one", "x")
        res = requests.get(f"{server.url}/api/topics/mt-one/events", headers=ONE_SHOT, timeout=scaled(5))
        assert res.json()["cursor"] == event["id"]
        with RawStream(server.url, "/api/topics/mt-one/stream", {"Last-Event-ID": "zz-0"}) as raw:
            assert raw.read_head().status == 200

    BAD_LISTS = [
        ([], {}, "bad_topic"),
        (["ok", "-bad"], {}, "bad_topic"),
        (["ok", ""], {}, "bad_topic"),
        (["ok", "with/slash"], {}, "bad_topic"),
        (["ok", "x" * 129], {}, "bad_topic"),
        (["ok", "twice", "twice"], {}, "bad_topic"),
        ([f"t{n}" for n in range(17)], {}, "too_many_topics"),
        (["ok"], {"since": "ep-1"}, "bad_cursor"),  # a plain cursor is not a compound one
        (["ok"], {"since": "ok~ep-1~other"}, "bad_cursor"),
        (["ok"], {"since": "ok~not-a-cursor"}, "bad_cursor"),
        (["ok"], {"since": "ok~ep-1~ok~ep-2"}, "bad_cursor"),
        (["ok"], {"last_event_id": "~".join(f"t{n}~ep-{n}" for n in range(17))}, "bad_cursor"),
    ]

    @pytest.mark.parametrize("path", ["/api/stream", "/api/long-poll"])
    @pytest.mark.parametrize("topics, params, code", BAD_LISTS)
    def test_bad_and_oversized_topic_lists_and_cursors_are_400(self, server, path, topics, params, code):
        started = time.monotonic()
        res = requests.get(f"{server.url}{path}?{query(topics, **params)}", headers=ONE_SHOT, timeout=scaled(10))
        assert res.status_code == 400 and res.json()["error"] == code, res.text
        assert res.headers["Content-Type"] == "application/json" and res.json()["message"]
        assert time.monotonic() - started < scaled(2), "refused at once, not after parking"

    def test_an_oversized_last_event_id_header_is_400(self, server):
        header = "~".join(f"topic-{n}~zz-{n}" for n in range(100))
        with RawStream(server.url, f"/api/stream?{query(['ok'])}", {"Last-Event-ID": header}) as raw:
            assert raw.read_head().status == 400

    def test_a_multi_topic_stream_is_one_connection_with_one_subscription_per_topic(self, own_server):
        srv = own_server({"SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT": "1"})
        with open_stream(srv.url, ["mt-lim-a", "mt-lim-b", "mt-lim-c"]):
            assert subscribers(srv.url) == 3
            res = requests.get(
                f"{srv.url}/api/stream?{query(['mt-lim-d', 'mt-lim-e'])}", headers=ONE_SHOT, timeout=scaled(5)
            )
            assert res.status_code == 429 and res.json()["error"] == "too_many_client_connections"
            res = long_poll(srv.url, ["mt-lim-d", "mt-lim-e"], timeout=1)
            assert res.status_code == 429
            assert subscribers(srv.url) == 3, "a refused request subscribed to nothing"
        wait_until(lambda: subscribers(srv.url) == 0, timeout=5, message="the stream's subscriptions released")
        assert long_poll(srv.url, ["mt-lim-d", "mt-lim-e"], timeout=0).status_code == 204, "its slot is free again"

    def test_head_request_leaks_no_subscription(self, own_server):
        srv = own_server()
        res = requests.head(
            f"{srv.url}/api/stream?{query(['mt-head-a', 'mt-head-b'])}", headers=ONE_SHOT, timeout=scaled(5)
        )
        assert res.status_code == 200 and res.headers["Content-Type"] == "text/event-stream"
        assert subscribers(srv.url) == 0

    def test_too_many_topics_is_counted_as_a_limit_rejection(self, own_server):
        srv = own_server({"SWITCHBOARD_MAX_STREAM_TOPICS": "2"})
        assert long_poll(srv.url, ["mt-max-a", "mt-max-b"], timeout=0).status_code == 204
        res = long_poll(srv.url, ["mt-max-a", "mt-max-b", "mt-max-c"], timeout=0)
        assert res.status_code == 400 and res.json()["error"] == "too_many_topics"
        assert "at most 2 topics" in res.json()["message"]
        metrics = requests.get(f"{srv.url}/metrics", headers=ONE_SHOT, timeout=scaled(5)).text
        assert 'switchboard_limit_rejections_total{limit="stream_topics"} 1.0' in metrics


def test_shutdown_ends_a_multi_topic_stream_with_a_retry_and_answers_a_parked_poll_204(own_server):
    srv = own_server({"SWITCHBOARD_SSE_HEARTBEAT": "5"})
    topics = ["mt-bye-a", "mt-bye-b"]
    raw = open_stream(srv.url, topics)
    answer: dict = {}
    poller = threading.Thread(target=lambda: answer.update(res=long_poll(srv.url, topics, timeout=20)))
    poller.start()
    wait_until(lambda: subscribers(srv.url) == 4, timeout=5, message="a stream and a poll on two topics each")
    srv.proc.send_signal(signal.SIGTERM)
    try:
        while raw.read_chunk(timeout=10) is not None:
            pass
        assert b"server shutting down, reconnect with Last-Event-ID" in raw.body
        poller.join(scaled(10))
        assert answer["res"].status_code == 204
        assert srv.proc.wait(scaled(10)) == 0
    finally:
        raw.close()


# ------------------------------------------------------------------------ resumption


class TestResume:
    def test_the_compound_cursor_resumes_every_topic_after_a_disconnect(self, server):
        topics = ["mt-res-a", "mt-res-b", "mt-res-c"]
        with open_stream(server.url, topics) as raw:
            first = [publish(server.url, topic, f"{topic} 1") for topic in topics]
            got = messages(raw.read_events(3))
            assert [m["id"] for m in got] == [e["id"] for e in first]
            last = got[-1]["sse_id"]
        missed = [publish(server.url, topic, f"{topic} {n}") for n in (2, 3) for topic in ("mt-res-a", "mt-res-c")]
        with open_stream(server.url, topics, {"Last-Event-ID": last}) as raw:
            assert opening_id(raw) == last, "the resumed stream starts where the client was"
            got = messages(raw.read_events(4))
            assert [m["id"] for m in got] == [e["id"] for e in missed], "nothing lost, nothing repeated"
            assert not [e for e in raw.events() if e["type"] == "gap"]
            live = publish(server.url, "mt-res-b", "b 2")
            (event,) = messages(raw.read_events(5))[4:]
            assert event["id"] == live["id"] and event["topic"] == "mt-res-b"

    def test_last_event_id_query_on_a_first_connection_and_topics_it_does_not_name(self, server):
        a = [publish(server.url, "mt-q-a", n)["id"] for n in range(3)]
        old_b = publish(server.url, "mt-q-b", "old b")["id"]
        cursor = f"mt-q-a~{a[0]}~mt-q-gone~{a[0]}"  # names a topic no longer followed: ignored
        with open_stream(server.url, ["mt-q-a", "mt-q-b"], last_event_id=cursor) as raw:
            assert opening_id(raw) == f"mt-q-a~{a[0]}~mt-q-b~{old_b}", "b, not named, starts from now"
            new_b = publish(server.url, "mt-q-b", "new b")["id"]
            got = messages(raw.read_events(3))
            assert [m["id"] for m in got] == a[1:] + [new_b], "a replayed from its cursor, b live only"

    def test_a_gap_in_one_topic_only(self, own_server):
        small = own_server({"SWITCHBOARD_HISTORY_SIZE": "5"})
        topics = ["mt-gap-a", "mt-gap-b"]
        with open_stream(small.url, topics) as raw:
            publish(small.url, "mt-gap-a", "a0")
            publish(small.url, "mt-gap-b", "b0")
            last = messages(raw.read_events(2))[-1]["sse_id"]
        lost_a = [publish(small.url, "mt-gap-a", n)["id"] for n in range(12)]  # a overflows its history
        kept_b = [publish(small.url, "mt-gap-b", n)["id"] for n in range(2)]
        with open_stream(small.url, topics, {"Last-Event-ID": last}) as raw:
            events = raw.read_events(7)
            gaps = [e for e in events if e["type"] == "gap"]
            assert [json.loads(g["data"]) for g in gaps] == [{"topic": "mt-gap-a", "slow": False}], "a gap for a only"
            assert gaps[0]["id"] == last, "the gap's id is the client's position: nothing moved"
            got = messages(events)
            assert [m["id"] for m in got if m["topic"] == "mt-gap-a"] == lost_a[-5:], "then what history still holds"
            assert [m["id"] for m in got if m["topic"] == "mt-gap-b"] == kept_b, "b resumes exactly"
            assert events.index(gaps[0]) < min(
                i for i, e in enumerate(events) if e["type"] != "gap" and json.loads(e["data"])["topic"] == "mt-gap-a"
            )

    def test_seam_rule_across_topics_while_publishers_race_the_opening_and_the_reconnects(self, server):
        topics = ["mt-seam-a", "mt-seam-b", "mt-seam-c"]
        start = "~".join(f"{topic}~{publish(server.url, topic, 'start')['id']}" for topic in topics)
        publishers = Publishers(server.url, topics, threads=4, count=90)
        wait_until(lambda: publishers.total >= 40, timeout=10, message="the first events")
        received, connections = follow_with_reconnects(server.url, topics, start, publishers, per_connection=25)
        publishers.join()
        assert connections >= 3, connections
        assert_each_topic_once_in_order(received, publishers.published)


# ------------------------------------------------------ a real EventSource (npm package)


class TestEventSourcePackage:
    def test_reconnects_with_the_compound_id_even_before_any_event_and_gets_every_topic(self, own_server, node_client):
        srv = own_server({"SWITCHBOARD_SSE_RETRY_MS": "300"})
        topics = ["mt-node-a", "mt-node-b"]
        old = {topic: publish(srv.url, topic, "old")["id"] for topic in topics}
        proxy = TcpProxy(srv.port)
        try:
            es = node_client(f"{proxy.url}/api/stream?{query(topics)}")
            assert es.expect(lambda r: r["kind"] == "request")["lastEventId"] is None
            es.expect(lambda r: r["kind"] == "open")
            wait_until(lambda: subscribers(srv.url) == 2, timeout=5, message="the stream's subscriptions")
            proxy.drop_all()  # before any event: only the opening's id is known
            es.expect(lambda r: r["kind"] == "error", what="the drop to be noticed")
            missed = publish(srv.url, "mt-node-b", "while away")["id"]
            again = es.expect(lambda r: r["kind"] == "request", what="the reconnect")
            assert again["lastEventId"] == f"mt-node-a~{old['mt-node-a']}~mt-node-b~{old['mt-node-b']}"
            (event,) = es.events(1)
            assert json.loads(event["data"])["id"] == missed, "the event published while away"
            proxy.drop_all()
            es.expect(lambda r: r["kind"] == "error", what="the second drop")
            missed_a = publish(srv.url, "mt-node-a", "away again")["id"]
            again = es.expect(lambda r: r["kind"] == "request", what="the second reconnect")
            assert again["lastEventId"] == event["id"] == f"mt-node-a~{old['mt-node-a']}~mt-node-b~{missed}"
            (event,) = es.events(1)
            assert json.loads(event["data"])["id"] == missed_a
            assert not [r for r in es.records if r["kind"] == "event" and r["type"] == "gap"]
        finally:
            proxy.close()


# ----------------------------------------------------------------------- long polling


class TestLongPoll:
    def test_returns_at_once_with_what_is_newer_and_a_compound_cursor(self, server):
        a = [publish(server.url, "mt-lp-a", n)["id"] for n in range(3)]
        b = [publish(server.url, "mt-lp-b", n)["id"] for n in range(2)]
        since = f"mt-lp-a~{a[0]}~mt-lp-b~{b[0]}"
        started = time.monotonic()
        res = long_poll(server.url, ["mt-lp-a", "mt-lp-b"], since=since, timeout=3)
        assert time.monotonic() - started < scaled(1.0)
        assert res.status_code == 200 and res.headers["Cache-Control"] == "no-store"
        page = res.json()
        assert list(page) == ["events", "cursor", "gap", "gaps"] and page["gap"] is False and page["gaps"] == []
        assert sorted((e["topic"], e["id"]) for e in page["events"]) == sorted(
            [("mt-lp-a", a[1]), ("mt-lp-a", a[2]), ("mt-lp-b", b[1])]
        )
        assert [e["id"] for e in page["events"] if e["topic"] == "mt-lp-a"] == a[1:], "in order per topic"
        assert page["cursor"] == f"mt-lp-a~{a[2]}~mt-lp-b~{b[1]}"
        # The limit counts across topics; the cursor moves only past what was answered.
        page = long_poll(server.url, ["mt-lp-a", "mt-lp-b"], since=since, limit=1).json()
        assert [(e["topic"], e["id"]) for e in page["events"]] == [("mt-lp-a", a[1])], "the oldest first"
        assert page["cursor"] == f"mt-lp-a~{a[1]}~mt-lp-b~{b[0]}"
        rest = long_poll(server.url, ["mt-lp-a", "mt-lp-b"], since=page["cursor"], limit=10).json()
        assert [(e["topic"], e["id"]) for e in rest["events"]] == [("mt-lp-a", a[2]), ("mt-lp-b", b[1])]

    def test_parks_and_wakes_on_any_topic_then_204_on_timeout(self, server):
        topics = ["mt-park-a", "mt-park-b", "mt-park-c"]
        since = "~".join(f"{topic}~{publish(server.url, topic, 'old')['id']}" for topic in topics)
        result: dict = {}

        def poll():
            result["res"] = long_poll(server.url, topics, since=since, timeout=3)
            result["at"] = time.monotonic()

        waiter = threading.Thread(target=poll)
        waiter.start()
        wait_until(lambda: subscribers(server.url) >= 3, timeout=5, message="the poll to park on three topics")
        assert "res" not in result, "nothing newer: it must wait"
        published_at = time.monotonic()
        event = publish(server.url, "mt-park-c", "news")
        waiter.join(scaled(10))
        page = result["res"].json()
        assert result["res"].status_code == 200 and result["at"] - published_at < scaled(1.0)
        assert [(e["topic"], e["id"]) for e in page["events"]] == [("mt-park-c", event["id"])]
        assert page["cursor"] == since.rsplit("~", 1)[0] + f"~{event['id']}"
        started = time.monotonic()
        res = long_poll(server.url, topics, since=page["cursor"], timeout=0.5)
        assert res.status_code == 204 and res.content == b"" and "Content-Type" not in res.headers
        assert 0.45 <= time.monotonic() - started < 0.5 + scaled(1.0)

    def test_without_since_waits_and_its_cursor_pins_every_topic_with_history(self, server):
        old_a = publish(server.url, "mt-first-a", "old")["id"]
        result: dict = {}
        waiter = threading.Thread(
            target=lambda: result.update(
                res=long_poll(server.url, ["mt-first-a", "mt-first-b", "mt-first-new"], timeout=3)
            )
        )
        waiter.start()
        wait_until(lambda: subscribers(server.url) >= 3, timeout=5, message="the poll to park")
        event = publish(server.url, "mt-first-b", "first b")
        waiter.join(scaled(10))
        page = result["res"].json()
        assert [e["id"] for e in page["events"]] == [event["id"]]
        assert page["cursor"] == f"mt-first-a~{old_a}~mt-first-b~{event['id']}", (
            "a, quiet, is pinned where it stood; a topic never published to has no position yet"
        )

    def test_a_gap_names_its_topic_only(self, own_server):
        small = own_server({"SWITCHBOARD_HISTORY_SIZE": "3"})
        a = [publish(small.url, "mt-lpgap-a", n)["id"] for n in range(7)]
        b = [publish(small.url, "mt-lpgap-b", n)["id"] for n in range(2)]
        page = long_poll(
            small.url, ["mt-lpgap-a", "mt-lpgap-b"], since=f"mt-lpgap-a~{a[0]}~mt-lpgap-b~{b[0]}", timeout=3
        ).json()
        assert page["gap"] is True and page["gaps"] == ["mt-lpgap-a"]
        assert [e["id"] for e in page["events"] if e["topic"] == "mt-lpgap-a"] == a[-3:]
        assert [e["id"] for e in page["events"] if e["topic"] == "mt-lpgap-b"] == b[1:]
        foreign = long_poll(
            small.url, ["mt-lpgap-a", "mt-lpgap-b"], since=f"mt-lpgap-a~zzzz-{seq(a[-1])}~mt-lpgap-b~{b[-1]}", timeout=3
        ).json()
        assert foreign["gaps"] == ["mt-lpgap-a"], "another epoch's cursor is a gap, never matched by number"
        again = long_poll(small.url, ["mt-lpgap-a", "mt-lpgap-b"], since=page["cursor"], timeout=0.2)
        assert again.status_code == 204, "the gap is told once"

    def test_no_loss_or_repeat_per_topic_while_publishers_race(self, server):
        topics = ["mt-lprace-a", "mt-lprace-b", "mt-lprace-c"]
        cursor = "~".join(f"{topic}~{publish(server.url, topic, 'start')['id']}" for topic in topics)
        publishers = Publishers(server.url, topics, threads=6, count=100)
        received: dict[str, list[str]] = {topic: [] for topic in topics}
        answers = {200: 0, 204: 0}
        with requests.Session() as http:
            while True:
                finished = not publishers.alive()
                res = long_poll(server.url, topics, session=http, since=cursor, timeout=0.5, limit=37)
                answers[res.status_code] += 1
                if res.status_code == 204:
                    if finished:
                        break
                    continue
                page = res.json()
                assert not page["gap"]
                for event in page["events"]:
                    received[event["topic"]].append(event["id"])
                cursor = page["cursor"]
        publishers.join()
        assert_each_topic_once_in_order(received, publishers.published)
        assert answers[200] >= 5, answers


# --------------------------------------------------------------------- access control


ALICE = dict(subscribe=["room.*", "user.{sub}"], publish=["room.*"])


@pytest.fixture(scope="class")
def auth_server(tmp_path_factory):
    env = auth_env(
        SWITCHBOARD_ANONYMOUS_SUBSCRIBE="open.*", SWITCHBOARD_PUBLISH_RATE="0", SWITCHBOARD_SSE_HEARTBEAT="0.5"
    )
    with Gunicorn(tmp_path_factory.mktemp("multitopic-auth"), env=env) as running:
        yield running


class TestAccess:
    @pytest.mark.parametrize("path", ["/api/stream", "/api/long-poll"])
    def test_a_forbidden_topic_among_allowed_ones_refuses_the_request_naming_it(self, auth_server, path):
        headers = {**bearer(mint("alice", **ALICE)), **ONE_SHOT}
        url = f"{auth_server.url}{path}?{query(['room.a', 'user.bob', 'user.alice'], timeout=5)}"
        started = time.monotonic()
        res = requests.get(url, headers=headers, timeout=scaled(10))
        assert res.status_code == 403 and res.json()["error"] == "forbidden", res.text
        assert "'user.bob'" in res.json()["message"]
        assert time.monotonic() - started < scaled(2)
        res = requests.get(
            f"{auth_server.url}{path}?{query(['open.news', 'room.a'], timeout=5)}", headers=ONE_SHOT, timeout=scaled(10)
        )
        assert res.status_code == 401 and "'room.a'" in res.json()["message"], "anonymous: sign in for room.a"
        assert res.headers["WWW-Authenticate"] == 'Bearer realm="switchboard"'
        assert subscribers(auth_server.url) == 0, "a refused request subscribed to nothing"

    def test_allowed_topics_stream_and_the_stream_ends_with_its_token(self, auth_server):
        token = mint("alice", **ALICE, lifetime=3)
        with open_stream(auth_server.url, ["room.mt", "user.alice"], bearer(token)) as raw:
            sent = publish(auth_server.url, "room.mt", "hello", headers=bearer(token))
            events = raw.read_until(lambda events: any(e["type"] == "expired" for e in events), timeout=8)
            assert [e["type"] for e in events] == ["message", "expired"]
            assert json.loads(events[0]["data"])["id"] == sent["id"]
            assert json.loads(events[1]["data"])["error"] == "unauthorized"
            assert raw.read_chunk(timeout=5) is None, "the stream ends after event: expired"


# ------------------------------------------------------------------------------- Redis


@pytest.mark.redis
def test_resume_with_the_compound_cursor_on_redis_across_workers(tmp_path, start_server):
    with RedisServer(tmp_path / "redis") as redis_server:
        srv = start_server(
            {
                "SWITCHBOARD_REDIS_URL": redis_server.url,
                "WEB_CONCURRENCY": "2",
                "SWITCHBOARD_SSE_HEARTBEAT": "0.3",
                "SWITCHBOARD_PUBLISH_RATE": "0",
            }
        )
        topics = ["mt-redis-a", "mt-redis-b", "mt-redis-c"]
        cursor = "~".join(f"{topic}~{publish(srv.url, topic, 'start')['id']}" for topic in topics)
        publishers = Publishers(srv.url, topics, threads=3, count=40)
        # Each connection lands on whichever of the two workers accepts it.
        received, _ = follow_with_reconnects(srv.url, topics, cursor, publishers, per_connection=15)
        cursor = "~".join(f"{topic}~{received[topic][-1]}" for topic in topics)
        publishers.join()
        assert_each_topic_once_in_order(received, publishers.published)
        # The long poll reads the same compound cursors.
        late = publish(srv.url, "mt-redis-b", "late")["id"]
        page = long_poll(srv.url, topics, since=cursor, timeout=2).json()
        assert [e["id"] for e in page["events"]] == [late] and "mt-redis-b~" + late in page["cursor"]
        srv.stop()
