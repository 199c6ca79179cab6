"""Scale-out with Redis: several gunicorn workers (and hosts) serve one audience.

Real processes only: redis-server, gunicorn with 4 workers of the real worker class
(monkey-patched gevent, as in production), clients over real sockets. Which worker holds
a connection is read from /proc (the server-side socket's owner), so "a subscriber on
another worker" is checked, not assumed; new connections land on whichever worker
accepts first.

Subscribers are threads that behave like the browser clients: SSE reconnects with
Last-Event-ID, long polling and interval polling carry their cursor and retry a 503,
WebSocket subscribes with ``since``. Each records what it received, so the assertions
are "every published event, in order, exactly once" for each of them.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time

import pytest
import requests

from tests.support.redis_server import RedisServer
from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until
from tests.support.wsclients import ConnectionEnded, JsonClient, ws_url

pytestmark = pytest.mark.redis

JSON = {"Content-Type": "application/json"}
ONE_SHOT = {"Connection": "close"}
WORKERS = 4
SERVER_ENV = {
    "WEB_CONCURRENCY": str(WORKERS),
    "SWITCHBOARD_SSE_HEARTBEAT": "1",
    "SWITCHBOARD_LONGPOLL_TIMEOUT": "2",
    "SWITCHBOARD_WS_PING_INTERVAL": "0",
}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    """gunicorn with 4 workers on the module's Redis."""
    env = {**SERVER_ENV, "SWITCHBOARD_REDIS_URL": redis_server.url}
    with Gunicorn(tmp_path_factory.mktemp("cluster"), env=env) as server:
        yield server


# -- which worker holds a connection ----------------------------------------------------


