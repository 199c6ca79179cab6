"""Overload limits: how many streams a worker and a client address may hold, and how
fast a connection or an address may publish.

Every limit is a setting (``app/config.py``), every refusal is counted in
``switchboard_limit_rejections_total{limit=...}`` and answered in one way per limit:

=====================  ==========================================================  =====================
limit                  what is refused                                             answer
=====================  ==========================================================  =====================
``connections``        a new stream (SSE, parked long poll, WebSocket) beyond       503 + ``Retry-After``
                       ``max_connections`` in this worker
``client_connections`` a new stream beyond ``max_connections_per_client`` for       429 + ``Retry-After``
                       this client address in this worker
``publish_rate``       a publish beyond the token bucket (per /ws or STOMP          429 / ``error`` op /
                       connection; per client address over HTTP)                   STOMP ``ERROR``
``subscriptions``      a subscription beyond ``max_subscriptions`` on one /ws or    ``error`` op / ``ERROR``
                       STOMP connection
``message_size``       a body, WebSocket message or STOMP frame over                413 / 1009 / ``ERROR``
                       ``max_message_bytes``
``doctor_rate``        a ``/api/doctor/...`` request beyond the client address's    429 + ``Retry-After``
                       token bucket (``doctor_rate``, ``doctor_burst``)
``doctor_streams``     a held doctor response (timed or idle stream, slow poll)     429 + ``Retry-After``
                       beyond ``doctor_streams`` for this client address
``topics``             a publish that would start a topic beyond ``max_topics``     429 / ``error`` op /
                       (the hub raises :class:`~app.hub.TooManyTopics` and counts   STOMP ``ERROR``
                       it; :func:`topic_refusal` words it for every transport)
=====================  ==========================================================  =====================

The client address is ``REMOTE_ADDR``, or with ``SWITCHBOARD_BEHIND_PROXY`` the last
hop of ``X-Forwarded-For`` (the one our proxy added; earlier hops are the client's word).
Counts are per worker process: with ``WEB_CONCURRENCY=4`` a client may hold four times
the per-client figure, one share in each worker.

Nothing here touches a socket: the transports call :meth:`Limits.open_stream` and
:meth:`Limits.publish_bucket`, the proxy doctor (``app/doctor_api.py``) calls
:meth:`Limits.check_doctor_rate` and :meth:`Limits.open_doctor_stream`, and ``app/transports/wsio.py`` reaches the stream limit
through the WebSocket policy's ``admit`` hook, before it sends ``101``.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Mapping

from flask import Flask, Response, request

from .config import Settings
from .errors import ApiError, error_response
from .hub import TooManyTopics
from .metrics import Metrics

__all__ = [
    "DoctorSlot",
    "LimitExceeded",
    "Limits",
    "Slot",
    "TokenBucket",
    "client_address",
    "init_app",
    "topic_refusal",
]


class LimitExceeded(ApiError):
    """A request refused by a limit; rendered as JSON ``{"error", "message"}`` like any ApiError.

    Attributes:
        limit: the ``limit`` label it is counted under.
        retry_after: seconds the client should wait before trying again.
    """

    def __init__(self, limit: str, status: int, code: str, message: str, retry_after: float):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(status, code, message, {"Retry-After": str(seconds)})
        self.limit = limit
        self.retry_after = seconds


def topic_refusal(exc: TooManyTopics) -> LimitExceeded:
    """The one wording of a refused new topic, for every transport: HTTP renders it as a
    429 with ``Retry-After``, ``/ws`` as an ``error`` op (code, message, ``retry_after``),
    STOMP as an ``ERROR`` frame. The hub has already counted it (limit ``topics``)."""
    return LimitExceeded(
        "topics",
        429,
        "too_many_topics",
        f"this server holds its maximum of {exc.limit} topics; publish to an existing topic, "
        "or retry when idle topics have been forgotten",
        exc.retry_after,
    )


def client_address(environ: Mapping, behind_proxy: bool) -> str:
    """The address limits are counted against.

    Args:
        environ: a WSGI environ (before or after Werkzeug's ProxyFix: the answer is the same).
        behind_proxy: trust the last ``X-Forwarded-For`` hop (set only behind nginx).
    """
    if behind_proxy:
        hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return environ.get("REMOTE_ADDR") or "unknown"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; one token per publish.

    Args:
        rate: tokens added per second; 0 means unlimited.
        burst: the bucket's size (and its content at the start).
        clock: a monotonic clock in seconds.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self.stamp = clock()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    @property
    def full(self) -> bool:
        """Whether the bucket has refilled completely (it can then be forgotten)."""
        return self.rate <= 0 or self.tokens + (self._clock() - self.stamp) * self.rate >= self.burst


class Slot:
    """One admitted stream; :meth:`release` (idempotent) gives its place back."""

    __slots__ = ("_limits", "client", "transport", "released")

    def __init__(self, limits: "Limits", client: str, transport: str):
        self._limits = limits
        self.client = client
        self.transport = transport
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self.client)
            self._released()

    def _released(self) -> None:
        """What a kind of slot gives back besides the stream count (nothing, here)."""

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class DoctorSlot(Slot):
    """A held doctor response: one stream, and one of the address's doctor places."""

    __slots__ = ()

    def _released(self) -> None:
        self._limits._release_doctor(self.client)


class Limits:
    """The limits of one application (one per worker process).

    Args:
        settings: the application's settings.
        metrics: where refusals are counted.
        clock: a monotonic clock in seconds (tests pass a fake one).
    """

    # Client addresses with a publish bucket kept at most; full buckets go first.
    MAX_TRACKED_ADDRESSES = 10_000

    def __init__(self, settings: Settings, metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic):
        self.max_connections = settings.max_connections
        self.max_per_client = settings.max_connections_per_client
        self.max_subscriptions = settings.max_subscriptions
        self.publish_rate = settings.publish_rate
        self.publish_burst = settings.publish_burst
        self.behind_proxy = settings.behind_proxy
        self.doctor_rate = settings.doctor_rate
        self.doctor_burst = settings.doctor_burst
        self.max_doctor_streams = settings.doctor_streams
        self.metrics = metrics
        self._clock = clock
        self.open = 0
        self._per_client: dict[str, int] = {}
        self._address_buckets: dict[str, TokenBucket] = {}
        self._doctor_buckets: dict[str, TokenBucket] = {}
        self._doctor_held: dict[str, int] = {}

    # -- streams -----------------------------------------------------------------------

    def client(self, environ: Mapping) -> str:
        """The client address of a request (see :func:`client_address`)."""
        return client_address(environ, self.behind_proxy)

    def open_stream(self, environ: Mapping, transport: str) -> Slot:
        """Admit one more stream (SSE, parked long poll, WebSocket) or refuse it.

        Returns:
            A :class:`Slot` to release when the stream ends.

        Raises:
            LimitExceeded: 503 ``too_many_connections`` (this worker is full) or 429
                ``too_many_client_connections`` (this address holds its share).
        """
        client = self.client(environ)
        if self.max_connections and self.open >= self.max_connections:
            self.rejected("connections")
            raise LimitExceeded(
                "connections",
                503,
                "too_many_connections",
                f"this server holds its maximum of {self.max_connections} open connections; try again shortly",
                random.uniform(1, 5),
            )  # spread the retries
        held = self._per_client.get(client, 0)
        if self.max_per_client and held >= self.max_per_client:
            self.rejected("client_connections")
            raise LimitExceeded(
                "client_connections",
                429,
                "too_many_client_connections",
                f"your address holds its maximum of {self.max_per_client} open connections; close one first",
                5,
            )
        self.open += 1
        self._per_client[client] = held + 1
        return Slot(self, client, transport)

    def _release(self, client: str) -> None:
        self.open -= 1
        held = self._per_client.get(client, 0) - 1
        if held > 0:
            self._per_client[client] = held
        else:
            self._per_client.pop(client, None)

    def held_by(self, client: str) -> int:
        """Streams the address holds now."""
        return self._per_client.get(client, 0)

    # -- publishing --------------------------------------------------------------------

    def publish_bucket(self) -> TokenBucket:
        """A fresh bucket for one /ws or STOMP connection."""
        return TokenBucket(self.publish_rate, self.publish_burst, self._clock)

    def check_http_publish(self, environ: Mapping) -> None:
        """Charge one HTTP publish to the caller's address.

        Raises:
            LimitExceeded: 429 ``rate_limited`` with ``Retry-After``.
        """
        if self.publish_rate <= 0:
            return
        wait = self._take(self._address_buckets, self.client(environ), self.publish_rate, self.publish_burst)
        if wait:
            self.rejected("publish_rate")
            raise LimitExceeded(
                "publish_rate",
                429,
                "rate_limited",
                f"at most {self.publish_rate:g} publishes a second (bursts of {self.publish_burst}) "
                "per client; slow down",
                wait,
            )

    def _take(self, buckets: dict[str, TokenBucket], client: str, rate: float, burst: int) -> float:
        """Take a token from ``client``'s bucket in ``buckets``: 0.0, or the seconds to wait."""
        bucket = buckets.get(client)
        if bucket is None:
            if len(buckets) >= self.MAX_TRACKED_ADDRESSES:
                self._forget_full_buckets(buckets)
            bucket = buckets[client] = TokenBucket(rate, burst, self._clock)
        return bucket.take()

    def _forget_full_buckets(self, buckets: dict[str, TokenBucket]) -> None:
        # A full bucket is the same as no bucket: dropping it forgets nothing. If every
        # bucket is in use (a flood of addresses), the oldest half goes: memory stays bounded.
        for client in [c for c, b in buckets.items() if b.full]:
            del buckets[client]
        if len(buckets) >= self.MAX_TRACKED_ADDRESSES:
            for client in list(buckets)[: self.MAX_TRACKED_ADDRESSES // 2]:
                del buckets[client]

    # -- the proxy doctor ----------------------------------------------------------------

    def check_doctor_rate(self, environ: Mapping) -> None:
        """Charge one ``/api/doctor/...`` request to the caller's address.

        Raises:
            LimitExceeded: 429 ``rate_limited`` with ``Retry-After``.
        """
        if self.doctor_rate <= 0:
            return
        wait = self._take(self._doctor_buckets, self.client(environ), self.doctor_rate, self.doctor_burst)
        if wait:
            self.rejected("doctor_rate")
            raise LimitExceeded(
                "doctor_rate",
                429,
                "rate_limited",
                f"the proxy doctor answers at most {self.doctor_rate:g} requests a second "
                f"(bursts of {self.doctor_burst}) per client; run it again later",
                wait,
            )

    def open_doctor_stream(self, environ: Mapping) -> DoctorSlot:
        """Admit one held doctor response: the address's doctor share first, then the stream limits.

        Returns:
            A :class:`DoctorSlot` to release when the response ends.

        Raises:
            LimitExceeded: 429 ``too_many_doctor_streams``, or what :meth:`open_stream` raises.
        """
        client = self.client(environ)
        held = self._doctor_held.get(client, 0)
        if self.max_doctor_streams and held >= self.max_doctor_streams:
            self.rejected("doctor_streams")
            raise LimitExceeded(
                "doctor_streams",
                429,
                "too_many_doctor_streams",
                f"your address holds its maximum of {self.max_doctor_streams} open doctor checks; wait for them to end",
                5,
            )
        self.open_stream(environ, "doctor")  # counted; the DoctorSlot below gives it back
        self._doctor_held[client] = held + 1
        return DoctorSlot(self, client, "doctor")

    def _release_doctor(self, client: str) -> None:
        held = self._doctor_held.get(client, 0) - 1
        if held > 0:
            self._doctor_held[client] = held
        else:
            self._doctor_held.pop(client, None)

    # -- counting ----------------------------------------------------------------------

    def rejected(self, limit: str) -> None:
        """Count one refusal under ``switchboard_limit_rejections_total{limit}``."""
        if self.metrics is not None:
            self.metrics.limit_rejections.labels(limit).inc()


def init_app(app: Flask, limits: Limits) -> None:
    """Charge HTTP publishes to the caller's address; answer a refused new topic.

    The HTTP publish view (``api.publish``) stays unaware of limits: the bucket is
    charged before it runs, and an accepted publish is counted by transport after it.
    """

    @app.errorhandler(TooManyTopics)
    def too_many_topics(exc: TooManyTopics):
        refusal = topic_refusal(exc)
        return error_response(refusal.status, refusal.code, refusal.message, refusal.headers)

    @app.before_request
    def http_publish_rate():
        if request.endpoint in ("api.publish", "queues_api.send", "queues_api.send_to_user"):
            limits.check_http_publish(request.environ)

    # The counter's child for HTTP, looked up once (labels() costs more than the inc).
    http_publishes = limits.metrics.publishes.labels("http") if limits.metrics is not None else None

    @app.after_request
    def count_http_publish(response: Response) -> Response:
        status = response.status_code
        if status == 413:  # a body over SWITCHBOARD_MAX_MESSAGE_BYTES (MAX_CONTENT_LENGTH)
            limits.rejected("message_size")
        elif status == 201 and http_publishes is not None and request.endpoint == "api.publish":
            http_publishes.inc()
        return response
