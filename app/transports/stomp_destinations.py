"""Where a STOMP destination leads (prefixes are settings; the defaults are Spring's and RabbitMQ's).

==============================  ==================================================================
``/topic/<topic>``              the hub topic ``<topic>``, shared with HTTP, SSE and ``/ws``:
                                SUBSCRIBE listens (history, ``last-event-id``), SEND publishes.
``/topic/<a>.*``, ``<a>.#``     a wildcard SUBSCRIBE (RabbitMQ's topic exchange words): ``*`` is
                                exactly one dot-separated word, ``#`` (last only) zero or more.
                                Live only: no ``last-event-id``. SEND to a wildcard is refused.
``/queue/<name>``               a work queue: each message to exactly one consumer, kept until
                                acknowledged (:mod:`app.hub.queues`).
``/user/queue/<name>``          SUBSCRIBE: this connection's own user destination (Spring's
                                ``/user`` prefix): what is sent to ``/user/<its sub>/queue/<name>``.
``/user/<sub>/queue/<name>``    SEND: to every session of user ``<sub>`` subscribed to
                                ``/user/queue/<name>``, and no one else's.
``/app/<name>``                 SEND to the application handler ``<name>`` (Spring's
                                ``@MessageMapping``); SUBSCRIBE is refused.
==============================  ==================================================================

A user destination is the hub topic ``user.<sub>.queue.<name>`` (so history and every
transport work on it, and access control judges it like any topic); ``<sub>`` is the
connection's token subject, or without access control its guest name.

Permissions (:mod:`app.transports.stomp_auth`): a topic is itself; a queue ``<name>`` is
the topic-like name ``queue.<name>`` (consuming needs ``subscribe`` on it, sending
``publish``); sending to ``/user/<sub>/...`` needs ``publish`` on ``user.<sub>`` unless the
sender is ``<sub>``; subscribing to ``/user/queue/...`` needs only an identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..events import NAME_RULE, TOPIC_RE, name_re
from ..hub.wildcard import is_pattern, pattern_problem
from ..stomp_handlers import Handlers

__all__ = ["Destinations", "QUEUE_NAME_RE", "Target", "USER_SUB_RE", "user_topic"]

#: A queue name: a topic name of at most 100 characters (its ``.dlq`` must be one too).
QUEUE_NAME_RE = name_re(100)
#: A subject that can name a user destination: a topic word (no dot), at most 64 characters.
USER_SUB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,63}\Z")


def user_topic(sub: str, name: str) -> str:
    """The hub topic behind ``/user/<sub>/queue/<name>``."""
    return f"user.{sub}.queue.{name}"


@dataclass(frozen=True)
class Target:
    """A resolved destination.

    Attributes:
        kind: ``topic``, ``pattern`` (a wildcard topic), ``queue``, ``user`` or ``app``.
        name: the topic, the wildcard (``chat.*``), the queue, the user destination's name
            (``inbox`` of ``/user/queue/inbox``) or the handler.
        user: for a ``user`` SEND, the subject it is sent to; ``None`` for a SUBSCRIBE
            (the connection's own).
    """

    kind: str
    name: str
    user: str | None = None

    @property
    def permission(self) -> str | None:
        """The topic-like name access control judges (see the module docstring)."""
        if self.kind in ("topic", "pattern"):
            return self.name
        if self.kind == "queue":
            return f"queue.{self.name}"
        if self.kind == "user" and self.user is not None:
            return f"user.{self.user}"
        return None


@dataclass(frozen=True)
class Destinations:
    """The destination rules of one broker.

    Attributes:
        topic_prefix: e.g. ``/topic`` (``/sub`` in the seed).
        app_prefix: e.g. ``/app`` (``/pub`` in the seed).
        handlers: the application handlers.
        queue_prefix: e.g. ``/queue``.
        user_prefix: e.g. ``/user``.
    """

    topic_prefix: str
    app_prefix: str
    handlers: Handlers
    queue_prefix: str = "/queue"
    user_prefix: str = "/user"

    def resolve(self, destination: str) -> Target | None:
        """Where ``destination`` leads, or ``None`` when it leads nowhere (see :meth:`problem`)."""
        for kind, prefix in (
            ("topic", self.topic_prefix),
            ("queue", self.queue_prefix),
            ("user", self.user_prefix),
            ("app", self.app_prefix),
        ):
            root = prefix + "/"
            if not destination.startswith(root):
                continue
            rest = destination[len(root) :]
            if kind == "topic" and is_pattern(rest):
                return Target("pattern", rest)
            if kind == "user":
                return self._user(rest)
            return Target(kind, rest)
        return None

    def _user(self, rest: str) -> Target | None:
        queue = self.queue_prefix.lstrip("/") + "/"
        if rest.startswith(queue):
            return Target("user", rest[len(queue) :])  # SUBSCRIBE /user/queue/<name>: one's own
        sub, slash, tail = rest.partition("/")
        if slash and tail.startswith(queue):
            return Target("user", tail[len(queue) :], sub)
        return None

    def problem(self, destination: str) -> str | None:
        """The session's ``validate_destination`` hook: why ``destination`` is refused, or ``None``."""
        target = self.resolve(destination)
        if target is None:
            return (
                f"unknown destination; use {self.topic_prefix}/<topic>, {self.queue_prefix}/<queue>, "
                f"{self.user_prefix}{self.queue_prefix}/<name>, {self.user_prefix}/<user>{self.queue_prefix}/<name> "
                f"or {self.app_prefix}/<handler>"
            )
        kind, name = target.kind, target.name
        if kind == "topic" and not TOPIC_RE.match(name):
            return f"not a topic: 1-128 characters of {NAME_RULE} (no slash), starting with a letter or digit"
        if kind == "pattern":
            return pattern_problem(name)
        if kind == "queue" and not QUEUE_NAME_RE.match(name):
            return f"not a queue: 1-100 characters of {NAME_RULE} (no slash), starting with a letter or digit"
        if kind == "user":
            if target.user is not None and not USER_SUB_RE.match(target.user):
                return "not a user: 1-64 characters of A-Z a-z 0-9 _ : - (no dot, no slash)"
            if not QUEUE_NAME_RE.match(name) or not TOPIC_RE.match(user_topic("x" * 64, name)):
                return f"not a user destination name: 1-52 characters of {NAME_RULE}"
        if kind == "app" and name not in self.handlers:
            known = ", ".join(f"{self.app_prefix}/{n}" for n in self.handlers) or "none"
            return f"no application handler {name[:64]!r} (handlers: {known})"
        return None

    def shared_queue(self, destination: str) -> bool:
        """The session's ``shared_queue`` hook: true for ``/queue/...`` (its NACKs come back here)."""
        target = self.resolve(destination)
        return target is not None and target.kind == "queue"