def _server_socket_inode(server_port: int, client_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    return fields[9]
    return None


def worker_of(server: Gunicorn, client_port: int) -> int:
    """The pid of the worker that accepted the connection from ``client_port``."""

    def find() -> int | None:
        inode = _server_socket_inode(server.port, client_port)
        if inode is None:
            return None
        for pid in server.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        return None  # accepted by the kernel, not yet by a worker

    return wait_until(find, timeout=5, interval=0.01, message=f"the worker of client port {client_port}")


def connections_on_workers(server: Gunicorn, wanted: int, attempts: int = 120) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections on ``wanted`` different workers (as many as ``attempts`` allow).

    A worker that is idle tends to win every accept, so each connection makes a request
    before the next one is opened; that spreads them.
    """
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(attempts):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(10))
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        pid = worker_of(server, conn.sock.getsockname()[1])
        if pid in found:
            conn.close()
        else:
            found[pid] = conn
            if len(found) == wanted:
                break
    return found


# -- clients ----------------------------------------------------------------------------


def publish(conn: http.client.HTTPConnection, topic: str, data) -> tuple[int, dict]:
    conn.request("POST", f"/api/topics/{topic}/events", body=json.dumps({"data": data}), headers=JSON)
    res = conn.getresponse()
    return res.status, json.loads(res.read() or b"null")


class Subscriber(threading.Thread):
    """A client thread that records what it receives: event ids, and "gap" markers."""

    kind = "?"

    def __init__(self, server: Gunicorn, topic: str, since: str | None):
        super().__init__(daemon=True)
        self.base = server.url
        self.server = server
        self.topic = topic
        self.cursor = since
        self.items: list[str] = []
        self.unavailable = 0  # 503 answers seen
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def events(self) -> list[str]:
        return [item for item in self.items if item != "gap"]

    def stop(self) -> None:
        self.stopping.set()
        self.join(scaled(10))
        assert not self.is_alive(), f"{self} did not stop"

    def discard(self) -> None:
        """Close a connection opened by ``open`` without starting the thread."""

    def __repr__(self) -> str:
        return f"<{self.kind} subscriber, {len(self.events())} events, {self.unavailable} x 503, errors {self.errors[-3:]}>"


class SSESubscriber(Subscriber):
    """EventSource-like: one stream; on its end, reconnect with Last-Event-ID."""

    kind = "sse"

    def __init__(self, server, topic, since):
        super().__init__(server, topic, since)
        self.conn: http.client.HTTPConnection | None = None
        self.connected = threading.Event()
        self.reconnects = -1

    def open(self) -> int:
        """Connect (in the caller's thread) and return the client port."""
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=scaled(5))
        headers = {"Accept": "text/event-stream"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        self.conn.request("GET", f"/api/topics/{self.topic}/stream", headers=headers)
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            self.unavailable += self.response.status == 503
            raise ConnectionError(f"SSE answered {self.response.status}")
        self.reconnects += 1
        return self.conn.sock.getsockname()[1]

    def discard(self) -> None:
        self.conn.close()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.conn is None:
                    self.open()
                self.connected.set()
                self._read()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self.stopping.is_set():
                    self.errors.append(repr(exc))
                    time.sleep(0.05)
            finally:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None

    def _read(self) -> None:
        fields: dict[str, str] = {}
        while not self.stopping.is_set():
            line = self.response.readline()
            if not line:
                raise ConnectionError("stream ended")
            line = line.rstrip(b"\r\n").decode()
            if line:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
                continue
            if fields.get("event") == "gap":
                self.items.append("gap")
            elif "data" in fields and "id" in fields:
                self.items.append(fields["id"])
                self.cursor = fields["id"]
            fields = {}


class LongPoller(Subscriber):
    """Long polls with its cursor; each request on a new connection (any worker)."""

    kind = "long-poll"

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                res = requests.get(
                    f"{self.base}/api/topics/{self.topic}/long-poll",
                    headers=ONE_SHOT,
                    params={"since": self.cursor, "timeout": 1, "limit": 1000},
                    timeout=scaled(10),
                )
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
                time.sleep(0.05)
                continue
            if res.status_code == 204:
                continue
            if res.status_code == 503:
                self.unavailable += 1
                time.sleep(0.05)
                continue
            assert res.status_code == 200, res.text
            self.take(res.json())

    def take(self, page: dict) -> None:
        if page["gap"]:
            self.items.append("gap")
        self.items += [event["id"] for event in page["events"]]
        self.cursor = page["cursor"]


class Poller(LongPoller):
    """Interval polling with its cursor, every 50 ms, each poll on a new connection."""

    kind = "polling"

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                res = requests.get(
                    f"{self.base}/api/topics/{self.topic}/events",
                    headers=ONE_SHOT,
                    params={"since": self.cursor, "limit": 1000},
                    timeout=scaled(10),
                )
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
                res = None
            if res is not None and res.status_code == 503:
                self.unavailable += 1
            elif res is not None:
                assert res.status_code == 200, res.text
                self.take(res.json())
            self.stopping.wait(0.05)


class WebSocketSubscriber(Subscriber):
    """One /ws connection, subscribed with ``since``."""

    kind = "websocket"

    def open(self) -> int:
        self.client = JsonClient(ws_url(self.base), timeout=10)
        reply = self.client.request("subscribe", topic=self.topic, since=self.cursor)
        assert reply["op"] == "ok", reply
        return self.client.ws.sock.getsockname()[1]

    def discard(self) -> None:
        self.client.close()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    message = self.client.next_event(timeout=0.5)
                except Exception as exc:  # websocket timeout: look at `stopping` again
                    if isinstance(exc, ConnectionEnded):
                        self.errors.append(repr(exc))
                        return
                    continue
                self.items.append("gap" if message["op"] == "gap" else message["id"])
        finally:
            self.client.close()


def pinned(subscriber: SSESubscriber | WebSocketSubscriber) -> int:
    """Open the subscriber's connection and return its worker's pid."""
    return worker_of(subscriber.server, subscriber.open())


def subscribers_on_workers(server, topic: str, since: str, cls, wanted: int = WORKERS, attempts: int = 80) -> dict:
    """Started subscribers of ``cls`` on up to ``wanted`` different workers."""
    found: dict[int, Subscriber] = {}
    for _ in range(attempts):
        sub = cls(server, topic, since)
        pid = pinned(sub)
        if pid in found:
            sub.discard()
            continue
        found[pid] = sub
        sub.start()
        if len(found) == wanted:
            break
    return found


def wait_for_all(subscribers, expected: list[str], timeout: float) -> None:
    def done():
        return all(len(sub.events()) >= len(expected) for sub in subscribers)

    try:
        wait_until(done, timeout=timeout, interval=0.05, message="every subscriber to get every event")
    except AssertionError:
        raise AssertionError(f"not every subscriber got {len(expected)} events: {subscribers}") from None


def by_position(event_ids: list[str]) -> list[str]:
    return sorted(event_ids, key=lambda text: tuple(int(n) for n in text.split("-")[1:]))


def health(server: Gunicorn) -> dict:
    return requests.get(f"{server.url}/healthz", headers=ONE_SHOT, timeout=scaled(5)).json()


# -- tests --------------------------------------------------------------------------------


class TestFourWorkersOneAudience:
    def test_every_subscriber_on_every_worker_gets_every_event_once_in_order(self, cluster):
        topic = "scale"
        start = requests.post(
            f"{cluster.url}/api/topics/{topic}/events",
            data='{"data": "start"}',
            headers={**JSON, **ONE_SHOT},
            timeout=scaled(5),
        ).json()["id"]
        sse = subscribers_on_workers(cluster, topic, start, SSESubscriber)
        ws = subscribers_on_workers(cluster, topic, start, WebSocketSubscriber, wanted=2)
        pollers = [LongPoller(cluster, topic, start) for _ in range(2)] + [
            Poller(cluster, topic, start) for _ in range(2)
        ]
        for poller in pollers:
            poller.start()
        assert len(sse) >= 3, f"SSE streams landed on only {len(sse)} worker(s)"
        assert len(set(sse) | set(ws)) >= 3

        publishers = connections_on_workers(cluster, WORKERS)
        assert len(publishers) >= 3, f"publishing connections on only {len(publishers)} worker(s)"
        published: list[str] = []
        lock = threading.Lock()

        def publisher(conn, offset):
            for n in range(125):
                status, event = publish(conn, topic, offset * 1000 + n)
                assert status == 201, event
                with lock:
                    published.append(event["id"])

        conns = list(publishers.values())
        conns += [http.client.HTTPConnection("127.0.0.1", cluster.port) for _ in range(4 - len(conns))]
        threads = [threading.Thread(target=publisher, args=(conn, i)) for i, conn in enumerate(conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(60))
        assert len(published) == 500
        expected = by_position(published)

        everyone = list(sse.values()) + list(ws.values()) + pollers
        wait_for_all(everyone, expected, timeout=30)
        for sub in everyone:
            sub.stop()
        for sub in everyone:
            assert sub.items == expected, f"{sub.kind}: not every event once and in order"

        # History is one: every worker answers the same page.
        for pid, conn in publishers.items():
            conn.request("GET", f"/api/topics/{topic}/events?since={start}&limit=1000")
            page = json.loads(conn.getresponse().read())
            assert [e["id"] for e in page["events"]] == expected and not page["gap"], f"worker {pid}"
            conn.close()

    def test_health_reports_redis_and_one_epoch(self, cluster, redis_server):
        pages = [health(cluster) for _ in range(8)]
        assert {(p["backend"], p["backend_healthy"]) for p in pages} == {("redis", True)}
        with redis_server.client() as client:
            epoch = client.get("switchboard:epoch").decode()
        assert {p["epoch"] for p in pages} == {epoch}


class TestTwoHosts:
    def test_an_event_published_on_one_host_reaches_the_other(self, redis_server, cluster, start_server):
        other = start_server({"SWITCHBOARD_REDIS_URL": redis_server.url, "SWITCHBOARD_SSE_HEARTBEAT": "1"})
        topic = "hosts"
        subs = [SSESubscriber(cluster, topic, None), SSESubscriber(other, topic, None)]
        for sub in subs:
            sub.open()
            sub.start()
        wait_until(
            lambda: health(cluster)["subscribers"] >= 1 and health(other)["subscribers"] >= 1,
            timeout=10,
            message="both streams subscribed",
        )
        with requests.Session() as http_a, requests.Session() as http_b:
            ids = []
            for n in range(10):
                res = (http_a if n % 2 else http_b).post(
                    f"{(cluster if n % 2 else other).url}/api/topics/{topic}/events",
                    data=json.dumps({"data": n}),
                    headers=JSON,
                    timeout=scaled(10),
                )
                assert res.status_code == 201
                ids.append(res.json()["id"])
        wait_for_all(subs, ids, timeout=10)
        for sub in subs:
            sub.stop()
            assert sub.items == ids
        assert health(cluster)["epoch"] == health(other)["epoch"]
        page_a = requests.get(f"{cluster.url}/api/topics/{topic}/events", headers=ONE_SHOT, timeout=scaled(5)).json()
        page_b = requests.get(f"{other.url}/api/topics/{topic}/events", headers=ONE_SHOT, timeout=scaled(5)).json()
        assert page_a == page_b and [e["id"] for e in page_a["events"]] == ids


class TestRedisOutage:
    def test_publishes_during_the_outage_get_503_and_nothing_accepted_is_lost(self, tmp_path, start_server):
        """Redis is killed (SIGKILL) and restarted during a stream of publishes.

        Redis runs with ``appendonly yes, appendfsync always``: it writes the AOF before it
        answers, so every event that got a 201 survives the restart, in the same epoch.
        (Without persistence Redis comes back empty: a new epoch and a gap, which the
        contract tests cover in tests/unit/test_backend_contract.py.)
        """
        with RedisServer(tmp_path / "redis", appendonly=True) as redis_server:
            server = start_server({**SERVER_ENV, "SWITCHBOARD_REDIS_URL": redis_server.url})
            topic = "outage"
            start = requests.post(
                f"{server.url}/api/topics/{topic}/events",
                data='{"data": "start"}',
                headers={**JSON, **ONE_SHOT},
                timeout=scaled(5),
            ).json()["id"]
            sse = subscribers_on_workers(server, topic, start, SSESubscriber, wanted=3)
            pollers = [LongPoller(server, topic, start), Poller(server, topic, start)]
            for poller in pollers:
                poller.start()
            accepted: list[str] = []
            refused: list[dict] = []
            stop = threading.Event()

            def publisher():
                n = 0
                while not stop.is_set():
                    try:
                        res = requests.post(
                            f"{server.url}/api/topics/{topic}/events",
                            data=json.dumps({"data": n}),
                            headers={**JSON, **ONE_SHOT},
                            timeout=scaled(10),
                        )
                    except requests.RequestException as exc:  # never expected: the server stays up
                        refused.append({"error": repr(exc)})
                        continue
                    if res.status_code == 201:
                        accepted.append(res.json()["id"])
                    else:
                        refused.append(
                            {"status": res.status_code, **res.json(), "retry_after": res.headers.get("Retry-After")}
                        )
                    n += 1
                    stop.wait(0.005)

            thread = threading.Thread(target=publisher, daemon=True)
            thread.start()
            wait_until(lambda: len(accepted) >= 100, timeout=20, message="100 events before the outage")
            redis_server.kill()
            wait_until(lambda: len(refused) >= 5, timeout=10, message="publishes refused during the outage")
            wait_until(lambda: not health(server)["backend_healthy"], timeout=10, message="/healthz to see it")
            before_restart = len(accepted)
            redis_server.start()
            wait_until(lambda: len(accepted) >= before_restart + 100, timeout=20, message="100 events after it")
            stop.set()
            thread.join(scaled(10))

            expected = by_position(accepted)
            everyone = list(sse.values()) + pollers
            wait_for_all(everyone, expected, timeout=30)
            for sub in everyone:
                sub.stop()
            assert all(
                r.get("status") == 503 and r.get("error") == "backend_unavailable" and r.get("retry_after")
                for r in refused
            ), refused[:3]
            for sub in everyone:
                assert "gap" not in sub.items, f"{sub.kind}: the epoch survived, so nothing may be reported lost"
                assert sub.items == by_position(set(sub.items)), f"{sub.kind}: repeated or reordered events"
                missing = set(expected) - set(sub.items)
                assert not missing, f"{sub.kind}: lost {len(missing)} accepted event(s) across the outage"
                # A publish cut off by the kill may have been stored without its 201.
                assert len(sub.items) - len(expected) <= 1, f"{sub.kind}: events nobody published"
            streams_kept = [sub for sub in sse.values() if sub.reconnects == 0]
            assert streams_kept, "SSE streams should stay open through the outage"
            wait_until(lambda: health(server)["backend_healthy"], timeout=10, message="healthy again")


class TestTicks:
    def test_exactly_one_producer_across_four_workers(self, cluster):
        """Listeners on several workers make each of them want to tick; the lock lets one."""
        listeners = list(subscribers_on_workers(cluster, "ticks", None, SSESubscriber, wanted=3).values())
        assert len(listeners) >= 2, "tick listeners on one worker only"
        started = time.monotonic()
        watch = scaled(4.5)
        wait_until(
            lambda: time.monotonic() - started >= watch and all(len(s.events()) >= 3 for s in listeners),
            timeout=watch + 10,
            interval=0.1,
            message="three ticks at every listener",
        )
        for sub in listeners:
            sub.stopping.set()
        for sub in listeners:
            sub.stop()
        elapsed = time.monotonic() - started
        history = requests.get(
            f"{cluster.url}/api/topics/ticks/events", params={"limit": 100}, headers=ONE_SHOT, timeout=scaled(5)
        ).json()["events"]
        ids = [e["id"] for e in history]
        for sub in listeners:
            got = sub.events()
            first = ids.index(got[0])
            assert ids[first : first + len(got)] == got, "each listener gets the one sequence of ticks"
            assert len(got) <= elapsed + 2, f"{len(got)} ticks in {elapsed:.1f}s: more than one producer"
        heard = [e for e in history if any(e["id"] in sub.events() for sub in listeners)]
        producers = {e["data"]["worker"] for e in heard}
        assert len(producers) == 1, f"ticks came from several workers: {producers}"
        assert producers <= set(cluster.worker_pids())
        times = [e["time"] for e in heard]
        assert all(b - a > 0.5 for a, b in zip(times, times[1:])), f"two ticks within half a second: {times}"
