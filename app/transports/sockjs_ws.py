"""SockJS's two WebSocket URLs (the handshake itself is wsio's, as for /ws and /stomp).

* ``<prefix>/<server>/<session>/websocket``: SockJS framing on a WebSocket. The server
  writes ``o``, ``h``, ``a[...]`` and ``c[...]`` frames as text messages; the client sends
  JSON arrays of strings (or one JSON string). Broken JSON ends the connection at once
  (sockjs-protocol 0.3.3: "abruptly terminate"); empty messages are ignored. Unlike the
  HTTP transports, a session id may be reused: each WebSocket is a session of its own,
  and the session lives as long as the socket.
* ``<prefix>/websocket``: a raw WebSocket, no SockJS framing at all (for programs that
  are not sockjs-client): the mount's handler runs on the WebSocket itself.

Both passed wsio's handshake policy before the 101: origin, stream limits and
credentials (app/factory.py's admission hook), so admission here takes no second slot.
"""

from __future__ import annotations

import logging

import gevent
from flask import request

from ..auth import AccessError
from ..errors import ApiError
from ..sockjs import SockJSError, decode_messages
from .sockjs_channel import SockJSChannel
from .wsio import CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, CLOSE_PROTOCOL_ERROR, ENVIRON_WEBSOCKET, WebSocketError

__all__ = ["serve_framed", "serve_raw"]

log = logging.getLogger(__name__)

HANDLER_JOIN_TIMEOUT = 5.0


def _admit(service, session_id: str, transport: str):
    ws = request.environ.get(ENVIRON_WEBSOCKET)
    if ws is None:  # a server without our WebSocket handler
        raise ApiError(426, "upgrade_required", "open this URL as a WebSocket", {"Upgrade": "websocket"})
    try:
        context, release = service.admit(request.environ, transport, session_id, False)
    except (ApiError, AccessError) as exc:  # only without the handshake's own admission
        ws.close(CLOSE_POLICY_VIOLATION, exc.message[:120])
        return ws, None, None
    return ws, context, release


def serve_framed(service, session_id: str):
    """Run one SockJS-framed session on the upgraded WebSocket until either side ends it."""
    ws, context, release = _admit(service, session_id, "websocket")
    if context is None:
        return "", 204
    channel: SockJSChannel = service.open_session(session_id, "websocket", context, release, register=False)
    _answer, receiver = channel.attach()  # a fresh session: always the receiver
    writer = gevent.spawn(_write_frames, channel, ws)
    channel.requests += 1
    try:
        while not channel.core.finished:
            message = ws.receive()
            if message is None:
                break
            if isinstance(message, (bytes, bytearray)):
                message = bytes(message).decode("utf-8", "replace")
            if not message:
                continue  # sockjs-protocol 0.3.3: empty frames are ignored
            try:
                messages = decode_messages(message)
            except SockJSError:
                ws.close(CLOSE_PROTOCOL_ERROR, "Broken framing.")
                break
            channel.deliver(messages)
    except WebSocketError:
        pass  # the socket broke: the session is interrupted below
    finally:
        channel.detach(receiver, interrupted=not channel.core.finished)
        writer.join(timeout=HANDLER_JOIN_TIMEOUT)
        writer.kill(block=False)
    return "", 204


def _write_frames(channel: SockJSChannel, ws) -> None:
    try:
        while True:
            frames = channel.frames()
            for frame in frames:
                ws.send(frame)
            if channel.core.finished:
                ws.close(CLOSE_NORMAL, "")
                return
            if not frames:
                if channel.core.closed and not channel.core.receiving:
                    return  # interrupted: nobody left to write to
                channel.wait(None)
    except WebSocketError:
        channel.abort()


def serve_raw(service):
    """Run the mount's handler on the raw WebSocket (no SockJS framing)."""
    ws, context, release = _admit(service, "", "raw-websocket")
    if context is None:
        return "", 204
    try:
        service.handler(ws, context)
    finally:
        release()
    return "", 204
