"""The worker's life: the gunicorn worker class, the graceful stop, the development server."""

from __future__ import annotations

import logging
import signal

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from .frames import CLOSE_GOING_AWAY
from .handler import Handler, Server
from .hooks import hooks_of
from .registry import Registry

log = logging.getLogger(__name__)


def graceful_shutdown(application, registry: Registry, hook_timeout: float, close_timeout: float, servers=()) -> None:
    """Stop one server process's connections in order, within about the two timeouts.

    1. Stop accepting (close ``servers``' listeners: with several workers, a client that
       reconnects at once lands on one that stays); refuse new upgrades (503) and
       requests on kept-alive connections; close the connections idle between two
       requests (nothing to wait for on those).
    2. the application's shutdown hook (:class:`~app.server.hooks.ServerHooks`), if it has one:
       each transport ends its streams its own way (an SSE stream's last ``retry:``, a
       long poll's 204, a STOMP ``ERROR`` frame before its Close).
    3. 1001 "server shutting down" to every WebSocket still open, and wait up to
       ``close_timeout`` for their closing handshakes.
    4. wait up to ``close_timeout`` for the detached responses (streams whose request
       greenlet has ended: :meth:`~app.server.raw_response.RawResponse.detach`) that the
       hook ended to finish; cut those left.
    """
    registry.closing = True
    for server in servers:
        server.close()
    registry.close_idle()
    hook = hooks_of(application).shutdown
    if hook is not None:
        try:
            hook(hook_timeout)
        except Exception:
            log.error("the application's shutdown hook failed", exc_info=True)
    registry.close_all(CLOSE_GOING_AWAY, "server shutting down", close_timeout)
    registry.wait_detached(close_timeout)


class Worker(GeventWebSocketWorker):
    """gunicorn worker class: ``worker_class = "app.server.lifecycle.Worker"``.

    On SIGTERM (graceful stop; also what a reload with HUP sends to the old workers)
    it runs :func:`graceful_shutdown` in a greenlet while gunicorn drains its pool: it
    stops accepting at once, idle keep-alive connections close, the application's
    shutdown hook ends its streams, and then every WebSocket still open gets 1001.
    Each step is bounded (the hook by a third of ``graceful_timeout``, the closing
    handshakes by the policy's ``close_timeout``, at most half of it), so the worker
    exits well inside ``graceful_timeout``; a stop with nothing open takes about a
    second (gunicorn's own polling interval). On SIGINT/SIGQUIT (fast stop) the same
    steps get at most about a second each.
    """

    wsgi_handler = Handler

    def init_process(self):
        self.ws_registry = Registry()
        self._servers: list[Server] = []
        self.server_class = self._make_server
        super().init_process()

    def _make_server(self, *args, **kwargs) -> Server:
        server = Server(*args, ws_registry=self.ws_registry, **kwargs)
        self._servers.append(server)  # so a shutdown can stop accepting at once
        return server

    def _ws_close_timeout(self) -> float:
        # getattr: a signal can come while the application is still loading (no self.wsgi yet).
        policy = hooks_of(getattr(self, "wsgi", None)).policy
        return max(0.1, min(policy.close_timeout, self.cfg.graceful_timeout / 2))

    def _hook_timeout(self) -> float:
        return max(0.1, self.cfg.graceful_timeout / 3)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.ws_registry.closing = True
        # A signal handler must not block: the closing runs in its own greenlet.
        closing = gevent.spawn(
            graceful_shutdown,
            getattr(self, "wsgi", None),
            self.ws_registry,
            self._hook_timeout(),
            self._ws_close_timeout(),
            self._servers,
        )
        self._hold_exit(closing)

    def _hold_exit(self, closing: gevent.Greenlet) -> None:
        # gunicorn's worker exits once its servers' pools are empty; a detached response
        # is in none, so the closing greenlet joins one: the exit waits for it.
        for server in self._servers[:1]:
            try:
                server.pool.add(closing, blocking=False)
            except Exception:  # gevent.pool's Full: the exit waits for the connections anyway
                pass

    def handle_quit(self, sig, frame):
        self.ws_registry.closing = True
        gevent.spawn(self._quit, sig, frame)

    def _quit(self, sig, frame):
        try:
            quick = min(1.0, self._ws_close_timeout())
            graceful_shutdown(getattr(self, "wsgi", None), self.ws_registry, quick, quick, self._servers)
        finally:
            super().handle_quit(sig, frame)


def serve_dev(app, host: str = "127.0.0.1", port: int = 5000, **server_kwargs) -> None:
    """Run ``app`` on gevent's WSGI server with :class:`Handler` until SIGINT or SIGTERM.

    The caller must have run ``gevent.monkey.patch_all()`` before importing anything
    else (see ``wsgi.py``). On a signal the server stops as a gunicorn worker does
    (:func:`graceful_shutdown`).
    """
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        log.warning("gevent.monkey.patch_all() was not called first: blocking I/O will stall all clients")
    server = Server((host, port), app, handler_class=Handler, **server_kwargs)
    policy = hooks_of(app).policy

    def stop():
        server.close()  # accept no more connections
        graceful_shutdown(app, server.ws_registry, policy.close_timeout, policy.close_timeout)
        server.stop(timeout=policy.close_timeout)

    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, stop)
    server.serve_forever()
