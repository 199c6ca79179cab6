"""A TCP proxy between the browser and gunicorn that can cut every connection at once.

Pages reached through it lose their long polls, SSE streams and WebSockets the way they
would when a server or a network path dies: the sockets close under them. While the
proxy is ``down`` it accepts and at once closes new connections, so a page cannot
reconnect until the test calls :meth:`TcpProxy.up`; events published in between (the
test publishes straight to gunicorn) are the ones a page must catch up on.

It forwards bytes untouched, so ``Host`` and ``Origin`` name the proxy's port on both
sides and the server's same-origin WebSocket check still passes.
"""

from __future__ import annotations

import socket
import threading

from tests.support.servers import free_port
from tests.support.timing import scaled


class TcpProxy:
    """Listen on a free 127.0.0.1 port and forward each connection to ``upstream_port``.

    Args:
        upstream_port: where gunicorn listens on 127.0.0.1.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Condition()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._down = False
        self.refused = 0  # connections accepted and closed while down
        self.accepted = 0
        self.peak = 0
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def down(self) -> None:
        """Close every proxied connection, and refuse new ones until :meth:`up`."""
        with self._lock:
            self._down = True
            pairs, self._pairs = self._pairs, set()
            self.refused = 0
        for pair in pairs:
            for sock in pair:
                _close(sock)

    def up(self) -> None:
        """Accept and forward connections again."""
        with self._lock:
            self._down = False

    def wait_refused(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` reconnect attempts were refused since :meth:`down`."""
        with self._lock:
            if not self._lock.wait_for(lambda: self.refused >= count, scaled(timeout)):
                raise AssertionError(f"only {self.refused} of {count} reconnect attempts within {scaled(timeout)} s")

    def close(self) -> None:
        self.down()
        _close(self._listener)
        self._thread.join(scaled(5))

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            with self._lock:
                down = self._down
                if down:
                    self.refused += 1
                    self._lock.notify_all()
            if down:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=scaled(5))
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.accepted += 1
                self.peak = max(self.peak, len(self._pairs))
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side finished: pass the end on and forget the pair.
        with self._lock:
            self._pairs.discard(pair)
        _close(dst)
        _close(src)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
