"""The production app's SockJS mounts seen from raw HTTP: the ``/ws`` JSON protocol over
SockJS, SockJS heartbeats against STOMP heart-beats, and the same origin check, limits,
access control and metrics as the WebSocket endpoints (each with its refused case)."""

from __future__ import annotations

import json
import uuid

import pytest
import requests
import websocket  # websocket-client

from tests.support.auth import auth_env, bearer, mint
from tests.support.timing import scaled, wait_until

JSON = {"Content-Type": "application/json"}


class XhrSession:
    """A SockJS session driven by hand over xhr polling (what sockjs-client's xhr-polling does)."""

    def __init__(self, base: str, headers: dict | None = None, http: requests.Session | None = None, query: str = ""):
        self.url = f"{base}/000/{uuid.uuid4().hex}"
        self.query = query  # repeated on every request, as sockjs-client repeats its URL's query
        self.http = http or requests.Session()
        self.headers = headers or {}
        self.messages: list[str] = []

    def post(self, suffix: str, body: str = "") -> requests.Response:
        return self.http.post(
            self.url + suffix + self.query, data=body.encode("utf-8"), headers=self.headers, timeout=scaled(40)
        )

    def open(self) -> requests.Response:
        res = self.post("/xhr")
        assert res.status_code == 200 and res.text == "o\n", res.text
        return res

    def send(self, *messages: str) -> None:
        res = self.post("/xhr_send", json.dumps(list(messages)))
        assert res.status_code == 204, res.text

    def frame(self) -> str:
        res = self.post("/xhr")
        assert res.status_code == 200
        return res.text.rstrip("\n")

    def next_message(self) -> str:
        while not self.messages:
            frame = self.frame()
            if frame.startswith("a"):
                self.messages.extend(json.loads(frame[1:]))
            elif frame.startswith("c"):
                raise AssertionError(f"session closed: {frame}")
        return self.messages.pop(0)


def stomp(command: str, headers: dict | None = None, body: str = "") -> str:
    return command + "\n" + "".join(f"{k}:{v}\n" for k, v in (headers or {}).items()) + "\n" + body + "\0"


def test_ws_json_protocol_over_sockjs(server):
    session = XhrSession(server.url + "/ws-sockjs")
    session.open()
    session.send(json.dumps({"op": "subscribe", "ref": 1, "topic": "sjs-ws"}))
    ok = json.loads(session.next_message())
    assert ok["op"] == "ok" and ok["ref"] == 1
    res = requests.post(
        f"{server.url}/api/topics/sjs-ws/events", data=json.dumps({"data": {"n": 1}}), headers=JSON, timeout=5
    )
    event = json.loads(session.next_message())
    assert event["op"] == "event" and event["data"] == {"n": 1} and event["id"] == res.json()["id"]
    session.send(json.dumps({"op": "publish", "ref": "p", "topic": "sjs-ws", "data": "from sockjs"}), "not json")
    replies = [json.loads(session.next_message()) for _ in range(3)]
    kinds = sorted((r["op"], r.get("error")) for r in replies)
    assert kinds == [("error", "bad_json"), ("event", None), ("ok", None)]
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'switchboard_open_connections{transport="sockjs-xhr"} 1.0' in metrics


def test_sockjs_heartbeats_stop_when_stomp_heart_beats_flow(start_server):
    server = start_server({"SWITCHBOARD_SOCKJS_HEARTBEAT": "0.5"})
    quiet = XhrSession(server.url + "/stomp-sockjs")
    quiet.open()
    quiet.send(stomp("CONNECT", {"accept-version": "1.2", "host": "x", "heart-beat": "0,0"}))
    assert quiet.next_message().startswith("CONNECTED")
    assert quiet.frame() == "h"  # no STOMP heart-beats: SockJS keeps the line alive
    beating = XhrSession(server.url + "/stomp-sockjs")
    beating.open()
    beating.send(stomp("CONNECT", {"accept-version": "1.2", "host": "x", "heart-beat": "0,1000"}))
    assert beating.next_message().startswith("CONNECTED")
    frames = [beating.frame() for _ in range(3)]
    assert "h" not in frames and all(f == 'a["\\n"]' for f in frames), frames  # STOMP's EOL heart-beats only


def test_hostile_origins_are_refused_on_every_mount(server):
    evil = {"Origin": "https://evil.example"}
    own = {"Origin": server.url}
    for prefix in ("/stomp-sockjs", "/websocket/stomp", "/ws-sockjs"):
        res = requests.get(server.url + prefix + "/info", headers=evil, timeout=5)
        assert res.status_code == 403 and res.json()["error"] == "forbidden_origin"
        session = XhrSession(server.url + prefix, headers=evil)
        assert session.post("/xhr").status_code == 403
        assert session.post("/xhr_send", '["x"]').status_code == 403
        res = requests.get(server.url + prefix + "/info", headers=own, timeout=5)
        assert res.status_code == 200 and res.headers["Access-Control-Allow-Origin"] == server.url
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(
                server.url.replace("http", "ws") + prefix + "/000/abc/websocket",
                origin="https://evil.example",
                timeout=scaled(5),
            )
        assert refused.value.status_code == 403
        ws = websocket.create_connection(
            server.url.replace("http", "ws") + prefix + "/000/abc/websocket", origin=server.url, timeout=scaled(5)
        )
        assert ws.recv() == "o"
        ws.close()


