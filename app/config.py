"""Every setting, its default, and how it is read from the environment.

Settings come from ``SWITCHBOARD_*`` variables (plus ``PORT`` and
``WEB_CONCURRENCY``, the conventional names). Each one is parsed and checked
here, once, at start-up: a bad value stops the process with a message that
names the variable, instead of failing later in a request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


class ConfigError(ValueError):
    """A setting has a value Switchboard cannot run with."""


_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._-]+$")


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _seconds(minimum: float, maximum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if value != value or value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be a number of seconds {bound}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ValueError(f"{origin!r} is not an origin like https://example.com[:port]")
    return origins


def _redis_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return text


def _key_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", text):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return text


def _prefix(text: str) -> str:
    if not _PREFIX_RE.match(text):
        raise ValueError("must look like /app (a slash and one path segment)")
    return text


def _optional_text(text: str) -> str | None:
    return text or None


def _secret(text: str) -> str:
    if len(text) < 16:
        raise ValueError("must be at least 16 characters")
    return text


def _auth_secret(text: str) -> str:
    # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits).
    if len(text.encode("utf-8")) < 32:
        raise ValueError("must be at least 32 bytes (RFC 7518: an HS256 key is at least 256 bits)")
    return text


def _pem_file(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    try:
        with open(text, "rb") as handle:
            pem = handle.read(1024 * 1024)
    except OSError as exc:
        raise ValueError(f"cannot read the key file: {exc.strerror}") from None
    if not pem.startswith(b"-----BEGIN "):
        raise ValueError("is not a PEM file (it must start with -----BEGIN PUBLIC KEY-----)")
    # Checked here, at start, so a wrong key stops the master with this message instead of
    # every worker failing to boot with a traceback.
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not a PEM public key ({exc}); give the public half, never the private key") from None
    if not (isinstance(key, rsa.RSAPublicKey)
            or isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        raise ValueError("must be an RSA key (RS256) or an EC P-256 key (ES256)")
    return text


def _http_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", text):
        raise ValueError("must be an http:// or https:// URL")
    return text


def _topic_patterns(text: str) -> tuple[str, ...]:
    from .auth.patterns import check_pattern  # the one definition of the pattern syntax

    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    for pattern in patterns:
        check_pattern(pattern)
    return patterns


def _demo_users(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            raise ValueError(f"{name!r} is not a demo user name (a-z, 0-9, _ and -, up to 32)")
    return names


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _heart_beat(text: str) -> tuple[int, int]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError("must be milliseconds, one number or two (send,receive) like 10000,10000")
    send, receive = (int(part) for part in parts)
    if send > 3_600_000 or receive > 3_600_000:
        raise ValueError("must be at most 3600000 ms")
    return send, receive


def _setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Switchboard's configuration. Field metadata names the environment variable."""

    redis_url: str | None = _setting(
        "SWITCHBOARD_REDIS_URL", None, _redis_url,
        "Redis URL; unset = in-memory hub (one worker only).")
    redis_prefix: str = _setting(
        "SWITCHBOARD_REDIS_PREFIX", "switchboard", _key_prefix,
        "Prefix of every Redis key and channel; give each deployment sharing one Redis its own.")
    allowed_origins: tuple[str, ...] = _setting(
        "SWITCHBOARD_ALLOWED_ORIGINS", (), _origins,
        "Extra origins allowed to open WebSockets (comma-separated); same host is always allowed.")
    history_size: int = _setting(
        "SWITCHBOARD_HISTORY_SIZE", 1000, _int(1, 1_000_000),
        "Events kept per topic for replay and polling.")
    history_ttl: float = _setting(
        "SWITCHBOARD_HISTORY_TTL", 3600.0, _seconds(1),
        "Seconds an event stays in history.")
    queue_size: int = _setting(
        "SWITCHBOARD_QUEUE_SIZE", 256, _int(1, 100_000),
        "Events buffered per subscriber before it is caught up from history or dropped.")
    history_bytes: int = _setting(
        "SWITCHBOARD_HISTORY_BYTES", 8 * 1024 * 1024, _int(1024, 1 << 40),
        "Bytes of history kept per topic (an event counts as its JSON; with Redis, as its stored "
        "body); the oldest events go first, the newest always stays.")
    queue_bytes: int = _setting(
        "SWITCHBOARD_QUEUE_BYTES", 4 * 1024 * 1024, _int(1024, 1 << 40),
        "Bytes buffered per subscriber (events' JSON) before it is caught up from history or "
        "dropped, as with SWITCHBOARD_QUEUE_SIZE; one event is always taken into an empty queue.")
    max_topics: int = _setting(
        "SWITCHBOARD_MAX_TOPICS", 100_000, _int(0, 100_000_000),
        "Topics held at once (0 = no limit): by this worker's in-memory hub, or with Redis by the "
        "deployment's Redis. A publish to a new topic beyond it: 429 too_many_topics. A topic with "
        "no subscriber and no event younger than SWITCHBOARD_HISTORY_TTL is forgotten.")
    presence_topics: tuple[str, ...] = _setting(
        "SWITCHBOARD_PRESENCE_TOPICS", ("chat",), _topic_patterns,
        "Topic patterns that have presence (comma-separated, e.g. chat,room.*; empty: none): GET "
        "/api/topics/<topic>/presence, and join and leave events (type presence) on the topic.")
    presence_ttl: float = _setting(
        "SWITCHBOARD_PRESENCE_TTL", 15.0, _seconds(0.5, 3600),
        "Seconds presence outlives its last sign of life: a poller counts as present this long "
        "after each poll, and a worker's entries in Redis expire this long after it last renewed "
        "them (every quarter of it), so the users of a worker that died leave within 1.25 times it.")
    longpoll_timeout: float = _setting(
        "SWITCHBOARD_LONGPOLL_TIMEOUT", 25.0, _seconds(0.05, 3600),
        "Longest a long poll is parked (seconds); keep it below nginx's proxy_read_timeout.")
    sse_heartbeat: float = _setting(
        "SWITCHBOARD_SSE_HEARTBEAT", 15.0, _seconds(0.05, 3600),
        "Seconds between SSE heartbeat comments; also how a gone client is noticed.")
    sse_retry_ms: int = _setting(
        "SWITCHBOARD_SSE_RETRY_MS", 2000, _int(0, 3_600_000),
        "The retry: value sent to EventSource clients (milliseconds).")
    max_message_bytes: int = _setting(
        "SWITCHBOARD_MAX_MESSAGE_BYTES", 1024 * 1024, _int(64, 64 * 1024 * 1024),
        "Largest HTTP body, WebSocket message or STOMP frame accepted.")
    ws_ping_interval: float = _setting(
        "SWITCHBOARD_WS_PING_INTERVAL", 20.0, _seconds(0, 3600),
        "Seconds between server WebSocket pings (0 = off); a peer that stops answering is closed.")
    max_connections: int = _setting(
        "SWITCHBOARD_MAX_CONNECTIONS", 10_000, _int(0, 1_000_000),
        "Streams one worker holds at once (SSE, parked long polls, WebSockets; 0 = no limit); "
        "beyond it: 503 with Retry-After. Keep it below gunicorn's worker_connections (20000).")
    max_connections_per_client: int = _setting(
        "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT", 5_000, _int(0, 1_000_000),
        "Streams one client address holds in one worker (0 = no limit); beyond it: 429. Behind "
        "nginx set SWITCHBOARD_BEHIND_PROXY, or every client shares nginx's address.")
    max_subscriptions: int = _setting(
        "SWITCHBOARD_MAX_SUBSCRIPTIONS", 100, _int(1, 100_000),
        "Topics one /ws or STOMP connection may follow at once (each costs a queue and a greenlet).")
    max_stream_topics: int = _setting(
        "SWITCHBOARD_MAX_STREAM_TOPICS", 16, _int(1, 32),
        "Topics one multi-topic SSE stream or long poll may follow (?topic=a&topic=b; each costs "
        "a queue); beyond it: 400. At most 32, so a compound cursor fits gunicorn's 8190-byte header.")
    publish_rate: float = _setting(
        "SWITCHBOARD_PUBLISH_RATE", 200.0, _seconds(0, 1_000_000),
        "Publishes per second allowed per /ws or STOMP connection and per client address over "
        "HTTP (a token bucket; 0 = no limit).")
    publish_burst: int = _setting(
        "SWITCHBOARD_PUBLISH_BURST", 2000, _int(1, 10_000_000),
        "Publishes allowed at once before SWITCHBOARD_PUBLISH_RATE applies (the bucket's size).")
    doctor_rate: float = _setting(
        "SWITCHBOARD_DOCTOR_RATE", 1.0, _seconds(0, 1_000_000),
        "Requests per second to /api/doctor/... allowed per client address (a token bucket; 0 = no limit).")
    doctor_burst: int = _setting(
        "SWITCHBOARD_DOCTOR_BURST", 30, _int(1, 1_000_000),
        "/api/doctor/... requests allowed at once before SWITCHBOARD_DOCTOR_RATE applies (one run of the "
        "doctor page makes 14, of the command line 6).")
    doctor_streams: int = _setting(
        "SWITCHBOARD_DOCTOR_STREAMS", 10, _int(0, 100_000),
        "Doctor responses one client address may hold open at once (timed and idle streams, slow polls; "
        "0 = no limit); they also count as streams against SWITCHBOARD_MAX_CONNECTIONS*.")
    doctor_max_wait: float = _setting(
        "SWITCHBOARD_DOCTOR_MAX_WAIT", 120.0, _seconds(1, 3600),
        "Longest silence the doctor's idle stream and slow poll hold (seconds); keep it above the SSE "
        "heartbeat and the long-poll timeout, or the doctor cannot tell whether they survive the proxy.")
    stomp_heartbeat_ms: tuple[int, int] = _setting(
        "SWITCHBOARD_STOMP_HEARTBEAT_MS", (1000, 1000), _heart_beat,
        "The server's STOMP heart-beat floors (send,receive) in ms: it never sends heart-beats "
        "more often, nor asks the client for them more often; the client's offer decides above.")
    sockjs_heartbeat: float = _setting(
        "SWITCHBOARD_SOCKJS_HEARTBEAT", 25.0, _seconds(0.05, 3600),
        "Seconds without a frame after which a SockJS session sends an h frame (SockJS's 25 s; "
        "off once STOMP heart-beats are negotiated on it, as Spring does).")
    sockjs_disconnect_delay: float = _setting(
        "SWITCHBOARD_SOCKJS_DISCONNECT_DELAY", 5.0, _seconds(0.05, 3600),
        "Seconds a SockJS session lives on without a receiving request (between two polls) before "
        "it is closed and forgotten.")
    sockjs_response_limit: int = _setting(
        "SWITCHBOARD_SOCKJS_RESPONSE_LIMIT", 128 * 1024, _int(1, 1 << 30),
        "Bytes one SockJS streaming response (xhr_streaming, eventsource, htmlfile) carries before it "
        "ends and the client opens the next (the browser keeps the whole response in memory).")
    write_timeout: float = _setting(
        "SWITCHBOARD_WRITE_TIMEOUT", 30.0, _seconds(0, 3600),
        "Seconds one write to an HTTP client (an SSE chunk) may block before the connection is "
        "cut: a client that reads nothing is dropped (0 = never). WebSockets use their pings.")
    behind_proxy: bool = _setting(
        "SWITCHBOARD_BEHIND_PROXY", False, _bool,
        "Trust one proxy's X-Forwarded-For/-Proto/-Host (set when nginx is in front).")
    stomp_app_prefix: str = _setting(
        "SWITCHBOARD_STOMP_APP_PREFIX", "/app", _prefix,
        "STOMP destinations handled by application handlers (Spring's /app or the seed's /pub).")
    stomp_topic_prefix: str = _setting(
        "SWITCHBOARD_STOMP_TOPIC_PREFIX", "/topic", _prefix,
        "STOMP destinations that are hub topics (Spring's /topic or the seed's /sub).")
    stomp_queue_prefix: str = _setting(
        "SWITCHBOARD_STOMP_QUEUE_PREFIX", "/queue", _prefix,
        "STOMP destinations that are work queues (RabbitMQ's and Spring's /queue): each message to one consumer.")
    stomp_user_prefix: str = _setting(
        "SWITCHBOARD_STOMP_USER_PREFIX", "/user", _prefix,
        "STOMP per-user destinations (Spring's /user): SUBSCRIBE <prefix>/queue/<name>, SEND "
        "<prefix>/<sub>/queue/<name>.")
    queue_max_messages: int = _setting(
        "SWITCHBOARD_QUEUE_MAX_MESSAGES", 10_000, _int(1, 100_000_000),
        "Messages one work queue holds, waiting and un-acknowledged together; a send beyond it: STOMP "
        "ERROR \"queue full\", HTTP 429 queue_full (nothing dropped).")
    queue_max_bytes: int = _setting(
        "SWITCHBOARD_QUEUE_MAX_BYTES", 64 * 1024 * 1024, _int(1024, 1 << 40),
        "Bytes one work queue holds (each message as its event's JSON), as SWITCHBOARD_QUEUE_MAX_MESSAGES.")
    max_queues: int = _setting(
        "SWITCHBOARD_MAX_QUEUES", 1000, _int(1, 1_000_000),
        "Work queues held at once (dead-letter queues included); a send to a new one beyond it: 429 queue_full.")
    queue_ack_timeout: float = _setting(
        "SWITCHBOARD_QUEUE_ACK_TIMEOUT", 120.0, _seconds(0.05, 86400),
        "Seconds a consumer may hold a queue message without ACK before it goes to another consumer.")
    queue_max_deliveries: int = _setting(
        "SWITCHBOARD_QUEUE_MAX_DELIVERIES", 5, _int(1, 1000),
        "Deliveries of one queue message (NACK, disconnect, ack timeout each add one) before it goes to "
        "<queue>.dlq; also how often a NACKed topic message is sent again before it is dropped.")
    stomp_login: str | None = _setting(
        "SWITCHBOARD_STOMP_LOGIN", None, _optional_text,
        "When set (with the passcode), STOMP CONNECT must carry this login.")
    stomp_passcode: str | None = _setting(
        "SWITCHBOARD_STOMP_PASSCODE", None, _optional_text,
        "When set (with the login), STOMP CONNECT must carry this passcode.")
    auth_secret: str | None = _setting(
        "SWITCHBOARD_AUTH_SECRET", None, _auth_secret,
        "HS256 key that verifies clients' JWTs (at least 32 characters). Setting any auth key "
        "turns access control on: anonymous clients then get only the ANONYMOUS_* topics.")
    auth_public_key: str | None = _setting(
        "SWITCHBOARD_AUTH_PUBLIC_KEY", None, _pem_file,
        "Path of a PEM public key (RSA: RS256, EC P-256: ES256) that verifies clients' JWTs.")
    auth_jwks_url: str | None = _setting(
        "SWITCHBOARD_AUTH_JWKS_URL", None, _http_url,
        "URL of a JWKS document whose keys verify clients' JWTs (fetched on demand, cached).")
    auth_audience: str | None = _setting(
        "SWITCHBOARD_AUTH_AUDIENCE", None, _optional_text,
        "When set, a token's aud claim must name it.")
    auth_issuer: str | None = _setting(
        "SWITCHBOARD_AUTH_ISSUER", None, _optional_text,
        "When set, a token's iss claim must equal it.")
    anonymous_subscribe: tuple[str, ...] | None = _setting(
        "SWITCHBOARD_ANONYMOUS_SUBSCRIBE", None, _topic_patterns,
        "Topic patterns anonymous clients may follow (comma-separated, e.g. chat,ticks,room.*). "
        "Unset: every topic without an auth key, none with one.")
    anonymous_publish: tuple[str, ...] | None = _setting(
        "SWITCHBOARD_ANONYMOUS_PUBLISH", None, _topic_patterns,
        "Topic patterns anonymous clients may publish to. Unset: every topic without an auth "
        "key, none with one.")
    auth_hook_url: str | None = _setting(
        "SWITCHBOARD_AUTH_HOOK_URL", None, _http_url,
        "The application's decision endpoint, asked (POST) about a subscribe or publish that a "
        "token's claims do not allow; 2xx allows, 4xx refuses; 3xx, 5xx, down or slow = 503 (fails closed).")
    auth_hook_timeout: float = _setting(
        "SWITCHBOARD_AUTH_HOOK_TIMEOUT", 2.0, _seconds(0.01, 60),
        "Seconds the decision hook may take before the request fails closed (503).")
    auth_hook_ttl: float = _setting(
        "SWITCHBOARD_AUTH_HOOK_TTL", 30.0, _seconds(0, 86400),
        "Seconds a hook's answer is cached per (sub, action, topic); 0 = ask every time.")
    auth_ticket_ttl: float = _setting(
        "SWITCHBOARD_AUTH_TICKET_TTL", 30.0, _seconds(1, 300),
        "Lifetime of a single-use ?ticket= from POST /api/tickets (seconds).")
    auth_refresh_grace: float = _setting(
        "SWITCHBOARD_AUTH_REFRESH_GRACE", 10.0, _seconds(0, 3600),
        "Seconds a /ws connection whose token expired has to send a new one (op auth) "
        "before it is closed with 4001.")
    metrics_token: str | None = _setting(
        "SWITCHBOARD_METRICS_TOKEN", None, _secret,
        "When set, GET /metrics needs it as a Bearer token (401 otherwise).")
    demo_users: tuple[str, ...] = _setting(
        "SWITCHBOARD_DEMO_USERS", (), _demo_users,
        "Names the index page's demo sign-in may mint short-lived tokens for (e.g. alice,bob); "
        "needs SWITCHBOARD_AUTH_SECRET. Never set it in production.")
    ticks: bool = _setting(
        "SWITCHBOARD_TICKS", True, _bool,
        "Run the demo producer that publishes to topic 'ticks' every second while someone listens.")
    secret_key: str | None = _setting(
        "SWITCHBOARD_SECRET_KEY", None, _secret,
        "Key that signs the session cookie; unset = a random key per start.")
    log_level: str = _setting(
        "SWITCHBOARD_LOG_LEVEL", "INFO", _log_level, "Log level.")
    port: int = _setting("PORT", 8000, _int(1, 65535), "Port gunicorn binds on 127.0.0.1.")
    web_concurrency: int = _setting(
        "WEB_CONCURRENCY", 1, _int(1, 64),
        "gunicorn worker processes; more than one needs SWITCHBOARD_REDIS_URL.")

    def __post_init__(self) -> None:
        if self.web_concurrency > 1 and not self.redis_url:
            raise ConfigError(
                f"WEB_CONCURRENCY={self.web_concurrency} needs SWITCHBOARD_REDIS_URL: with the "
                "in-memory hub each worker would have its own audience and a publish would reach "
                "only the clients of the worker that took it. Set SWITCHBOARD_REDIS_URL or use one worker.")
        prefixes = (self.stomp_app_prefix, self.stomp_topic_prefix, self.stomp_queue_prefix, self.stomp_user_prefix)
        if len(set(prefixes)) != len(prefixes):
            raise ConfigError("SWITCHBOARD_STOMP_APP_PREFIX, _TOPIC_PREFIX, _QUEUE_PREFIX and _USER_PREFIX must differ")
        keys = [name for name, value in (("SWITCHBOARD_AUTH_SECRET", self.auth_secret),
                                         ("SWITCHBOARD_AUTH_PUBLIC_KEY", self.auth_public_key),
                                         ("SWITCHBOARD_AUTH_JWKS_URL", self.auth_jwks_url)) if value]
        if len(keys) > 1:
            raise ConfigError(f"set only one of {' and '.join(keys)}: tokens are verified with one key source")
        if self.demo_users and not self.auth_secret:
            raise ConfigError("SWITCHBOARD_DEMO_USERS needs SWITCHBOARD_AUTH_SECRET: the demo sign-in "
                              "mints HS256 tokens with it")
        if bool(self.stomp_login) != bool(self.stomp_passcode):
            raise ConfigError("set both SWITCHBOARD_STOMP_LOGIN and SWITCHBOARD_STOMP_PASSCODE, or neither")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> "Settings":
        """Read every setting from ``environ`` (default ``os.environ``), then apply overrides.

        Args:
            environ: the environment to read.
            overrides: setting names (field names) mapped to already-typed values.

        Returns:
            The validated settings.

        Raises:
            ConfigError: a variable is malformed or out of range; the message names it.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r}: {exc}") from None
        overrides = dict(overrides or {})
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s) in test_config: {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    @property
    def auth_enabled(self) -> bool:
        """True when a key to verify tokens is configured (access control is on)."""
        return bool(self.auth_secret or self.auth_public_key or self.auth_jwks_url)

    def signing_key(self) -> str:
        """The session-cookie key: the configured one, or a fresh random one."""
        return self.secret_key or secrets.token_hex(32)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the README and ``--help`` output."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = ("unset" if default is None
                 else (",".join(map(str, default)) or "none") if isinstance(default, tuple) else str(default))
        rows.append((f.metadata["env"], shown, f.metadata["doc"]))
    return rows
