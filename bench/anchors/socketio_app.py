"""Flask-SocketIO anchor: the Python server a user would pick instead of Switchboard.

Run by bench/servers.py as::

    gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1 \
        --worker-connections 20000 socketio_app:app

(gevent-websocket's worker class, the parent of Switchboard's ``app.transports.wsio.Worker``,
and what Flask-SocketIO's documentation prescribes for gunicorn with gevent).

Surface used by the bench:
    Socket.IO event ``subscribe`` ``{"topic": t}``: join room ``t``; acknowledged with ``true``.
    ``POST /publish/<topic>`` ``{"data": ...}``: emit ``event`` to the room with the same
    envelope as Switchboard (``id``, ``topic``, ``type``, ``data``, ``sender``, ``time``); 201.
    ``GET /count/<topic>``: how many connections joined the room (readiness checks).
    ``GET /ready``: 200.
"""

from __future__ import annotations

import itertools
import time

from flask import Flask, jsonify, request
from flask_socketio import SocketIO, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*", logger=False, engineio_logger=False)
_ids = itertools.count(1)
_members: dict[str, set[str]] = {}


@socketio.on("subscribe")
def subscribe(message):
    """Join the topic's room; the ack tells the client it is subscribed."""
    topic = message["topic"]
    join_room(topic)
    _members.setdefault(topic, set()).add(request.sid)
    return True


@socketio.on("disconnect")
def disconnect(*_args):
    """Forget the connection in every room it joined."""
    for members in _members.values():
        members.discard(request.sid)


@app.post("/publish/<topic>")
def publish(topic):
    """Emit one event to the topic's room, stamped like a Switchboard event."""
    body = request.get_json()
    event = {
        "id": str(next(_ids)),
        "topic": topic,
        "type": "message",
        "data": body["data"],
        "sender": None,
        "time": time.time(),
    }
    socketio.emit("event", event, to=topic)
    return jsonify(event), 201


@app.get("/count/<topic>")
def count(topic):
    """Connections subscribed to the topic."""
    return jsonify(subscribers=len(_members.get(topic, ())))


@app.get("/ready")
def ready():
    """Liveness for the bench's start-up wait."""
    return "ready\n"
