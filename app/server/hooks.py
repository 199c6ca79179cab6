"""Where the application and the server meet: one explicit object on the WSGI callable.

The server needs two things from the application it runs, both before or around a
request's own life: the WebSocket policy (decided before ``101``) and the shutdown hook
(run on SIGTERM before the last WebSockets get 1001). The application hands them over as
one :class:`ServerHooks` in its ``switchboard_server`` attribute; :func:`hooks_of` is the
only reader. An application without one gets the defaults: no WebSocket, no hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .handshake import DEFAULT_POLICY, WebSocketPolicy

ATTRIBUTE = "switchboard_server"


@dataclass(frozen=True)
class ServerHooks:
    """What the server asks of the application.

    Attributes:
        policy: what the handler accepts before ``101`` (origins, paths, limits, keepalive).
        shutdown: ``shutdown(seconds)``, run once when a graceful stop begins: each
            transport ends its streams its own way within about ``seconds``.
    """

    policy: WebSocketPolicy = DEFAULT_POLICY
    shutdown: Callable[[float], None] | None = None


_NONE = ServerHooks()


def hooks_of(application) -> ServerHooks:
    """The application's :class:`ServerHooks` (the defaults if it has none, or is ``None``)."""
    hooks = getattr(application, ATTRIBUTE, None)
    return hooks if isinstance(hooks, ServerHooks) else _NONE