def test_unknown_sessions_and_oversized_sends(server):
    session = XhrSession(server.url + "/stomp-sockjs")
    assert session.post("/xhr_send", '["x"]').status_code == 404  # never opened
    session.open()
    res = session.post("/xhr_send", '["' + "x" * (1024 * 1024) + '"]')
    assert res.status_code == 413 and res.json()["error"] == "too_large"
    session.send(stomp("CONNECT", {"accept-version": "1.2", "host": "x"}))
    assert session.next_message().startswith("CONNECTED")  # the session survived the refused send
    res = session.post("/xhr_send", '["broken')
    assert res.status_code == 500 and "Broken JSON encoding." in res.text
    session.send(stomp("DISCONNECT", {"receipt": "bye"}))
    assert session.next_message().startswith("RECEIPT")


def test_stream_limits_apply_to_sessions(start_server):
    server = start_server({"SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT": "1"})
    first = XhrSession(server.url + "/stomp-sockjs")
    first.open()
    second = XhrSession(server.url + "/ws-sockjs")
    res = second.post("/xhr")
    assert res.status_code == 429 and res.json()["error"] == "too_many_client_connections"
    assert res.headers["Retry-After"] and res.headers["Access-Control-Allow-Origin"] == "*"
    first.send(stomp("DISCONNECT"))
    # The session ends with its STOMP session (then its disconnect delay): its slot is free again.
    wait_until(lambda: second.post("/xhr").status_code == 200, timeout=15, message="the slot released")


def test_access_control_on_sockjs(start_server):
    server = start_server(auth_env(SWITCHBOARD_ANONYMOUS_SUBSCRIBE="chat"))
    # A credential that fails refuses the session, as it refuses a WebSocket handshake.
    refused = XhrSession(server.url + "/stomp-sockjs", headers=bearer("not.a-jwt"))
    res = refused.post("/xhr")
    assert res.status_code == 401 and res.headers["WWW-Authenticate"].startswith("Bearer")
    # Anonymous: may follow chat, not another topic, and may not publish.
    anonymous = XhrSession(server.url + "/stomp-sockjs")
    anonymous.open()
    anonymous.send(
        stomp("CONNECT", {"accept-version": "1.2", "host": "x"}),
        stomp("SUBSCRIBE", {"id": "0", "destination": "/topic/chat", "receipt": "ok"}),
        stomp("SUBSCRIBE", {"id": "1", "destination": "/topic/secret"}),
    )
    assert anonymous.next_message().startswith("CONNECTED")
    assert anonymous.next_message().startswith("RECEIPT")
    error = anonymous.next_message()
    assert error.startswith("ERROR") and "/topic/secret" in error
    # A token on the session's first request: its permissions, its name.
    token = mint("alice", subscribe=["secret"], publish=["secret"])
    alice = XhrSession(server.url + "/ws-sockjs", headers=bearer(token))
    alice.open()
    alice.send(
        json.dumps({"op": "subscribe", "ref": 1, "topic": "secret"}),
        json.dumps({"op": "publish", "ref": 2, "topic": "secret", "data": "x"}),
    )
    replies = [json.loads(alice.next_message()) for _ in range(3)]
    assert {r["op"] for r in replies} == {"ok", "event"}
    assert next(r for r in replies if r["op"] == "event")["sender"] == "alice"
    # The seed's endpoint: anonymous chat subscribers fine, anonymous senders refused.
    seed = XhrSession(server.url + "/websocket/stomp")
    seed.open()
    seed.send(
        stomp("CONNECT", {"accept-version": "1.1", "host": "x"}),
        stomp("SUBSCRIBE", {"id": "0", "destination": "/sub/chat", "receipt": "ok"}),
        stomp("SEND", {"destination": "/pub/chat"}, "hi"),
    )
    assert seed.next_message().startswith("CONNECTED")
    assert seed.next_message().startswith("RECEIPT")
    error = seed.next_message()
    assert error.startswith("ERROR") and "/pub/chat" in error


def test_a_session_answers_only_whoever_opened_it(start_server):
    # A session id travels in URLs, so access logs show it: it must not let anyone else in.
    server = start_server(auth_env(SWITCHBOARD_ANONYMOUS_SUBSCRIBE="chat"))
    token = mint("alice", subscribe=["secret"], publish=["secret"])
    alice = XhrSession(server.url + "/ws-sockjs", headers=bearer(token))
    alice.open()
    intruder = json.dumps([json.dumps({"op": "publish", "ref": 1, "topic": "secret", "data": "forged"})])
    bob = mint("bob", subscribe=["**"], publish=["**"])
    for headers in ({}, bearer(bob), bearer("not.a-jwt")):
        res = requests.post(alice.url + "/xhr_send", data=intruder, headers=headers, timeout=scaled(10))
        assert res.status_code == 404, headers  # as Spring: the session's user is not the request's
        assert requests.post(alice.url + "/xhr", headers=headers, timeout=scaled(10)).status_code == 404, headers
    alice.send(json.dumps({"op": "ping", "ref": 2}))
    assert json.loads(alice.next_message())["ref"] == 2  # nothing of the intruders reached the session
    assert (
        requests.get(server.url + "/api/topics/secret/events", headers=bearer(token), timeout=scaled(10)).json()[
            "events"
        ]
        == []
    )
    # Opened with a single-use ticket: later requests repeat the same ticket in the query.
    res = requests.post(server.url + "/api/tickets", headers=bearer(token), timeout=scaled(10))
    ticket = res.json()["ticket"]
    by_ticket = XhrSession(server.url + "/ws-sockjs", query=f"?ticket={ticket}")
    by_ticket.open()
    for query in ("", "?ticket=another"):
        res = requests.post(by_ticket.url + "/xhr_send" + query, data=intruder, timeout=scaled(10))
        assert res.status_code == 404, query
    by_ticket.send(json.dumps({"op": "ping", "ref": 3}))
    assert json.loads(by_ticket.next_message())["ref"] == 3
