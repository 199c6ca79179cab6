"""The decision hook: ask the application about what a token's claims do not settle.

``SWITCHBOARD_AUTH_HOOK_URL`` receives ``POST {"action", "topic", "sub", "transport"}``
(JSON). A 2xx answer allows, a 4xx refuses (403 is the documented one), and anything
else (3xx, 5xx, a refused connection, no answer within the timeout) fails closed: the client
gets 503 ``auth_unavailable`` and nothing is subscribed or published. Allow and deny
answers are cached per (sub, action, topic) for the TTL, so a chat asks once per
user and topic, not once per message; failures are not cached. Requests that miss the
cache together (a page opening its stream and publishing at once) share one call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

import gevent

from .errors import AuthUnavailable

log = logging.getLogger(__name__)

__all__ = ["DecisionHook"]

MAX_CACHED = 10_000


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A 3xx is not an answer: an SSO proxy in front of the hook would redirect to a sign-in
    # page that answers 200, and following it would allow everything. It fails closed.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class DecisionHook:
    """Asks ``url`` and caches its answers.

    Args:
        url: the application's decision endpoint.
        timeout: seconds an answer may take.
        ttl: seconds an answer is reused (0 = never cached).
        count: ``count(result)`` per decision: ``allow`` or ``deny`` (the hook was called),
            ``cached`` (answered without a call: the cache, or a call in flight for the
            same key), ``error`` (failed closed).
        clock: time source (seconds).
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        ttl: float,
        count: Callable[[str], None] = lambda result: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url = url
        self.timeout = timeout
        self.ttl = ttl
        self._count = count
        self._clock = clock
        self._cache: dict[tuple[str, str, str], tuple[bool, float]] = {}
        # Calls in flight, by key; threading's primitives are gevent's once monkey-patched.
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._pending_lock = threading.Lock()

    def allows(self, sub: str, action: str, topic: str, transport: str) -> bool:
        """The application's answer for ``sub`` doing ``action`` on ``topic``.

        Raises:
            AuthUnavailable: the hook is down, slow or answered 5xx.
        """
        key = (sub, action, topic)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._count("cached")
            return cached[0]
        with self._pending_lock:
            pending = self._pending.get(key)
            leader = pending is None
            if leader:
                pending = self._pending[key] = _Pending()
        if not leader:
            return self._await(pending)
        try:
            allowed = self._ask(sub, action, topic, transport)
            self._remember(key, allowed, now)  # before the call stops being in flight
            pending.answer = allowed
        finally:
            with self._pending_lock:
                del self._pending[key]
            pending.done.set()
        self._count("allow" if allowed else "deny")
        return allowed

    def _remember(self, key: tuple[str, str, str], allowed: bool, now: float) -> None:
        if self.ttl <= 0:
            return
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            while len(self._cache) >= MAX_CACHED:  # still full of live answers: drop the oldest
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (allowed, now + self.ttl)

    def _await(self, pending: "_Pending") -> bool:
        # Another request is asking the hook the same question: its answer is ours.
        if pending.done.wait(self.timeout + 1.0) and pending.answer is not None:
            self._count("cached")
            return pending.answer
        self._count("error")
        raise AuthUnavailable("the authorization service did not answer; try again shortly")

    def _ask(self, sub: str, action: str, topic: str, transport: str) -> bool:
        body = json.dumps({"action": action, "topic": topic, "sub": sub, "transport": transport}).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        try:
            # urllib's timeout bounds each read; gevent's bounds the whole answer, so a hook
            # that drips its headers a byte at a time is slow too.
            with gevent.Timeout(self.timeout, TimeoutError(f"no answer within {self.timeout}s")):
                with _OPENER.open(request, timeout=self.timeout) as response:
                    allowed = 200 <= response.status < 300
            if time.monotonic() - started <= self.timeout:  # (when not monkey-patched)
                return allowed
            reason = f"answered after more than {self.timeout}s"
        except urllib.error.HTTPError as exc:
            exc.close()
            if 400 <= exc.code < 500:
                return False
            reason = f"answered {exc.code}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        self._count("error")
        log.warning("auth hook %s failed (%s); refusing %s of %s for %s", self.url, reason, action, topic, sub)
        raise AuthUnavailable("the authorization service did not answer; try again shortly")


class _Pending:
    """One hook call in flight: ``answer`` is set (allow or deny) before ``done`` unless it failed."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.answer: bool | None = None
        self.done = threading.Event()
