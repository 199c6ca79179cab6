"""Application destinations of the STOMP broker, like Spring's ``@MessageMapping``.

A SEND to ``<app prefix>/<name>`` (``/app/chat``; ``/pub/chat`` with the seed's
prefixes) is not published as it is: the handler registered under ``name`` gets
the decoded message and does the work, usually one publish through the hub. The
broker (``app/transports/stomp_ws.py``) builds the registry with
:func:`default_handlers` when the application starts; a destination without a
handler is refused with an ERROR naming it, before anything is published.

A handler refuses a message by raising :class:`HandlerError`; the STOMP session
then ends with an ERROR frame carrying its message and detail. Under access control a
handler sees who sent the message (``message.identity``) and checks
``message.may(action, topic)`` before it acts on a topic: a refusal raises the access
error (``app.auth``), which the broker answers with ERROR "forbidden: <destination>" or
"unauthorized: <destination>".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from .hub import Hub

__all__ = ["AppMessage", "Handler", "HandlerError", "Handlers", "chat", "default_handlers"]

#: The topic the demo chat handler publishes to (DESIGN.md §4: ``chat`` on every page).
CHAT_TOPIC = "chat"


@dataclass(frozen=True)
class AppMessage:
    """A SEND to an application destination, decoded.

    Attributes:
        destination: the destination as sent, e.g. ``/app/chat``.
        name: the handler name, the part after the prefix (``chat``).
        data: the body decoded as DESIGN.md §6 says (parsed JSON for
            ``application/json``, else text; binary bodies arrive as
            ``{"base64": ..., "content-type": ...}``).
        headers: the SEND frame's headers, first value of each name.
        sender: who sent it, as the connection established it (never from the body).
        identity: the sender's ``app.auth.Identity`` (its ``sub`` and permissions), or
            ``None`` without access control.
        authorize: ``authorize(action, topic)``: returns if the sender may ``publish`` (or
            ``subscribe``) on ``topic``, raises ``app.auth.AccessError`` if not; ``None``
            without access control (everything is allowed).
    """

    destination: str
    name: str
    data: Any
    headers: Mapping[str, str]
    sender: str
    identity: Any = None
    authorize: Optional[Callable[[str, str], None]] = None

    def may(self, action: str, topic: str) -> None:
        """Check ``action`` on ``topic`` for the sender (see ``authorize``); a refusal raises."""
        if self.authorize is not None:
            self.authorize(action, topic)


class HandlerError(Exception):
    """A handler refused the message; the session ends with an ERROR frame.

    Attributes:
        message: one line for the ERROR ``message`` header.
        detail: an explanation for the ERROR body.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


#: ``handler(hub, message)``: act on one application message; raise HandlerError to refuse it.
Handler = Callable[[Hub, AppMessage], None]


class Handlers:
    """A table from handler name (``chat``) to handler function."""

    def __init__(self) -> None:
        self._table: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> Handler:
        """Route ``<app prefix>/<name>`` to ``handler``.

        Args:
            name: one path segment, e.g. ``chat``.
            handler: the function to call.

        Returns:
            ``handler``, unchanged.

        Raises:
            ValueError: the name is empty, has a slash, or is taken.
        """
        if not name or "/" in name:
            raise ValueError(f"a handler name is one path segment, not {name!r}")
        if name in self._table:
            raise ValueError(f"a handler is already registered for {name!r}")
        self._table[name] = handler
        return handler

    def get(self, name: str) -> Handler | None:
        """The handler for ``name``, or ``None``."""
        return self._table.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._table))


def chat(hub: Hub, message: AppMessage) -> None:
    """Stamp the sender and publish the text to topic ``chat`` as ``{"text": ...}``.

    Accepts ``{"text": "..."}`` (``application/json``) or the text itself
    (``text/plain``); other keys of a JSON object are dropped, so a body cannot
    choose the sender or add fields. The event looks exactly like an HTTP publish
    of ``{"data": {"text": "..."}}``. The sender must be allowed to publish to ``chat``.
    """
    message.may("publish", CHAT_TOPIC)
    data = message.data
    text = data.get("text") if isinstance(data, dict) else data
    if not isinstance(text, str) or not text.strip():
        raise HandlerError(
            "a chat message needs text",
            'Send {"text": "..."} with content-type:application/json, or the text itself as text/plain.',
        )
    hub.publish(CHAT_TOPIC, {"text": text}, sender=message.sender)


def default_handlers() -> Handlers:
    """The handlers the demo ships with: ``chat``."""
    handlers = Handlers()
    handlers.register("chat", chat)
    return handlers
