"""/metrics in Prometheus text format, and the security headers on pages."""

from __future__ import annotations

import json
import re

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

JSON = {"Content-Type": "application/json"}


def samples(base: str) -> dict[str, float]:
    res = requests.get(base + "/metrics", timeout=5)
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_metrics_count_publishes_and_report_the_backend(server):
    before = samples(server.url).get("switchboard_events_published_total", 0)
    for n in range(3):
        res = requests.post(
            f"{server.url}/api/topics/metrics/events", data=json.dumps({"data": n}), headers=JSON, timeout=5
        )
        assert res.status_code == 201
    after = samples(server.url)
    assert after["switchboard_events_published_total"] == before + 3
    assert after["switchboard_backend_up{backend=memory}"] == 1
    assert "switchboard_subscriptions" in after


def test_pages_carry_a_strict_csp_and_security_headers(server):
    res = requests.get(server.url + "/polling", timeout=5)
    csp = res.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "object-src 'none'" in csp
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["Referrer-Policy"] == "same-origin"
    api = requests.get(server.url + "/healthz", timeout=5)
    assert api.headers["X-Content-Type-Options"] == "nosniff"


# ---------------------------------------------------------------- every metric moves
# (added with the operating limits and shutdown work: README "Operating Switchboard")


def test_every_transport_updates_its_metrics(server):
    import socket

    from tests.support.timing import scaled, wait_until
    from tests.support.wsclients import JsonClient, RawWebSocket, parse_stomp, stomp_frame, ws_url

    topic = "metrics-all"
    first = requests.post(
        f"{server.url}/api/topics/{topic}/events", data=json.dumps({"data": "first"}), headers=JSON, timeout=5
    ).json()
    before = samples(server.url)

    def delta(name: str) -> float:
        return samples(server.url).get(name, 0) - before.get(name, 0)

    sse = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(10))
    sse.sendall(f"GET /api/topics/{topic}/stream?last_event_id={first['id']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    poll = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(10))
    poll.sendall(f"GET /api/topics/{topic}/long-poll?timeout=20 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    ws = JsonClient(ws_url(server.url))
    stomp = RawWebSocket.connect(ws_url(server.url, "/stomp"), protocols=("v12.stomp",), timeout=scaled(10))
    stomp.sock.settimeout(scaled(10))
    try:
        assert ws.request("subscribe", topic=topic)["op"] == "ok"
        stomp.send_text(stomp_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")], escape=False).decode())
        stomp.send_text(
            stomp_frame("SUBSCRIBE", [("id", "0"), ("destination", f"/topic/{topic}"), ("receipt", "r")]).decode()
        )
        frames = []
        while not any(f and f.command == "RECEIPT" for f in frames):
            frames += [parse_stomp(p) for _op, p in stomp.read_messages()]
        wait_until(lambda: delta("switchboard_long_polls_parked") == 1, timeout=10, message="the long poll parked")
        now = samples(server.url)
        for transport in ("sse", "long-polling", "websocket", "stomp"):
            assert now[f"switchboard_open_connections{{transport={transport}}}"] >= 1, transport
        assert delta("switchboard_subscriptions") == 4
        assert delta("switchboard_events_replayed_total") >= 0  # the SSE resume had nothing after `first`

        # One publish through each way in: counted by transport, delivered on each.
        assert (
            requests.post(
                f"{server.url}/api/topics/{topic}/events", data=json.dumps({"data": "http"}), headers=JSON, timeout=5
            ).status_code
            == 201
        )
        assert ws.request("publish", topic=topic, data="ws")["op"] == "ok"
        stomp.send_text(stomp_frame("SEND", [("destination", f"/topic/{topic}"), ("receipt", "s")], "stomp").decode())
        wait_until(
            lambda: delta("switchboard_events_delivered_total{transport=stomp}") >= 3,
            timeout=10,
            message="three events delivered over STOMP",
        )
        for transport in ("http", "websocket", "stomp"):
            assert delta(f"switchboard_publishes_total{{transport={transport}}}") == 1, transport
        assert delta("switchboard_events_published_total") == 3
        wait_until(
            lambda: all(
                delta(f"switchboard_events_delivered_total{{transport={t}}}") >= 1
                for t in ("sse", "websocket", "long-polling")
            ),
            timeout=10,
            message="deliveries counted on SSE, /ws and the long poll",
        )
        polled = requests.get(f"{server.url}/api/topics/{topic}/events", params={"since": first["id"]}, timeout=5)
        assert len(polled.json()["events"]) == 3
        assert delta("switchboard_events_delivered_total{transport=polling}") == 3
        assert samples(server.url)["switchboard_queue_depth_high_water"] >= 1

        # Replays, and gaps (a cursor of another epoch) on a resume.
        assert ws.request("subscribe", topic=f"{topic}-2", since=first["id"])["op"] == "ok"  # replays nothing
        other_epoch = "zzzzzz-1"
        requests.get(f"{server.url}/api/topics/{topic}/events", params={"since": other_epoch}, timeout=5)
        assert delta("switchboard_gaps_total{kind=resume}") >= 1
        replayed = samples(server.url)["switchboard_events_replayed_total"]
        assert ws.request("unsubscribe", topic=topic)["op"] == "ok"
        assert ws.request("subscribe", topic=topic, since=first["id"])["op"] == "ok"
        wait_until(
            lambda: samples(server.url)["switchboard_events_replayed_total"] == replayed + 3,
            timeout=5,
            message="three events replayed",
        )

        # A STOMP protocol error is counted by its kind once the session ends.
        stomp.send_text("NOT-A-COMMAND\n\n\x00")
        while stomp.read_messages() is not None:
            pass
        wait_until(
            lambda: any(k.startswith("switchboard_stomp_errors_total{") and delta(k) >= 1 for k in samples(server.url)),
            timeout=5,
            message="the STOMP error counted",
        )
    finally:
        for sock in (sse, poll):
            sock.close()
        ws.close()
        stomp.sock.close()
    # Back down, but for the SSE stream: a server learns that its reader left at the next
    # heartbeat (15 s here), when the write fails.
    wait_until(
        lambda: delta("switchboard_subscriptions") == 1 and delta("switchboard_long_polls_parked") == 0,
        timeout=10,
        message="the gauges back down",
    )


@pytest.mark.redis
def test_backend_up_follows_redis(start_server, tmp_path):
    from tests.support.redis_server import RedisServer
    from tests.support.timing import wait_until

    with RedisServer(tmp_path / "redis") as redis_server:
        srv = start_server({"SWITCHBOARD_REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"})
        key = "switchboard_backend_up{backend=redis}"
        wait_until(lambda: samples(srv.url).get(key) == 1, timeout=10, message="backend_up 1")
        redis_server.kill()
        wait_until(lambda: samples(srv.url).get(key) == 0, timeout=30, message="backend_up 0 with Redis down")
        assert samples(srv.url)[key] == 0
        redis_server.start()
        wait_until(lambda: samples(srv.url).get(key) == 1, timeout=30, message="backend_up 1 again")
        assert samples(srv.url)[key] == 1


# ------------------------------------------------------------ pages: headers and text only

PAGES = ("/", "/polling", "/long-polling", "/sse", "/websocket", "/stomp", "/compare", "/doctor")
HTML_SINKS = (
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "createContextualFragment",
    "DOMParser",
    "srcdoc",
    "eval(",
    "new Function",
)


@pytest.mark.parametrize("language", ["en", "ko"])
@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_the_security_headers(server, path, language):
    res = requests.get(server.url + path, headers={"Accept-Language": language}, timeout=5)
    assert f'<html lang="{language}">' in res.text
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/html")
    csp = res.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["Referrer-Policy"] == "same-origin"
    # One exception, exactly this one: the page's messages as a JSON data block, which no
    # browser runs (CSP would refuse it anyway). Its text must be JSON and cannot close the
    # element early ("<" is escaped); every other <script> must load from a URL.
    data_blocks = re.findall(r'<script type="application/json" id="i18n">(.*?)</script>', res.text, re.S)
    assert len(data_blocks) == 1, "the i18n data block, once"
    assert "<" not in data_blocks[0] and isinstance(json.loads(data_blocks[0])["messages"], dict)
    rest = re.sub(r'<script type="application/json" id="i18n">.*?</script>', "", res.text, flags=re.S)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", rest), "an inline script"
    assert not re.search(r"<[^>]+\son[a-z]+=", res.text), "an inline event handler"


def test_message_text_reaches_the_page_as_text_only(server):
    """The pages render events in JavaScript; none of it may parse message text as HTML."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    own = [p for p in (root / "static" / "js").glob("*.js")]
    assert own, "no page scripts found"
    for script in own:
        text = script.read_text()
        for sink in HTML_SINKS:
            assert sink not in text, f"{script.name} uses {sink}"
    for template in (root / "templates").glob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text, template.name
    # And the server never puts a message into a page: a message is data, pages fetch it.
    evil = '<img src=x onerror="document.title=1">'
    assert (
        requests.post(
            f"{server.url}/api/topics/chat/events", data=json.dumps({"data": {"text": evil}}), headers=JSON, timeout=5
        ).status_code
        == 201
    )
    for path in PAGES:
        assert evil not in requests.get(server.url + path, timeout=5).text
    # The JSON the pages read escapes nothing away: the text arrives intact, to be set as textContent.
    events = requests.get(f"{server.url}/api/topics/chat/events", timeout=5).json()["events"]
    assert events[-1]["data"]["text"] == evil
