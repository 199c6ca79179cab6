"""Every setting, its default, and how it is read from the environment.

Settings come from ``SWITCHBOARD_*`` variables (plus ``PORT`` and
``WEB_CONCURRENCY``, the conventional names). Each one is parsed and checked
here, once, at start-up: a bad value stops the process with a message that
names the variable, instead of failing later in a request.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import config_values as parse


class ConfigError(ValueError):
    """A setting has a value Switchboard cannot run with."""


def _setting(env: str, default: Any, reader: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": reader, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Switchboard's configuration. Field metadata names the environment variable."""

    redis_url: str | None = _setting(
        "SWITCHBOARD_REDIS_URL", None, parse.redis_url, "Redis URL; unset = in-memory hub (one worker only)."
    )
    redis_prefix: str = _setting(
        "SWITCHBOARD_REDIS_PREFIX",
        "switchboard",
        parse.key_prefix,
        "Prefix of every Redis key and channel; give each deployment sharing one Redis its own.",
    )
    redis_cluster: bool | None = _setting(
        "SWITCHBOARD_REDIS_CLUSTER",
        None,
        parse.optional_bool,
        "1: SWITCHBOARD_REDIS_URL names a node of a Redis Cluster (sharded Pub/Sub, Redis 7); 0: one "
        "server; unset: asked of the server at start.",
    )
    redis_sentinels: tuple[tuple[str, int], ...] = _setting(
        "SWITCHBOARD_REDIS_SENTINELS",
        (),
        parse.host_ports,
        "Sentinels as host:port,host:port: workers find the primary through them and follow a "
        "failover (with SWITCHBOARD_REDIS_SENTINEL_MASTER; no SWITCHBOARD_REDIS_URL needed).",
    )
    redis_sentinel_master: str | None = _setting(
        "SWITCHBOARD_REDIS_SENTINEL_MASTER",
        None,
        parse.optional_name,
        "The name the sentinels monitor the primary under.",
    )
    redis_min_replicas: int = _setting(
        "SWITCHBOARD_REDIS_MIN_REPLICAS",
        0,
        parse.integer(0, 16),
        "Replicas that must have an event before its publisher gets the 201 (WAIT, up to "
        "SWITCHBOARD_REDIS_REPLICA_TIMEOUT; else 503). One server or Sentinel only.",
    )
    redis_replica_timeout: float = _setting(
        "SWITCHBOARD_REDIS_REPLICA_TIMEOUT",
        1.0,
        parse.seconds(0.001, 60),
        "Seconds an append waits for SWITCHBOARD_REDIS_MIN_REPLICAS replicas.",
    )
    redis_routing: str = _setting(
        "SWITCHBOARD_REDIS_ROUTING",
        "topic",
        parse.routing,
        "topic: a worker subscribes to each topic it serves (one channel per topic); shared: one "
        "channel every worker hears in full (the former design, for comparison).",
    )
    allowed_origins: tuple[str, ...] = _setting(
        "SWITCHBOARD_ALLOWED_ORIGINS",
        (),
        parse.origins,
        "Extra origins allowed to open WebSockets (comma-separated); same host is always allowed.",
    )
    history_size: int = _setting(
        "SWITCHBOARD_HISTORY_SIZE", 1000, parse.integer(1, 1_000_000), "Events kept per topic for replay and polling."
    )
    history_ttl: float = _setting(
        "SWITCHBOARD_HISTORY_TTL", 3600.0, parse.seconds(1), "Seconds an event stays in history."
    )
    queue_size: int = _setting(
        "SWITCHBOARD_QUEUE_SIZE",
        256,
        parse.integer(1, 100_000),
        "Events buffered per subscriber before it is caught up from history or dropped.",
    )
    history_bytes: int = _setting(
        "SWITCHBOARD_HISTORY_BYTES",
        8 * 1024 * 1024,
        parse.integer(1024, 1 << 40),
        "Bytes of history kept per topic (an event counts as its JSON; with Redis, as its stored "
        "body); the oldest events go first, the newest always stays.",
    )
    queue_bytes: int = _setting(
        "SWITCHBOARD_QUEUE_BYTES",
        4 * 1024 * 1024,
        parse.integer(1024, 1 << 40),
        "Bytes buffered per subscriber (events' JSON) before it is caught up from history or "
        "dropped, as with SWITCHBOARD_QUEUE_SIZE; one event is always taken into an empty queue.",
    )
    max_topics: int = _setting(
        "SWITCHBOARD_MAX_TOPICS",
        100_000,
        parse.integer(0, 100_000_000),
        "Topics held at once (0 = no limit): by this worker's in-memory hub, or with Redis by the "
        "deployment's Redis. A publish to a new topic beyond it: 429 too_many_topics. A topic with "
        "no subscriber and no event younger than SWITCHBOARD_HISTORY_TTL is forgotten.",
    )
    presence_topics: tuple[str, ...] = _setting(
        "SWITCHBOARD_PRESENCE_TOPICS",
        ("chat",),
        parse.topic_patterns,
        "Topic patterns that have presence (comma-separated, e.g. chat,room.*; empty: none): GET "
        "/api/topics/<topic>/presence, and join and leave events (type presence) on the topic.",
    )
    presence_ttl: float = _setting(
        "SWITCHBOARD_PRESENCE_TTL",
        15.0,
        parse.seconds(0.5, 3600),
        "Seconds presence outlives its last sign of life: a poller counts as present this long "
        "after each poll, and a worker's entries in Redis expire this long after it last renewed "
        "them (every quarter of it), so the users of a worker that died leave within 1.25 times it.",
    )
    longpoll_timeout: float = _setting(
        "SWITCHBOARD_LONGPOLL_TIMEOUT",
        25.0,
        parse.seconds(0.05, 3600),
        "Longest a long poll is parked (seconds); keep it below nginx's proxy_read_timeout.",
    )
    sse_heartbeat: float = _setting(
        "SWITCHBOARD_SSE_HEARTBEAT",
        15.0,
        parse.seconds(0.05, 3600),
        "Seconds between SSE heartbeat comments; also how a gone client is noticed.",
    )
    sse_retry_ms: int = _setting(
        "SWITCHBOARD_SSE_RETRY_MS",
        2000,
        parse.integer(0, 3_600_000),
        "The retry: value sent to EventSource clients (milliseconds).",
    )
    max_message_bytes: int = _setting(
        "SWITCHBOARD_MAX_MESSAGE_BYTES",
        1024 * 1024,
        parse.integer(64, 64 * 1024 * 1024),
        "Largest HTTP body, WebSocket message or STOMP frame accepted.",
    )
    ws_ping_interval: float = _setting(
        "SWITCHBOARD_WS_PING_INTERVAL",
        20.0,
        parse.seconds(0, 3600),
        "Seconds between server WebSocket pings (0 = off); a peer that stops answering is closed.",
    )
    max_connections: int = _setting(
        "SWITCHBOARD_MAX_CONNECTIONS",
        10_000,
        parse.integer(0, 1_000_000),
        "Streams one worker holds at once (SSE, parked long polls, WebSockets; 0 = no limit); "
        "beyond it: 503 with Retry-After. Keep it below gunicorn's worker_connections (20000).",
    )
    max_connections_per_client: int = _setting(
        "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT",
        5_000,
        parse.integer(0, 1_000_000),
        "Streams one client address holds in one worker (0 = no limit); beyond it: 429. Behind "
        "nginx set SWITCHBOARD_BEHIND_PROXY, or every client shares nginx's address.",
    )
    max_subscriptions: int = _setting(
        "SWITCHBOARD_MAX_SUBSCRIPTIONS",
        100,
        parse.integer(1, 100_000),
        "Topics one /ws or STOMP connection may follow at once (each costs a queue and a greenlet).",
    )
    max_stream_topics: int = _setting(
        "SWITCHBOARD_MAX_STREAM_TOPICS",
        16,
        parse.integer(1, 32),
        "Topics one multi-topic SSE stream or long poll may follow (?topic=a&topic=b; each costs "
        "a queue); beyond it: 400. At most 32, so a compound cursor fits gunicorn's 8190-byte header.",
    )
    publish_rate: float = _setting(
        "SWITCHBOARD_PUBLISH_RATE",
        200.0,
        parse.seconds(0, 1_000_000),
        "Publishes per second allowed per /ws or STOMP connection and per client address over "
        "HTTP (a token bucket; 0 = no limit).",
    )
    publish_burst: int = _setting(
        "SWITCHBOARD_PUBLISH_BURST",
        2000,
        parse.integer(1, 10_000_000),
        "Publishes allowed at once before SWITCHBOARD_PUBLISH_RATE applies (the bucket's size).",
    )
    doctor_rate: float = _setting(
        "SWITCHBOARD_DOCTOR_RATE",
        1.0,
        parse.seconds(0, 1_000_000),
        "Requests per second to /api/doctor/... allowed per client address (a token bucket; 0 = no limit).",
    )
    doctor_burst: int = _setting(
        "SWITCHBOARD_DOCTOR_BURST",
        30,
        parse.integer(1, 1_000_000),
        "/api/doctor/... requests allowed at once before SWITCHBOARD_DOCTOR_RATE applies (one run of the "
        "doctor page makes 14, of the command line 6).",
    )
    doctor_streams: int = _setting(
        "SWITCHBOARD_DOCTOR_STREAMS",
        10,
        parse.integer(0, 100_000),
        "Doctor responses one client address may hold open at once (timed and idle streams, slow polls; "
        "0 = no limit); they also count as streams against SWITCHBOARD_MAX_CONNECTIONS*.",
    )
    doctor_max_wait: float = _setting(
        "SWITCHBOARD_DOCTOR_MAX_WAIT",
        120.0,
        parse.seconds(1, 3600),
        "Longest silence the doctor's idle stream and slow poll hold (seconds); keep it above the SSE "
        "heartbeat and the long-poll timeout, or the doctor cannot tell whether they survive the proxy.",
    )
    stomp_heartbeat_ms: tuple[int, int] = _setting(
        "SWITCHBOARD_STOMP_HEARTBEAT_MS",
        (1000, 1000),
        parse.heart_beat,
        "The server's STOMP heart-beat floors (send,receive) in ms: it never sends heart-beats "
        "more often, nor asks the client for them more often; the client's offer decides above.",
    )
    sockjs_heartbeat: float = _setting(
        "SWITCHBOARD_SOCKJS_HEARTBEAT",
        25.0,
        parse.seconds(0.05, 3600),
        "Seconds without a frame after which a SockJS session sends an h frame (SockJS's 25 s; "
        "off once STOMP heart-beats are negotiated on it, as Spring does).",
    )
    sockjs_disconnect_delay: float = _setting(
        "SWITCHBOARD_SOCKJS_DISCONNECT_DELAY",
        5.0,
        parse.seconds(0.05, 3600),
        "Seconds a SockJS session lives on without a receiving request (between two polls) before "
        "it is closed and forgotten.",
    )
    sockjs_response_limit: int = _setting(
        "SWITCHBOARD_SOCKJS_RESPONSE_LIMIT",
        128 * 1024,
        parse.integer(1, 1 << 30),
        "Bytes one SockJS streaming response (xhr_streaming, eventsource, htmlfile) carries before it "
        "ends and the client opens the next (the browser keeps the whole response in memory).",
    )
    write_timeout: float = _setting(
        "SWITCHBOARD_WRITE_TIMEOUT",
        30.0,
        parse.seconds(0, 3600),
        "Seconds one write to an HTTP client (an SSE chunk) may block before the connection is "
        "cut: a client that reads nothing is dropped (0 = never). WebSockets use their pings.",
    )
    behind_proxy: bool = _setting(
        "SWITCHBOARD_BEHIND_PROXY",
        False,
        parse.boolean,
        "Trust one proxy's X-Forwarded-For/-Proto/-Host (set when nginx is in front).",
    )
    stomp_app_prefix: str = _setting(
        "SWITCHBOARD_STOMP_APP_PREFIX",
        "/app",
        parse.prefix,
        "STOMP destinations handled by application handlers (Spring's /app or the seed's /pub).",
    )
    stomp_topic_prefix: str = _setting(
        "SWITCHBOARD_STOMP_TOPIC_PREFIX",
        "/topic",
        parse.prefix,
        "STOMP destinations that are hub topics (Spring's /topic or the seed's /sub).",
    )
    stomp_queue_prefix: str = _setting(
        "SWITCHBOARD_STOMP_QUEUE_PREFIX",
        "/queue",
        parse.prefix,
        "STOMP destinations that are work queues (RabbitMQ's and Spring's /queue): each message to one consumer.",
    )
    stomp_user_prefix: str = _setting(
        "SWITCHBOARD_STOMP_USER_PREFIX",
        "/user",
        parse.prefix,
        "STOMP per-user destinations (Spring's /user): SUBSCRIBE <prefix>/queue/<name>, SEND "
        "<prefix>/<sub>/queue/<name>.",
    )
    queue_max_messages: int = _setting(
        "SWITCHBOARD_QUEUE_MAX_MESSAGES",
        10_000,
        parse.integer(1, 100_000_000),
        "Messages one work queue holds, waiting and un-acknowledged together; a send beyond it: STOMP "
        'ERROR "queue full", HTTP 429 queue_full (nothing dropped).',
    )
    queue_max_bytes: int = _setting(
        "SWITCHBOARD_QUEUE_MAX_BYTES",
        64 * 1024 * 1024,
        parse.integer(1024, 1 << 40),
        "Bytes one work queue holds (each message as its event's JSON), as SWITCHBOARD_QUEUE_MAX_MESSAGES.",
    )
    max_queues: int = _setting(
        "SWITCHBOARD_MAX_QUEUES",
        1000,
        parse.integer(1, 1_000_000),
        "Work queues held at once (dead-letter queues included); a send to a new one beyond it: 429 queue_full.",
    )
    queue_ack_timeout: float = _setting(
        "SWITCHBOARD_QUEUE_ACK_TIMEOUT",
        120.0,
        parse.seconds(0.05, 86400),
        "Seconds a consumer may hold a queue message without ACK before it goes to another consumer.",
    )
    queue_max_deliveries: int = _setting(
        "SWITCHBOARD_QUEUE_MAX_DELIVERIES",
        5,
        parse.integer(1, 1000),
        "Deliveries of one queue message (NACK, disconnect, ack timeout each add one) before it goes to "
        "<queue>.dlq; also how often a NACKed topic message is sent again before it is dropped.",
    )
    stomp_login: str | None = _setting(
        "SWITCHBOARD_STOMP_LOGIN",
        None,
        parse.optional_text,
        "When set (with the passcode), STOMP CONNECT must carry this login.",
    )
    stomp_passcode: str | None = _setting(
        "SWITCHBOARD_STOMP_PASSCODE",
        None,
        parse.optional_text,
        "When set (with the login), STOMP CONNECT must carry this passcode.",
    )
    auth_secret: str | None = _setting(
        "SWITCHBOARD_AUTH_SECRET",
        None,
        parse.auth_secret,
        "HS256 key that verifies clients' JWTs (at least 32 characters). Setting any auth key "
        "turns access control on: anonymous clients then get only the ANONYMOUS_* topics.",
    )
    auth_public_key: str | None = _setting(
        "SWITCHBOARD_AUTH_PUBLIC_KEY",
        None,
        parse.pem_file,
        "Path of a PEM public key (RSA: RS256, EC P-256: ES256) that verifies clients' JWTs.",
    )
    auth_jwks_url: str | None = _setting(
        "SWITCHBOARD_AUTH_JWKS_URL",
        None,
        parse.http_url,
        "URL of a JWKS document whose keys verify clients' JWTs (fetched on demand, cached).",
    )
    auth_audience: str | None = _setting(
        "SWITCHBOARD_AUTH_AUDIENCE", None, parse.optional_text, "When set, a token's aud claim must name it."
    )
    auth_issuer: str | None = _setting(
        "SWITCHBOARD_AUTH_ISSUER", None, parse.optional_text, "When set, a token's iss claim must equal it."
    )
    anonymous_subscribe: tuple[str, ...] | None = _setting(
        "SWITCHBOARD_ANONYMOUS_SUBSCRIBE",
        None,
        parse.topic_patterns,
        "Topic patterns anonymous clients may follow (comma-separated, e.g. chat,ticks,room.*). "
        "Unset: every topic without an auth key, none with one.",
    )
    anonymous_publish: tuple[str, ...] | None = _setting(
        "SWITCHBOARD_ANONYMOUS_PUBLISH",
        None,
        parse.topic_patterns,
        "Topic patterns anonymous clients may publish to. Unset: every topic without an auth key, none with one.",
    )
    auth_hook_url: str | None = _setting(
        "SWITCHBOARD_AUTH_HOOK_URL",
        None,
        parse.http_url,
        "The application's decision endpoint, asked (POST) about a subscribe or publish that a "
        "token's claims do not allow; 2xx allows, 4xx refuses; 3xx, 5xx, down or slow = 503 (fails closed).",
    )
    auth_hook_timeout: float = _setting(
        "SWITCHBOARD_AUTH_HOOK_TIMEOUT",
        2.0,
        parse.seconds(0.01, 60),
        "Seconds the decision hook may take before the request fails closed (503).",
    )
    auth_hook_ttl: float = _setting(
        "SWITCHBOARD_AUTH_HOOK_TTL",
        30.0,
        parse.seconds(0, 86400),
        "Seconds a hook's answer is cached per (sub, action, topic); 0 = ask every time.",
    )
    auth_ticket_ttl: float = _setting(
        "SWITCHBOARD_AUTH_TICKET_TTL",
        30.0,
        parse.seconds(1, 300),
        "Lifetime of a single-use ?ticket= from POST /api/tickets (seconds).",
    )
    auth_refresh_grace: float = _setting(
        "SWITCHBOARD_AUTH_REFRESH_GRACE",
        10.0,
        parse.seconds(0, 3600),
        "Seconds a /ws connection whose token expired has to send a new one (op auth) before it is closed with 4001.",
    )
    metrics_token: str | None = _setting(
        "SWITCHBOARD_METRICS_TOKEN",
        None,
        parse.secret,
        "When set, GET /metrics needs it as a Bearer token (401 otherwise).",
    )
    demo_users: tuple[str, ...] = _setting(
        "SWITCHBOARD_DEMO_USERS",
        (),
        parse.demo_users,
        "Names the index page's demo sign-in may mint short-lived tokens for (e.g. alice,bob); "
        "needs SWITCHBOARD_AUTH_SECRET. Never set it in production.",
    )
    ticks: bool = _setting(
        "SWITCHBOARD_TICKS",
        True,
        parse.boolean,
        "Run the demo producer that publishes to topic 'ticks' every second while someone listens.",
    )
    secret_key: str | None = _setting(
        "SWITCHBOARD_SECRET_KEY",
        None,
        parse.secret,
        "Key that signs the session cookie; unset = a random key per start.",
    )
    log_level: str = _setting("SWITCHBOARD_LOG_LEVEL", "INFO", parse.log_level, "Log level.")
    port: int = _setting("PORT", 8000, parse.integer(1, 65535), "Port gunicorn binds on 127.0.0.1.")
    web_concurrency: int = _setting(
        "WEB_CONCURRENCY",
        1,
        parse.integer(1, 64),
        "gunicorn worker processes; more than one needs SWITCHBOARD_REDIS_URL (or Sentinel).",
    )

    @property
    def redis_enabled(self) -> bool:
        """True when the hub is in Redis (a URL, or Sentinel)."""
        return bool(self.redis_url or self.redis_sentinels)

    def __post_init__(self) -> None:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ConfigError("set both SWITCHBOARD_REDIS_SENTINELS and SWITCHBOARD_REDIS_SENTINEL_MASTER, or neither")
        if self.redis_min_replicas and (self.redis_cluster or not self.redis_enabled):
            raise ConfigError(
                "SWITCHBOARD_REDIS_MIN_REPLICAS works with one Redis server or Sentinel, not with "
                "the in-memory hub or a cluster (WAIT counts one connection's writes on one primary)"
            )
        if self.redis_cluster and self.redis_sentinels:
            raise ConfigError(
                "SWITCHBOARD_REDIS_CLUSTER and SWITCHBOARD_REDIS_SENTINELS exclude each other: "
                "a cluster fails over by itself"
            )
        if self.web_concurrency > 1 and not self.redis_enabled:
            raise ConfigError(
                f"WEB_CONCURRENCY={self.web_concurrency} needs SWITCHBOARD_REDIS_URL: with the "
                "in-memory hub each worker would have its own audience and a publish would reach "
                "only the clients of the worker that took it. Set SWITCHBOARD_REDIS_URL or use one worker."
            )
        prefixes = (self.stomp_app_prefix, self.stomp_topic_prefix, self.stomp_queue_prefix, self.stomp_user_prefix)
        if len(set(prefixes)) != len(prefixes):
            raise ConfigError("SWITCHBOARD_STOMP_APP_PREFIX, _TOPIC_PREFIX, _QUEUE_PREFIX and _USER_PREFIX must differ")
        keys = [
            name
            for name, value in (
                ("SWITCHBOARD_AUTH_SECRET", self.auth_secret),
                ("SWITCHBOARD_AUTH_PUBLIC_KEY", self.auth_public_key),
                ("SWITCHBOARD_AUTH_JWKS_URL", self.auth_jwks_url),
            )
            if value
        ]
        if len(keys) > 1:
            raise ConfigError(f"set only one of {' and '.join(keys)}: tokens are verified with one key source")
        if self.demo_users and not self.auth_secret:
            raise ConfigError(
                "SWITCHBOARD_DEMO_USERS needs SWITCHBOARD_AUTH_SECRET: the demo sign-in mints HS256 tokens with it"
            )
        if bool(self.stomp_login) != bool(self.stomp_passcode):
            raise ConfigError("set both SWITCHBOARD_STOMP_LOGIN and SWITCHBOARD_STOMP_PASSCODE, or neither")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> "Settings":
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
        shown = (
            "unset"
            if default is None
            else (",".join(map(str, default)) or "none")
            if isinstance(default, tuple)
            else str(default)
        )
        rows.append((f.metadata["env"], shown, f.metadata["doc"]))
    return rows
