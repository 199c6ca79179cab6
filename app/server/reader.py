"""A handed-over WebSocket read by callbacks: no greenlet while the connection is idle.

An idle WebSocket parked in ``receive()`` costs its greenlet: the greenlet itself, its
Python frames and its C stack, copied to the heap by gevent at each switch, several KB.
An application that can take messages as they come (:meth:`WebSocket.serve_events
<app.server.websocket.WebSocket.serve_events>`) gets them from a reader greenlet that exists
only while there is something to read: the event loop watches the socket; when it becomes
readable a greenlet reads every frame that has arrived, hands each message over, and ends
once nothing more is waiting (a frame cut in two is waited for: the rest is on its way).

The peer's Close frame, a lost connection and a cut (keepalive, shutdown, close timeout) all
make the socket readable, so the end is read the same way: ``on_end()`` runs, then the
closing handshake completes and the handler's ``done()`` closes the connection and logs it.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable

import gevent

from .frames import CLOSE_INTERNAL_ERROR
from .websocket import NOTHING_YET, State, WebSocket

log = logging.getLogger(__name__)


class EventReader:
    """Reads one handed-over WebSocket when there is something to read (see the module docstring).

    Args:
        ws: the connection.
        on_message: ``on_message(message) -> bool``, for each text (``str``) or binary
            (``bytes``) message; false ends the connection (as an application's loop
            that returns).
        on_end: run once, when the connection is closed or ``on_message`` said to end.
        close_timeout: seconds for the closing handshake at the end.
        done: run last, once the connection is closed (the handler's close and access log).
    """

    __slots__ = ("ws", "on_message", "on_end", "close_timeout", "done", "_watcher", "_fd")

    def __init__(
        self,
        ws: WebSocket,
        on_message: Callable[[str | bytes], bool],
        on_end: Callable[[], None],
        close_timeout: float,
        done: Callable[[], None],
    ):
        self.ws = ws
        self.on_message = on_message
        self.on_end = on_end
        self.close_timeout = close_timeout
        self.done = done
        self._fd = ws._sock.fileno()
        self._watcher = gevent.get_hub().loop.io(self._fd, 1)  # 1: readable

    def start(self) -> None:
        """Read what is already there (a client's first frames), then wait for more."""
        gevent.spawn(self._read)

    def _readable(self) -> None:
        # In the event loop: no waiting here, a greenlet does the reading.
        self._watcher.stop()
        gevent.spawn(self._read)

    def _read(self) -> None:
        ws = self.ws
        try:
            while True:
                message = ws.receive_available()
                if message is NOTHING_YET:
                    self._watcher.start(self._readable)  # no greenlet until the next bytes
                    return
                if message is None or not self.on_message(message):
                    break
        except Exception:
            log.error("WebSocket application failed on %s", ws.path, exc_info=True)
            ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        self._end()

    def _end(self) -> None:
        ws = self.ws
        try:
            try:
                self.on_end()
            except Exception:
                log.error("WebSocket application failed on %s", ws.path, exc_info=True)
                ws.close(CLOSE_INTERNAL_ERROR, "internal error")
            ws.finish(self.close_timeout)
        finally:
            self._watcher.close()
            if ws.state is not State.CLOSED:
                ws.abort()
            self.done()


def pending(sock) -> bool:
    """Whether reading ``sock`` now would not wait: bytes have arrived, or its end has."""
    try:
        getattr(sock, "_sock", sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        pass  # an error is for the reader to find
    return True
