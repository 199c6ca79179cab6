"""10,000 idle WebSockets on one worker hold at most one greenlet each (issue 15).

Each /ws connection is subscribed to a topic and then idle. It holds at most one greenlet,
its reader, and only while there is something to read (app/server/reader.py): delivery
comes from the worker's one fan-out greenlet, and keepalive pings from the worker's one timer. The worker's live greenlets are counted by
``/healthz?greenlets=1`` before and with the sockets open; a closing round checks that
an event still reaches them all.
"""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.support.servers import Gunicorn
from tests.support.timing import scaled, wait_until
from tests.support.wsclients import RawWebSocket, ws_url

COUNT = int(os.environ.get("SWITCHBOARD_TEST_IDLE_SOCKETS", "10000"))


def greenlets(server) -> tuple[int, int]:
    body = requests.get(server.url + "/healthz?greenlets=1", headers={"Connection": "close"}, timeout=scaled(30)).json()
    return body["greenlets"], body["subscribers"]


@pytest.mark.soak
def test_idle_websockets_hold_one_greenlet_each(tmp_path):
    with Gunicorn(
        tmp_path,
        env={
            "SWITCHBOARD_TICKS": "0",
            "SWITCHBOARD_MAX_CONNECTIONS": "0",
            "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT": "0",
        },
    ) as server:
        base, _ = greenlets(server)
        sockets = []
        try:
            for n in range(COUNT):
                ws = RawWebSocket.connect(ws_url(server.url), timeout=scaled(30))
                ws.send_text(json.dumps({"op": "subscribe", "topic": "idle", "ref": n}))
                sockets.append(ws)
            for ws in sockets:  # every subscription answered
                messages = ws.read_messages()
                assert messages and json.loads(messages[0][1])["op"] == "ok", messages
            count, subscribers = greenlets(server)
            assert subscribers == COUNT
            per_socket = (count - base) / COUNT
            print(f"\n{COUNT} idle WebSockets: {count - base} greenlets more than at rest ({per_socket:.3f} each)")
            assert count - base <= COUNT + 5, f"{count - base} greenlets for {COUNT} sockets"
            # And they are alive: one publish reaches every one of them.
            res = requests.post(server.url + "/api/topics/idle/events", json={"data": "hello"}, timeout=scaled(30))
            assert res.status_code == 201
            for ws in sockets:
                messages = ws.read_messages()
                assert messages and json.loads(messages[0][1])["data"] == "hello"
        finally:
            for ws in sockets:
                ws.sock.close()
        wait_until(lambda: greenlets(server)[1] == 0, timeout=30, message="every subscription released")
