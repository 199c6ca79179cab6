"""A pywsgi handler past its request's greenlet: what it keeps, and how its connection ends.

A response that outlives its greenlet (a detached stream, a handed-over WebSocket, a
deferred answer: :mod:`app.server.handler`, :mod:`app.server.deferred`) keeps its handler
for the access-log line written at its end. Everything else the handler held (the request
stream and its buffer, the framework's request object, pywsgi's per-request state) is let
go, so that a thousand idle connections do not keep a thousand request contexts.
"""

from __future__ import annotations

from typing import Any


class _HeaderList(list):
    """A request's headers as ``(name, value)`` pairs, with the ``items()`` the access log calls."""

    __slots__ = ()

    def items(self):
        return self


#: What the access log reads of a handler (gunicorn's and gevent's log_request) and what
#: a detached response's end uses; a handler whose greenlet has ended keeps only these.
_KEPT = (
    "server",
    "client_address",
    "requestline",
    "request_version",
    "command",
    "path",
    "status",
    "code",
    "response_headers",
    "response_length",
    "response_use_chunked",
    "headers",
    "environ",
    "time_start",
    "time_finish",
    "close_connection",
    "_detached",
)


def leave_open(handler: Any) -> None:
    handler.close_connection = True  # no further request is read: the body is not over
    handler.socket = None  # pywsgi's handle() then leaves the connection open


def _text_only(environ: dict) -> dict:
    # What the access log reads of the environ is text; the rest (the request stream and
    # its buffer, the framework's request object) is let go.
    return {key: value for key, value in environ.items() if isinstance(value, str)}


def slim_environ(handler: Any) -> dict:
    handler.environ = _text_only(handler.environ)
    return handler.environ


def let_go(handler: Any) -> None:
    """Once a detached response's request greenlet has ended: keep only what its end needs."""
    if any(not isinstance(value, str) for value in handler.environ.values()):
        handler.environ = _text_only(handler.environ)
    headers = getattr(handler, "headers", None)
    if headers is not None:
        handler.headers = _HeaderList(headers.raw_items())  # the parsed pairs themselves, no copies
    handler.__dict__ = {name: value for name, value in vars(handler).items() if name in _KEPT}  # a small dict


def close_connection(sock, rfile=None) -> None:
    """Close a connection whose handler's greenlet has ended, as pywsgi closes its own: any
    unread input is read first (closing over it would send a reset, and the client could
    lose the last bytes sent to it); ``rfile``, a read stream on the socket, is closed too
    (its reference would keep the descriptor open)."""
    if rfile is not None:
        try:
            rfile.close()
        except OSError:
            pass
    try:
        getattr(sock, "_sock", sock).recv(16384)  # gevent's real, non-blocking socket
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
