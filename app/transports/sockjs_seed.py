"""The study notes' Spring demo, as its page expects it, on ``/websocket/stomp``.

The seed registers ``addEndpoint("/websocket/stomp").withSockJS()`` with
``enableSimpleBroker("/sub")`` and ``setApplicationDestinationPrefixes("/pub")``; its
``@MessageMapping("/chat")`` takes the plain text of a SEND and its interceptor turns it
into ``{"sender": <session>, "message": <text>}``, broadcast on ``/sub/chat``. Its page
(``Stomp.over(new SockJS("/websocket/stomp"))``, stomp.js 2.3.3) parses each MESSAGE body
as that JSON. So on this mount only, with no configuration:

* destinations are ``/sub/<topic>`` (hub topics) and ``/pub/<handler>``;
* a SEND to ``/pub/chat`` is a chat message from the session's sender (the same event an
  HTTP, ``/ws`` or ``/stomp`` chat message is: ``{"text": ...}``, sender in the envelope);
  a blank one is dropped, as the seed's page sends whatever its input holds;
* every chat event, from any page or transport, reaches ``/sub/chat`` subscribers with the
  body ``{"sender": "<name>", "message": "<text>"}``; other events keep the broker's
  usual body (DESIGN.md §6), and every MESSAGE keeps its event headers;
* presence's join and leave events are not delivered: the seed's server has no presence, and
  its page would show each as a chat line (a seed subscriber still counts as present in
  ``chat`` for the other pages).
"""

from __future__ import annotations

import dataclasses
import json

from ..config import Settings
from ..events import PRESENCE_TYPE, Event
from ..hub import Hub
from ..stomp.session import encode_message_tail
from ..stomp_handlers import CHAT_TOPIC, AppMessage, Handlers, chat
from .stomp_ws import Broker, encode_message

__all__ = ["SEED_APP_PREFIX", "SEED_TOPIC_PREFIX", "seed_broker", "seed_encode_message"]

SEED_TOPIC_PREFIX = "/sub"
SEED_APP_PREFIX = "/pub"


def _seed_chat(hub: Hub, message: AppMessage) -> None:
    text = message.data.get("text") if isinstance(message.data, dict) else message.data
    if isinstance(text, str) and not text.strip():
        return  # the seed's page sends an empty input too; Spring would broadcast it, we drop it
    chat(hub, message)


def _seed_handlers() -> Handlers:
    handlers = Handlers()
    handlers.register("chat", _seed_chat)
    return handlers


def _chat_text(event: Event) -> str | None:
    data = event.data
    if event.topic == CHAT_TOPIC and isinstance(data, dict) and isinstance(data.get("text"), str):
        return data["text"]
    return None


def _encode(event: Event) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    body, headers = encode_message(event)
    text = _chat_text(event)
    if text is None:
        return body, headers
    seed_body = json.dumps({"sender": event.sender, "message": text}, ensure_ascii=False, separators=(",", ":"))
    try:
        encoded = seed_body.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON escapes carry it
        encoded = json.dumps({"sender": event.sender, "message": text}, separators=(",", ":")).encode("ascii")
    headers = tuple((k, "application/json" if k == "content-type" else v) for k, v in headers)
    return encoded, headers


def seed_encode_message(event: Event) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """The MESSAGE body and headers on the seed's mount, built once per event."""
    return event.encoded("stomp-message-seed", _encode)


def _tail(event: Event, escaped: bool) -> bytes:
    key = "stomp-tail-seed-escaped" if escaped else "stomp-tail-seed"
    return event.encoded(key, lambda e: encode_message_tail(*seed_encode_message(e), escaped, None))


def _is_presence(event: Event) -> bool:
    return event.type == PRESENCE_TYPE


def seed_broker(hub: Hub, settings: Settings, **services) -> Broker:
    """A broker on the app's hub with the seed's prefixes, handler and chat body.

    Args:
        hub: the application's hub (so the seed's page and every other page share topics).
        settings: the application's settings; only the prefixes change.
        services: ``metrics``, ``limits``, ``access``, as :meth:`Broker.from_settings` takes them.
    """
    seed_settings = dataclasses.replace(
        settings, stomp_topic_prefix=SEED_TOPIC_PREFIX, stomp_app_prefix=SEED_APP_PREFIX
    )
    broker = Broker.from_settings(hub, seed_settings, handlers=_seed_handlers(), **services)
    broker.encode_message = seed_encode_message
    broker.message_tail = _tail
    broker.withholds = _is_presence
    return broker
