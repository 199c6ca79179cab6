"""The STOMP broker as a broker (issue #16): atomic transactions, headers and bodies passed through.

Raw frames over websocket-client against a real gunicorn (the ``Wire`` client of
test_stomp_ws.py), so what is checked is the bytes on the wire. Queues, /user destinations
and wildcards have their own files (test_stomp_queues.py, test_stomp_destinations.py).
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.e2e.test_stomp_ws import Wire, build, history, publish
from tests.support.timing import scaled

VERSIONS = {"1.0": ("v10.stomp",), "1.1": ("v11.stomp",), "1.2": ("v12.stomp",)}


@pytest.fixture
def clients(server):
    made: list[Wire] = []

    def make(version: str = "1.2", **kwargs) -> Wire:
        client = Wire(server, protocols=VERSIONS[version], **kwargs)
        made.append(client)
        client.connect(version)
        return client

    yield make
    for client in made:
        client.close()


def events(base, topic) -> list[dict]:
    return history(base, topic)["events"]


# ----------------------------------------------------------------- transactions


class TestAtomicCommit:
    def test_a_bad_frame_in_the_middle_publishes_nothing(self, server, clients):
        listener, client = clients(), clients()
        listener.subscribe("/topic/tx-atomic")
        client.send_frame("BEGIN", {"transaction": "t"})
        client.send_frame(
            "SEND",
            {"destination": "/topic/tx-atomic", "transaction": "t", "content-type": "application/json"},
            '{"n": 1}',
        )
        client.send_frame(
            "SEND",
            {"destination": "/topic/tx-atomic", "transaction": "t", "content-type": "application/json"},
            "{not json",
        )
        client.send_frame(
            "SEND",
            {"destination": "/topic/tx-atomic", "transaction": "t", "content-type": "application/json"},
            '{"n": 3}',
        )
        client.send_frame("COMMIT", {"transaction": "t", "receipt": "commit"})
        error = client.frame()  # the ERROR, never a RECEIPT first
        assert error.command == "ERROR" and error.get("message") == "invalid JSON body", error
        assert error.get("receipt-id") == "commit"
        assert b"published nothing" in error.body and b"SEND 2 of 3" in error.body, error.body
        assert client.expect_close() == 1008
        listener.nothing_for()
        assert events(server.url, "tx-atomic") == []

    def test_nothing_follows_an_error(self, server, clients):
        client = clients()
        # One WebSocket message: a bad SEND, then frames that must never be acted on.
        client.send(
            build(
                "SEND",
                {"destination": "/topic/after-error", "content-type": "application/json", "receipt": "bad"},
                "{nope",
            )
            + build("SEND", {"destination": "/topic/after-error", "receipt": "good"}, "published?")
            + build("SUBSCRIBE", {"id": "s", "destination": "/topic/after-error", "receipt": "sub"})
        )
        error = client.expect_error("invalid JSON body")
        assert error.get("receipt-id") == "bad"
        assert client.expect_close() == 1008
        assert events(server.url, "after-error") == []

    def test_nothing_follows_an_error_in_a_transaction_either(self, server, clients):
        client = clients()
        client.send(
            build("BEGIN", {"transaction": "t"})
            + build(
                "SEND",
                {"destination": "/topic/after-tx-error", "transaction": "t", "event-type": "gap"},
                "reserved type",
            )
            + build("COMMIT", {"transaction": "t", "receipt": "c"})
            + build("SEND", {"destination": "/topic/after-tx-error", "receipt": "next"}, "published?")
        )
        error = client.expect_error("invalid event-type")
        assert error.get("receipt-id") == "c"
        assert client.expect_close() == 1008
        assert events(server.url, "after-tx-error") == []

    def test_commit_publishes_everything_then_answers(self, server, clients):
        client = clients()
        client.send_frame("BEGIN", {"transaction": "t"})
        for n in range(3):
            client.send_frame("SEND", {"destination": f"/topic/tx-all-{n % 2}", "transaction": "t"}, f"m{n}")
        client.send_frame(
            "SEND",
            {"destination": "/app/chat", "transaction": "t", "content-type": "text/plain"},
            "chat in a transaction",
        )
        client.send_frame("COMMIT", {"transaction": "t", "receipt": "done"})
        client.expect_receipt("done")
        assert [e["data"] for e in events(server.url, "tx-all-0")] == ["m0", "m2"]
        assert [e["data"] for e in events(server.url, "tx-all-1")] == ["m1"]
        assert events(server.url, "chat")[-1]["data"] == {"text": "chat in a transaction"}

    def test_a_refused_handler_message_publishes_nothing_of_the_transaction(self, server, clients):
        client = clients()
        client.send_frame("BEGIN", {"transaction": "t"})
        client.send_frame("SEND", {"destination": "/topic/tx-handler", "transaction": "t"}, "first")
        client.send_frame(
            "SEND",
            {"destination": "/app/chat", "transaction": "t", "content-type": "application/json"},
            '{"words": "no text"}',
        )
        client.send_frame("COMMIT", {"transaction": "t"})
        assert b"SEND 2 of 2 (to /app/chat)" in client.expect_error("a chat message needs text").body
        assert events(server.url, "tx-handler") == []

    @pytest.mark.parametrize("ending", ["ABORT", "DISCONNECT", "socket"])
    def test_abort_and_a_disconnect_inside_a_transaction_publish_nothing(self, server, clients, ending):
        topic = f"tx-end-{ending.lower()}"
        client = clients()
        client.send_frame("BEGIN", {"transaction": "t"})
        client.send_frame("SEND", {"destination": f"/topic/{topic}", "transaction": "t", "receipt": "held"}, "x")
        client.expect_receipt("held")
        if ending == "ABORT":
            client.send_frame("ABORT", {"transaction": "t", "receipt": "aborted"})
            client.expect_receipt("aborted")
            client.send_frame("COMMIT", {"transaction": "t"})  # gone: an ERROR, not a late publish
            client.expect_error("unknown transaction")
        elif ending == "DISCONNECT":
            client.send_frame("DISCONNECT", {"receipt": "bye"})
            client.expect_receipt("bye")
        else:
            client.close()
        probe = clients()  # the server has handled the ending by the time a new session's RECEIPT comes
        probe.send_frame("SEND", {"destination": f"/topic/{topic}-probe", "receipt": "p"}, "probe")
        probe.expect_receipt("p")
        assert events(server.url, topic) == []


# ------------------------------------------------------------- headers and bodies


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")


USER_HEADERS = [
    ("x-custom-header-1", "value1"),
    ("special-1", "test with colon : test"),
    ("x-lines", "one\ntwo"),
    ("x-backslash", "a\\b"),
    ("x-repeated", "first"),
    ("x-repeated", "second"),
]


class TestHeadersPassThrough:
    @pytest.mark.parametrize("version", ["1.1", "1.2"])
    def test_user_headers_reach_every_message_in_order_escaped(self, server, clients, version):
        topic = f"hdr-{version.replace('.', '')}"
        listeners = [clients(version), clients("1.2")]
        for listener in listeners:
            listener.subscribe(f"/topic/{topic}")
        sender = clients(version)
        headers = [("destination", f"/topic/{topic}"), ("content-type", "text/plain"), ("receipt", "r")]
        headers += [(name, _escape(value)) for name, value in USER_HEADERS]
        sender.send_frame("SEND", headers, "with headers")
        sender.expect_receipt("r")
        for listener in listeners:
            (message,) = listener.messages(1)
            user = [(name, value) for name, value in message.headers if name.startswith(("x-", "special-"))]
            assert user == USER_HEADERS, message.raw
            assert b"special-1:test with colon \\c test\n" in message.raw
            assert b"x-lines:one\\ntwo\n" in message.raw and b"x-backslash:a\\\\b\n" in message.raw
        (stored,) = events(server.url, topic)
        assert stored["headers"] == {
            "x-custom-header-1": "value1",
            "special-1": "test with colon : test",
            "x-lines": "one\ntwo",
            "x-backslash": "a\\b",
            "x-repeated": "first",
        }

    def test_user_headers_in_1_0(self, server, clients):
        listener, sender = clients("1.0"), clients("1.0")
        listener.subscribe("/topic/hdr-10")
        # STOMP 1.0 has no escapes: a colon in a value is itself (the first colon ends the name).
        sender.send_frame(
            "SEND",
            [
                ("destination", "/topic/hdr-10"),
                ("x-custom-header-1", "value1"),
                ("special-1", "test with colon : test"),
                ("receipt", "r"),
            ],
            "old",
        )
        sender.expect_receipt("r")
        (message,) = listener.messages(1)
        assert b"\nx-custom-header-1:value1\nspecial-1:test with colon : test\n" in message.raw
        listener12 = clients("1.2")
        listener12.subscribe("/topic/hdr-10", last_event_id=message.get("event-id").rsplit("-", 1)[0] + "-0")
        (again,) = listener12.messages(1)
        assert b"special-1:test with colon \\c test\n" in again.raw  # 1.2 escapes the same value

    def test_a_1_0_subscriber_gets_the_headers_it_can_carry(self, server, clients):
        listener, sender = clients("1.0"), clients("1.2")
        listener.subscribe("/topic/hdr-down")
        sender.send_frame(
            "SEND",
            [("destination", "/topic/hdr-down"), ("receipt", "r")]
            + [(name, _escape(value)) for name, value in USER_HEADERS[:3]],
            "down",
        )
        sender.expect_receipt("r")
        (message,) = listener.messages(1)
        assert b"x-custom-header-1:value1\nspecial-1:test with colon : test\n" in message.raw
        assert b"x-lines" not in message.raw  # a newline cannot be written unescaped

    def test_http_and_ws_publishes_carry_headers_too(self, server, clients):
        listener = clients()
        listener.subscribe("/topic/hdr-http")
        res = requests.post(
            f"{server.url}/api/topics/hdr-http/events",
            timeout=scaled(5),
            json={"data": "hi", "headers": {"x-trace": "abc:1", "x-n": "2"}},
        )
        assert res.status_code == 201 and res.json()["headers"] == {"x-trace": "abc:1", "x-n": "2"}
        (message,) = listener.messages(1)
        assert [(k, v) for k, v in message.headers if k.startswith("x-")] == [("x-trace", "abc:1"), ("x-n", "2")]

    @pytest.mark.parametrize(
        ("headers", "why"),
        [
            ({"destination": "/topic/x"}, "reserved"),
            ({"bad name": "x"}, "must be 1-128"),
            ({f"x-{n}": "v" for n in range(33)}, "at most 32"),
            ({"x-big": "v" * 5000}, "at most 4096"),
            (["x", "y"], "object of strings"),
            ({"x-n": 1}, "string value"),
        ],
    )
    def test_http_headers_are_checked(self, server, headers, why):
        res = requests.post(
            f"{server.url}/api/topics/hdr-bad/events", json={"data": 1, "headers": headers}, timeout=scaled(5)
        )
        assert res.status_code == 400 and res.json()["error"] == "bad_headers" and why in res.json()["message"]

    def test_too_many_stomp_headers_is_an_error(self, server, clients):
        client = clients()
        client.send_frame("SEND", [("destination", "/topic/hdr-many")] + [(f"x-{n}", "v") for n in range(40)], "x")
        assert b"at most 32" in client.expect_error("invalid headers").body
        assert events(server.url, "hdr-many") == []


BODIES = [
    pytest.param(
        b'{ "a" :  [1 ,2],\n  "b": "\xc3\xa9" }\n',
        "application/json",
        {"a": [1, 2], "b": "é"},
        id="json-odd-whitespace",
    ),
    pytest.param("<p>h\u00e9llo</p>".encode(), "text/html; charset=utf-8", "<p>h\u00e9llo</p>", id="html-charset"),
    pytest.param(b"\x00\x01\xff\x00tail\x00", "application/octet-stream", None, id="binary-with-nuls"),
    pytest.param(b"no type at all", None, "no type at all", id="no-content-type"),
]


class TestBodiesPassThrough:
    @pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
    @pytest.mark.parametrize(("body", "content_type", "data"), BODIES)
    def test_octets_and_content_type_as_sent(self, server, clients, version, body, content_type, data):
        topic = f"body-{version.replace('.', '')}-{abs(hash((body, content_type))) % 10**8}"
        listener, sender = clients(version), clients(version)
        listener.subscribe(f"/topic/{topic}")
        headers = [("destination", f"/topic/{topic}"), ("content-length", str(len(body))), ("receipt", "r")]
        if content_type is not None:
            headers.append(("content-type", content_type))
        lines = "\n".join(f"{name}:{value}" for name, value in [("SEND", None)][1:] + headers)
        sender.send(b"SEND\n" + lines.encode() + b"\n\n" + body + b"\x00", binary=True)
        sender.expect_receipt("r")
        (message,) = listener.messages(1)
        assert message.body == body
        assert message.get("content-type") == content_type
        (stored,) = events(server.url, topic)
        if data is not None:
            assert stored["data"] == data  # the JSON transports' mapping stays as it was
        else:
            assert stored["type"] == "binary" and stored["data"]["content-type"] == content_type

    def test_http_publish_still_maps_to_compact_json(self, server, clients):
        listener = clients()
        listener.subscribe("/topic/body-http")
        publish(server.url, "body-http", {"a": [1, 2]})
        (message,) = listener.messages(1)
        assert message.body == b'{"a":[1,2]}' and message.get("content-type") == "application/json"

    def test_ws_clients_see_data_and_headers(self, server, clients):
        import websocket

        ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=scaled(5))
        try:
            ws.send(json.dumps({"op": "subscribe", "topic": "body-ws", "ref": 1}))
            assert json.loads(ws.recv())["op"] == "ok"
            sender = clients()
            sender.send_frame(
                "SEND",
                [
                    ("destination", "/topic/body-ws"),
                    ("content-type", "application/json"),
                    ("x-from", "stomp"),
                    ("receipt", "r"),
                ],
                '{ "spaced" : true }',
            )
            sender.expect_receipt("r")
            event = json.loads(ws.recv())
            assert event["op"] == "event" and event["data"] == {"spaced": True}
            assert event["headers"] == {"x-from": "stomp"}
            ws.send(json.dumps({"op": "publish", "topic": "body-ws", "data": 1, "headers": {"x-from": "ws"}, "ref": 2}))
            replies = [json.loads(ws.recv()) for _ in range(2)]
            assert {r["op"] for r in replies} == {"ok", "event"}
            assert [r for r in replies if r["op"] == "event"][0]["headers"] == {"x-from": "ws"}
            ws.send(json.dumps({"op": "publish", "topic": "body-ws", "data": 1, "headers": {"sender": "me"}, "ref": 3}))
            assert json.loads(ws.recv())["error"] == "bad_headers"
        finally:
            ws.close()
