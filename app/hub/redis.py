"""The Redis backend: history in one Stream per topic, live fan-out over one Pub/Sub channel.

Several gunicorn workers, on one host or many, share one hub through Redis (DESIGN.md §1).
No sticky sessions are needed: every worker reads the same history and hears every event.

Keys (``<p>`` is the prefix, ``switchboard`` by default):

==========================  =============================================================
``<p>:epoch``               the history's epoch, created with "set if absent" by the first
                            script that runs against an empty Redis. Every cursor names it,
                            so after a FLUSHALL (or a Redis that restarted without its data)
                            old cursors are answered with a gap, never matched by number.
``<p>:stream:<topic>``      the topic's events: a Stream whose ids are ``<ms>-<n>``, ``ms``
                            Redis's clock at the append (never going backwards within the
                            topic) and ``n`` the event's number in the topic, 1, 2, 3, ...
                            Field ``b`` holds ``{"type", "sender", "data"}`` as JSON, field
                            ``o`` the bytes of ``b`` appended to the topic before it.
``<p>:meta:<topic>``        hash ``ms``, ``seq``: the newest id given in the topic; ``born``:
                            the ``ms`` of its first event; ``bytes``: the bytes of ``b``
                            ever appended; ``kept``: the ``o`` of the oldest entry the byte
                            bound keeps.
``<p>:topics``              with ``SWITCHBOARD_MAX_TOPICS``: a sorted set of the topics,
                            scored by their last append (ms), to count them.
``<p>:events``              the Pub/Sub channel every append is published on.
``<p>:lock:<name>``         leadership locks (:meth:`RedisBackend.acquire_lock`).
==========================  =============================================================

Numbering events 1, 2, 3 inside the stream id is what makes gap detection exact: a read
after cursor ``n`` must start with event ``n + 1``, or something between was trimmed.

Bounds. An append trims by count (``XADD ... MAXLEN ~ history_size``) and by age
(``XTRIM MINID ~ now - ttl``); both are approximate, Redis drops whole nodes only, so
the reads apply both bounds exactly: an event is retained when its number is among the
newest ``history_size`` and its time is within ``history_ttl`` of Redis's clock. That
is the in-memory backend's contract, event for event. The byte bound
(``history_bytes``) is applied exactly, by the append: each entry records where it
starts in the topic's byte count (field ``o``), so the entries over the bound are the
oldest ones whose ``o`` is below ``bytes - history_bytes``; the append reads them from
the front of the stream and trims them (``XTRIM MINID``, exact). Each entry is read
once on its way out, so the cost follows the bytes appended. The newest event always
stays. Bytes are those of the stored body (``type``, ``sender`` and ``data`` as JSON),
not of the event's full JSON as in memory: the id, topic and time are not stored in it.

Forgetting. Stream and meta carry an expiry of the TTL plus a second, renewed by every
append (in the same script): a topic published to for longer than that is gone from
Redis, whoever still listens. A topic that comes back starts a new life numbered from 1;
its meta's ``born`` is later than any id of the old life (Redis's clock), so a cursor of
the old life is told a gap rather than matched against the new numbers (see the read).
``SWITCHBOARD_MAX_TOPICS`` counts the topics of the whole deployment in ``<p>:topics``
(an append adds one ZADD); at the limit, the entries of forgotten topics are removed
and, if none were, the append is refused (:class:`~app.hub.TooManyTopics`).

Presence (:mod:`app.hub.presence`). Each process holds one entry per (topic, sender) it
has clients of, renewed every quarter ``SWITCHBOARD_PRESENCE_TTL`` and expiring a TTL after
its last renewal. One script per topic adds, renews and drops a process's entries, keeps
the holder counts, and appends (with the append's own code, in the same script) a join
when a sender's count goes 0 -> 1 and a leave when it goes 1 -> 0: two workers cannot both
announce the same join, and the events are in the order of the changes. Entries of a process
that died are expired by the next script that touches the topic: every process sweeps the
topics whose earliest expiry has passed (``<p>:presence-due``) every quarter TTL, and a read
of the topic's presence sweeps it first; so its users leave within 1.25 TTL of its death.
The presence keys do not expire: a live deployment deletes them when they empty.

Atomicity. Each operation is one Lua script: an append stores the event *and* publishes
it (with its id) in one step, so no subscriber hears an event that history lacks, and
every worker hears the events of a topic in stream order. A read sees one consistent
state of epoch, stream and meta.

Live fan-out. Each process holds ONE Pub/Sub connection, owned by one listener greenlet
that hands every event to the hub (``deliver``); the hub offers it to the local
subscribers. There is one channel for the whole deployment: a PUBLISH costs O(workers)
and each worker decodes every event, which is cheap next to writing it to its clients.
(A deployment with many hosts and many topics that each have few listeners would rather
SUBSCRIBE per topic; that needs the hub to report local interest before reading history.)
Events reach even the publishing worker's own subscribers through the channel, not
directly: a local shortcut could overtake another worker's earlier event still in flight,
and the seam rule would then drop that one as old. For the same reason "live only, from
now on" means from where this process's feed is: an event published a moment before a
live-only subscribe may still be on its way, and is then delivered.

Failures. A command that cannot reach Redis raises :class:`~app.hub.BackendUnavailable`
(HTTP 503). The listener notices a broken connection at once (EOF) or through a PING it
sends after ``ping_interval`` seconds of silence, reconnects with capped, jittered
exponential backoff, and once subscribed again asks the hub to resync every
subscription from history (:meth:`app.hub.Hub.resync_all`): no event that reached Redis
is lost, and a flushed Redis shows up as a gap (new epoch).

Requires Redis 6.2 or newer (``XADD MINID``, exclusive ``XRANGE`` bounds). The scripts
touch the epoch key and a topic's keys together, so Redis Cluster is not supported.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import socket
import time
from typing import Any, Callable

import gevent
import gevent.event
import gevent.socket
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..events import Cursor, Event, RawBody, extras_from_stored, stored_extras
from . import BackendUnavailable, TooManyTopics

log = logging.getLogger(__name__)

# Topics whose last heard event the listener remembers between two subscribes (beyond
# that, a live-only subscription resumes from the coarser known-good point).
_MAX_HEARD = 10_000

# Replies that mean "Redis cannot serve now" rather than "this code is wrong".
_UNAVAILABLE_REPLIES = ("OOM", "MISCONF", "BUSY", "MASTERDOWN", "LOADING", "TRYAGAIN", "NOREPLICAS")

# -- Lua -------------------------------------------------------------------------------
# KEYS[1] is always the epoch key, ARGV[1] a fresh random epoch used only when Redis has
# none. Numbers go through string.format('%d'): Lua's own tostring would print ms as
# 1.7e+12.

_PRELUDE = r"""
local function get_epoch()
  local epoch = redis.call('GET', KEYS[1])
  if not epoch then
    epoch = ARGV[1]
    redis.call('SET', KEYS[1], epoch)
  end
  return epoch
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function last_id(meta)
  local last = redis.call('HMGET', meta, 'ms', 'seq')
  return tonumber(last[1] or '0'), tonumber(last[2] or '0')
end
"""

# Trims the entries at the front of a stream that start before byte `floor` (field `o`),
# exactly, and returns the `o` of the first one kept. The newest entry starts at or after
# `floor` (the caller makes sure), so the loop ends there at the latest. Batches grow, as
# there is usually one entry to drop and rarely hundreds.
_TRIM_BYTES = r"""
local function trim_bytes(stream, floor)
  local start, count = '-', 2
  while true do
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', count)
    if #batch == 0 then return floor end
    for _, entry in ipairs(batch) do
      local o = tonumber(entry[2][4] or '-1')  -- fields b, o; an entry without o predates it
      if o >= floor then
        redis.call('XTRIM', stream, 'MINID', entry[1])
        return o
      end
    end
    start = '(' .. batch[#batch][1]
    count = math.min(count * 4, 512)
  end
end
"""

# Appends one event (the append script's body, also used by the presence script): stores
# it, trims by count, age and bytes, renews the topic's keys and publishes it with its id.
# Arguments: the stream, meta and topics keys, then history size, ttl ms, channel, topic,
# body, key lifetime ms, history bytes (0: none), max topics (0: none).
# Returns {epoch, id}, or {epoch, '', ms until a topic may be forgotten} when refused.
_APPEND_FUNCTION = _PRELUDE + _TRIM_BYTES + r"""
local function append(stream, meta_key, topics, size, ttl, channel, topic, body, lifetime, max_bytes, max_topics)
  local epoch = get_epoch()
  local now = now_ms()
  lifetime = tonumber(lifetime)
  max_topics = tonumber(max_topics)
  if max_topics > 0 then
    -- A topic is held while its keys live: `lifetime` ms after its last append (its score).
    if not redis.call('ZSCORE', topics, topic) and redis.call('ZCARD', topics) >= max_topics then
      redis.call('ZREMRANGEBYSCORE', topics, '-inf', string.format('(%d', math.floor(now - lifetime)))
      if redis.call('ZCARD', topics) >= max_topics then
        local oldest = redis.call('ZRANGE', topics, 0, 0, 'WITHSCORES')
        return {epoch, '', string.format('%d', math.max(0, tonumber(oldest[2]) + lifetime - now))}
      end
    end
    redis.call('ZADD', topics, string.format('%d', math.floor(now)), topic)
    redis.call('PEXPIRE', topics, lifetime)
  end
  local meta = redis.call('HMGET', meta_key, 'ms', 'seq', 'bytes', 'kept')
  local last_ms, last_seq = tonumber(meta[1] or '0'), tonumber(meta[2] or '0')
  local offset = tonumber(meta[3] or '0')
  local ms = math.max(math.floor(now), last_ms)
  local seq = last_seq + 1
  local id = string.format('%d-%d', ms, seq)
  redis.call('XADD', stream, 'MAXLEN', '~', size, id, 'b', body, 'o', string.format('%d', offset))
  redis.call('XTRIM', stream, 'MINID', '~', string.format('%d', math.max(0, math.floor(now - tonumber(ttl)))))
  local total = offset + #body
  local fields = {'ms', string.format('%d', ms), 'seq', string.format('%d', seq), 'bytes', string.format('%d', total)}
  max_bytes = tonumber(max_bytes)
  if max_bytes > 0 then
    -- Entries starting before `floor` are over the bound; the newest (at `offset`) stays.
    local floor = math.min(total - max_bytes, offset)
    if tonumber(meta[4] or '0') < floor then
      fields[#fields + 1] = 'kept'
      fields[#fields + 1] = string.format('%d', trim_bytes(stream, floor))
    end
  end
  redis.call('HSET', meta_key, unpack(fields))
  redis.call('HSETNX', meta_key, 'born', string.format('%d', ms))
  redis.call('PEXPIRE', stream, lifetime)
  redis.call('PEXPIRE', meta_key, lifetime)
  redis.call('PUBLISH', channel, topic .. '\n' .. epoch .. '-' .. id .. '\n' .. body)
  return {epoch, id}
end
"""

# KEYS: epoch, stream, meta, topics. ARGV: epoch candidate, history size, ttl ms, channel,
# topic, body, key lifetime ms, history bytes (0: none), max topics (0: none).
_APPEND = _APPEND_FUNCTION + r"""
return append(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
"""

# Retained events from a stream id on: the age bound is the caller's start id, the count
# bound (numbers above last_seq - size) is applied here, since MAXLEN ~ keeps a few more.
_RETAINED = r"""
local function retained(stream, start, count_floor, limit)
  local out = {}
  while #out < limit do
    local want = limit - #out
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', want)
    for _, entry in ipairs(batch) do
      local _, seq = id_parts(entry[1])
      if seq > count_floor then
        out[#out + 1] = entry
      end
    end
    if #batch < want then break end
    start = '(' .. batch[#batch][1]
  end
  return out
end

local function flatten(head, entries)
  for _, entry in ipairs(entries) do
    head[#head + 1] = entry[1]
    head[#head + 1] = entry[2][2]
  end
  return head
end
"""

# KEYS: epoch, stream, meta. ARGV: epoch candidate, history size, ttl ms, cursor epoch
# ('' if the cursor is not a stream position), cursor ms, cursor seq, limit.
# Returns {epoch, gap (0/1), id, body, id, body, ...}.
_READ_AFTER = _PRELUDE + _RETAINED + r"""
local epoch = get_epoch()
local oldest_ms = math.max(0, math.ceil(now_ms() - tonumber(ARGV[3])))  -- older ids have expired
local oldest = string.format('%d-0', oldest_ms)
local last_ms, last_seq = last_id(KEYS[3])
local count_floor = last_seq - tonumber(ARGV[2])
local limit = tonumber(ARGV[7])
local c_ms, c_seq = tonumber(ARGV[5]), tonumber(ARGV[6])

-- Another epoch, or a position this history never reached: a gap. So is a cursor older
-- than the topic's first event (`born`): it is of a previous life of the topic, which
-- expired; its numbers restarted at 1, so matching them would skip new events silently,
-- and whether the cursor was that life's last event is no longer known. (Sequence 0 is
-- never issued: it is the read position "before everything" from the position script.)
local born = tonumber(redis.call('HGET', KEYS[3], 'born') or '0')
local gap = ARGV[4] ~= epoch or c_seq > last_seq or c_ms > last_ms or (c_ms == last_ms and c_seq > last_seq)
  or (c_seq > 0 and c_ms < born)
local events
if not gap then
  local start = oldest
  if c_ms >= oldest_ms then
    start = string.format('(%d-%d', c_ms, c_seq)
  end
  events = retained(KEYS[2], start, count_floor, limit)
  if #events > 0 then
    local _, first_seq = id_parts(events[1][1])
    gap = first_seq ~= c_seq + 1           -- the next event was trimmed or expired
  else
    gap = c_seq < last_seq                 -- later events exist, none retained
  end
end
if gap then
  events = retained(KEYS[2], oldest, count_floor, limit)
end
return flatten({epoch, gap and 1 or 0}, events)
"""

# KEYS: epoch, stream, meta. ARGV: epoch candidate, history size, ttl ms, limit.
# Returns {epoch, id, body, ...}, newest first.
_READ_LATEST = _PRELUDE + _RETAINED + r"""
local epoch = get_epoch()
local oldest = string.format('%d-0', math.max(0, math.ceil(now_ms() - tonumber(ARGV[3]))))
local limit = math.min(tonumber(ARGV[4]), tonumber(ARGV[2]))
-- The stream's newest entries are numbered last_seq, last_seq - 1, ... (it is trimmed
-- from the front only), so the newest `history size` of them are all within the bound.
return flatten({epoch}, redis.call('XREVRANGE', KEYS[2], '+', oldest, 'COUNT', limit))
"""

# KEYS: epoch, stream, meta. ARGV: epoch candidate, history size, ttl ms, count (0/1).
# Returns {epoch, last ms, last seq, retained count (if asked)}.
_STAT = _PRELUDE + r"""
local epoch = get_epoch()
local last_ms, last_seq = last_id(KEYS[3])
local retained = 0
if ARGV[4] == '1' and last_seq > 0 then
  local oldest = string.format('%d-0', math.max(0, math.ceil(now_ms() - tonumber(ARGV[3]))))
  local first = redis.call('XRANGE', KEYS[2], oldest, '+', 'COUNT', 1)
  if #first > 0 then
    local _, first_seq = id_parts(first[1][1])
    retained = last_seq - math.max(first_seq - 1, last_seq - tonumber(ARGV[2]))
  end
end
return {epoch, last_ms, last_seq, retained}
"""

# Where a live-only subscription resumes after the listener was cut: the position of
# the newest event older than `floor` ms, i.e. just before anything it may have missed.
# KEYS: epoch, stream, meta. ARGV: epoch candidate, floor ms. Returns {epoch, ms, seq}.
_POSITION = _PRELUDE + r"""
local epoch = get_epoch()
local floor = ARGV[2]
local last_ms, last_seq = last_id(KEYS[3])
if last_ms < tonumber(floor) then
  return {epoch, last_ms, last_seq}
end
local before = redis.call('XREVRANGE', KEYS[2], '(' .. floor .. '-0', '-', 'COUNT', 1)
if #before > 0 then
  local ms, seq = id_parts(before[1][1])
  return {epoch, ms, seq}
end
-- Everything older is gone: stand just before the first event at or after the floor.
local after = redis.call('XRANGE', KEYS[2], floor .. '-0', '+', 'COUNT', 1)
local next_seq = last_seq + 1
if #after > 0 then
  local _, seq = id_parts(after[1][1])
  next_seq = seq
end
return {epoch, tonumber(floor) - 1, next_seq - 1}
"""

# KEYS: epoch. ARGV: epoch candidate. Returns {epoch, now ms}.
_CLOCK = _PRELUDE + r"""
return {get_epoch(), math.floor(now_ms())}
"""

# KEYS: topics. ARGV: key lifetime ms. The topics whose keys still live.
_TOPIC_COUNT = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
return redis.call('ZCOUNT', KEYS[1], string.format('%d', math.floor(now - tonumber(ARGV[1]))), '+inf')
"""

# KEYS: lock. ARGV: owner token, ttl ms. SET NX PX, or renew when we own it.
_ACQUIRE = r"""
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lock. ARGV: owner token. Deletes the lock only if we own it.
_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Presence (see the module docstring). KEYS: epoch, stream, meta, topics, entries, members,
# holders, due. ARGV: epoch candidate, history size, ttl ms, channel, topic, key lifetime ms,
# history bytes, max topics (the append's), then this process's token, the entries' ttl ms,
# the number k of senders entering, k senders entering (or renewed), the senders leaving.
# First expires the topic's entries whose time is up (a process that died), except those
# renewed by this call. Returns {epoch, action, sender, ...}: the events appended.
_PRESENCE = _APPEND_FUNCTION + r"""
local topic, worker = ARGV[5], ARGV[9]
local entry_ttl, entering = tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()
local out = {get_epoch()}

local function announce(action, sender)
  local body = cjson.encode({type = 'presence', sender = sender, data = {action = action, sender = sender}})
  local reply = append(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], topic, body, ARGV[6], ARGV[7], ARGV[8])
  if reply[2] ~= '' then  -- else refused by the topic limit: presence still counts, unannounced
    out[#out + 1] = action
    out[#out + 1] = sender
  end
end

-- holders counts a sender's entries (one per process); the first one joins, the last leaves.
local function hold(sender)
  if redis.call('HINCRBY', KEYS[7], sender, 1) == 1 then
    redis.call('ZADD', KEYS[6], string.format('%d', math.floor(now)), sender)
    announce('join', sender)
  end
end

local function release(sender)
  if redis.call('HINCRBY', KEYS[7], sender, -1) <= 0 then
    redis.call('HDEL', KEYS[7], sender)
    if redis.call('ZREM', KEYS[6], sender) == 1 then
      announce('leave', sender)
    end
  end
end

local renewed = {}
for i = 12, 11 + entering do
  renewed[worker .. ':' .. ARGV[i]] = true
end
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', string.format('%d', math.floor(now)))) do
  if not renewed[entry] then  -- an entry is <token>:<sender>; tokens are hex
    redis.call('ZREM', KEYS[5], entry)
    release(string.sub(entry, string.find(entry, ':', 1, true) + 1))
  end
end
local expires = string.format('%d', math.floor(now + entry_ttl))
for i = 12, 11 + entering do
  if redis.call('ZADD', KEYS[5], expires, worker .. ':' .. ARGV[i]) == 1 then
    hold(ARGV[i])
  end
end
for i = 12 + entering, #ARGV do
  if redis.call('ZREM', KEYS[5], worker .. ':' .. ARGV[i]) == 1 then
    release(ARGV[i])
  end
end
-- The topic's next expiry, where every process's sweep looks for work.
local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
if #first == 0 then
  redis.call('ZREM', KEYS[8], topic)
else
  redis.call('ZADD', KEYS[8], first[2], topic)
end
return out
"""

# KEYS: due. ARGV: limit. The topics with an entry whose time is up.
_PRESENCE_DUE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', math.floor(now)), 'LIMIT', 0, ARGV[1])
"""

# Topics one sweep expires at most; the rest wait for the next one (a quarter ttl later).
_SWEEP_TOPICS = 100


class RedisBackend:
    """History in Redis Streams, live delivery through one Pub/Sub listener per process.

    Nothing connects before :meth:`start` (the hub calls it), so a gunicorn worker
    builds its own connections after the fork.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        history_size: events kept per topic.
        history_ttl: seconds an event is kept (by Redis's clock).
        history_bytes: bytes of history kept per topic (stored bodies); the oldest go
            first, the newest always stays. ``None``: no byte bound.
        max_topics: topics the deployment holds at once; an append that would start one
            more raises :class:`~app.hub.TooManyTopics`. 0: no limit (nor count).
        prefix: the start of every key and of the channel; deployments sharing one Redis
            need different prefixes.
        socket_timeout: seconds a command may take before it counts as a failure.
        connect_timeout: seconds to establish a connection.
        max_connections: command connections per process; more concurrent commands wait
            for one (up to ``socket_timeout``). The listener has its own connection.
        ping_interval: seconds of Pub/Sub silence after which the listener PINGs; no
            answer within as long again means the connection is dead.
        reconnect_base: first reconnect delay in seconds (doubling, with jitter).
        reconnect_cap: the longest reconnect delay in seconds.
    """

    name = "redis"

    def __init__(self, url: str, history_size: int, history_ttl: float, *, history_bytes: int | None = None,
                 max_topics: int = 0, prefix: str = "switchboard",
                 socket_timeout: float = 5.0, connect_timeout: float = 2.0, max_connections: int = 64,
                 ping_interval: float = 5.0, reconnect_base: float = 0.05, reconnect_cap: float = 2.0):
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.history_bytes = history_bytes
        self.max_topics = max_topics
        self.prefix = prefix
        self.epoch = ""  # known after the first script runs; /healthz shows it
        self.channel = f"{prefix}:events"
        self.ping_interval = ping_interval
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.reconnects = 0  # times the listener had to reconnect (a test and metrics hook)
        self.received = 0  # messages the listener has read
        self._epoch_key = f"{prefix}:epoch"
        self._topics_key = f"{prefix}:topics"
        self._due_key = f"{prefix}:presence-due"
        self._ttl_ms = max(int(history_ttl * 1000), 1)
        # An idle topic's keys expire a second after its last event has: until then a
        # cursor into it is judged exactly (nothing missed, or a gap); after, it is a gap.
        self._key_lifetime_ms = self._ttl_ms + 1000
        self._connect_timeout = connect_timeout
        self._token = secrets.token_hex(16)  # this process's identity as a lock owner
        self._held_locks: set[str] = set()
        options = dict(protocol=2, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                       retry=Retry(NoBackoff(), 0), health_check_interval=0)
        if not url.startswith("unix:"):
            options["socket_keepalive"] = True  # TCP only: a vanished peer is noticed
        # Commands: a bounded pool shared by the process's greenlets. No retries: an
        # append that failed after reaching Redis must not be stored twice; the client
        # (HTTP 503, or the transport) decides whether to try again.
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout, **options)
        self._redis = redis.Redis(connection_pool=self._pool)
        # The listener's one connection is made from this pool's settings, never pooled.
        self._listen_pool = redis.ConnectionPool.from_url(url, **options)
        self._scripts = {name: self._redis.register_script(source) for name, source in (
            ("append", _APPEND), ("after", _READ_AFTER), ("latest", _READ_LATEST), ("stat", _STAT),
            ("position", _POSITION), ("clock", _CLOCK), ("acquire", _ACQUIRE), ("release", _RELEASE),
            ("topic_count", _TOPIC_COUNT), ("presence", _PRESENCE), ("presence_due", _PRESENCE_DUE))}
        self._deliver: Callable[[Event], None] = lambda event: None
        self._resync: Callable[..., int] | None = None
        self._listener: gevent.Greenlet | None = None
        self._subscribed = gevent.event.Event()
        self._listening = False
        self._commands_ok = True
        self._closed = False
        # Where the live feed stood, for resuming live-only subscriptions after a cut
        # (see _start_for): the last event heard per topic since the last subscribe, and
        # a "known good" point, Redis's epoch and clock (ms) at a moment when every event
        # published before it had reached us.
        self._heard: dict[str, Cursor] = {}
        self._live_epoch: str | None = None  # the epoch of the events the listener delivers
        self._dead_epochs: set[str] = set()  # epochs that ended (Redis was flushed)
        self._floor: tuple[str | None, int] = (None, int(time.time() * 1000))

    # -- lifecycle ----------------------------------------------------------------------

    def set_resync(self, resync: Callable[..., int]) -> None:
        """Take the hub's :meth:`~app.hub.Hub.resync_all`, called after each (re)subscribe."""
        self._resync = resync

    def start(self, deliver: Callable[[Event], None]) -> None:
        """Start the listener greenlet, which hands every published event to ``deliver``.

        Waits up to the connect timeout for the first subscription, so that a request
        right after start-up already has a live feed; if Redis is down the process starts
        anyway (unhealthy, publishes answered 503) and the listener keeps trying.
        """
        self._deliver = deliver
        self._listener = gevent.spawn(self._listen)
        self._subscribed.wait(self._connect_timeout)

    def close(self) -> None:
        """Stop the listener, give up held locks, close the connections."""
        self._closed = True
        for name in list(self._held_locks):
            try:
                self.release_lock(name)
            except Exception:  # best effort: the lock also expires by itself
                log.debug("could not release lock %s", name, exc_info=True)
        if self._listener is not None:
            self._listener.kill(block=True, timeout=2)
        self._listening = False
        self._pool.disconnect()
        self._listen_pool.disconnect()

    @property
    def healthy(self) -> bool:
        """True while the live feed is subscribed and the last command reached Redis."""
        return self._listening and self._commands_ok

    # -- history ------------------------------------------------------------------------

    def append(self, topic: str, type: str, data: Any, sender: str | None, *,
               headers: tuple[tuple[str, str], ...] = (), raw: RawBody | None = None) -> Event:
        """Store a new event at the end of the topic's stream and publish it, atomically.

        Raises:
            BackendUnavailable: Redis cannot be reached (nothing was stored, or, if the
                connection broke after the command left, it may have been).
            TooManyTopics: ``topic`` is new and the deployment holds ``max_topics``
                (nothing was stored).
        """
        body = _encode_body({"type": type, "sender": sender, "data": data, **stored_extras(headers, raw)})
        reply = self._call("append", [*self._topic_keys(topic), self._topics_key],
                           [secrets.token_hex(6), self.history_size, self._ttl_ms, self.channel, topic, body,
                            self._key_lifetime_ms, self.history_bytes or 0, self.max_topics])
        epoch = self._epoch_from(reply[0])
        event_id = reply[1]
        if not event_id:
            raise TooManyTopics(self.max_topics, int(reply[2]) / 1000)
        ms, seq = _id_parts(event_id)
        return Event(Cursor(epoch, (ms, seq)), topic, type, data, sender, ms / 1000, headers=headers, raw=raw)

    def read_after(self, topic: str, cursor: Cursor, limit: int) -> tuple[list[Event], bool]:
        """Events after ``cursor`` (at most ``limit``), and whether some were lost before them.

        A cursor from another epoch, from the future, or older than what history keeps is
        a gap: the answer then starts at the oldest retained event.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        if len(cursor.position) == 2:
            c_epoch, (c_ms, c_seq) = cursor.epoch, cursor.position
        else:  # not a stream position (an in-memory hub's cursor): always a gap
            c_epoch, c_ms, c_seq = "", 0, 0
        reply = self._run("after", topic, self.history_size, self._ttl_ms, c_epoch, c_ms, c_seq, max(limit, 0))
        epoch = self._epoch_from(reply[0])
        return self._events(topic, epoch, reply, 2), bool(reply[1])

    def read_latest(self, topic: str, limit: int) -> list[Event]:
        """The newest ``limit`` retained events, oldest first.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        reply = self._run("latest", topic, self.history_size, self._ttl_ms, limit)
        events = self._events(topic, self._epoch_from(reply[0]), reply, 1)
        events.reverse()
        return events

    def last_cursor(self, topic: str) -> Cursor | None:
        """The cursor of the newest event ever published to the topic (even if expired).

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        epoch, ms, seq, _ = self._run("stat", topic, self.history_size, self._ttl_ms, 0)
        epoch = self._epoch_from(epoch)
        return Cursor(epoch, (int(ms), int(seq))) if int(seq) else None

    def retained(self, topic: str) -> int:
        """How many events the topic's history holds now (by both bounds).

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        epoch, _, _, count = self._run("stat", topic, self.history_size, self._ttl_ms, 1)
        self._epoch_from(epoch)
        return int(count)

    def topic_count(self) -> int | None:
        """Topics the deployment holds now (published to within the keys' lifetime), or
        ``None`` without ``max_topics``: they are counted only for the limit.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        if not self.max_topics:
            return None
        return int(self._call("topic_count", [self._topics_key], [self._key_lifetime_ms]))

    # -- locks --------------------------------------------------------------------------

    def acquire_lock(self, name: str, ttl: float) -> bool:
        """Hold ``name`` for ``ttl`` seconds across every process on this Redis.

        ``SET NX PX`` with this process's owner token; calling it again while holding the
        lock renews the lease. Returns False when another process holds it, or when
        Redis cannot be reached (the caller cannot know that it still leads).
        """
        try:
            granted = bool(self._call("acquire", [self._lock_key(name)], [self._token, max(int(ttl * 1000), 1)]))
        except BackendUnavailable:
            log.debug("lock %s: Redis unavailable, not leading", name)
            granted = False
        if granted:
            self._held_locks.add(name)
        else:
            self._held_locks.discard(name)
        return granted

    def release_lock(self, name: str) -> None:
        """Give up ``name`` if this process holds it (someone else's lock is left alone).

        Raises:
            BackendUnavailable: Redis cannot be reached (the lock then expires by itself).
        """
        self._held_locks.discard(name)
        self._call("release", [self._lock_key(name)], [self._token])

    def claim_once(self, name: str, ttl: float) -> bool:
        """True for the first claim of ``name`` on this Redis within ``ttl`` seconds.

        ``SET NX PX``: atomic across every worker and host, so a single-use ticket is
        used once in the whole deployment.

        Raises:
            BackendUnavailable: Redis cannot be reached (the caller must refuse, not allow).
        """
        try:
            granted = self._redis.set(f"{self.prefix}:once:{name}", b"1", nx=True,
                                      px=max(int(ttl * 1000), 1))
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            self._failed(exc)
        return bool(granted)

    # -- presence (app/hub/presence.py) ----------------------------------------------------

    def presence_update(self, updates, ttl: float) -> list[tuple[str, str, str]]:
        """For each ``(topic, entering, leaving)``: this process holds (or renews) an entry of
        each entering sender for ``ttl`` seconds and drops those of the leaving ones; a
        sender's first entry in the deployment appends a join, its last a leave. One script
        per topic, all in one round trip.

        Returns:
            The events appended, as ``(topic, action, sender)`` (leaves of other processes'
            expired entries in these topics included).

        Raises:
            BackendUnavailable: Redis cannot be reached (some updates may have been applied).
        """
        ttl_ms = max(int(ttl * 1000), 1)
        return self._presence([(topic, list(entering), list(leaving)) for topic, entering, leaving in updates], ttl_ms)

    def presence_sweep(self) -> list[tuple[str, str, str]]:
        """Expire every process's entries whose time is up (a worker that died), in the topics
        the due set names, at most ``_SWEEP_TOPICS`` of them; their leaves are appended.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        due = self._call("presence_due", [self._due_key], [_SWEEP_TOPICS])
        return self._presence([(topic.decode("utf-8"), [], []) for topic in due], 0)

    def presence_members(self, topic: str) -> list[tuple[str, float]]:
        """``(sender, joined at)`` of the topic's present senders, oldest join first; the
        topic's expired entries are swept first, so the answer agrees with the events.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        pipe = self._redis.pipeline(transaction=True)
        self._scripts["presence"](keys=self._presence_keys(topic), args=self._presence_args(topic, 0, [], []),
                                  client=pipe)
        pipe.zrange(f"{self.prefix}:members:{topic}", 0, -1, withscores=True)
        swept, members = self._execute(pipe)
        self._epoch_from(swept[0])
        return [(sender.decode("utf-8"), score / 1000) for sender, score in members]

    def _presence(self, calls: list[tuple[str, list[str], list[str]]], ttl_ms: int) -> list[tuple[str, str, str]]:
        if not calls:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for topic, entering, leaving in calls:
            self._scripts["presence"](keys=self._presence_keys(topic),
                                      args=self._presence_args(topic, ttl_ms, entering, leaving), client=pipe)
        announced = []
        for (topic, _, _), reply in zip(calls, self._execute(pipe)):
            self._epoch_from(reply[0])
            announced += [(topic, reply[i].decode("ascii"), reply[i + 1].decode("utf-8"))
                          for i in range(1, len(reply), 2)]
        return announced

    def _presence_keys(self, topic: str) -> list[str]:
        return [*self._topic_keys(topic), self._topics_key, f"{self.prefix}:presence:{topic}",
                f"{self.prefix}:members:{topic}", f"{self.prefix}:holders:{topic}", self._due_key]

    def _presence_args(self, topic: str, ttl_ms: int, entering: list[str], leaving: list[str]) -> list:
        return [secrets.token_hex(6), self.history_size, self._ttl_ms, self.channel, topic, self._key_lifetime_ms,
                self.history_bytes or 0, self.max_topics, self._token, ttl_ms, len(entering), *entering, *leaving]

    def _execute(self, pipe) -> list:
        """Run a pipeline; failures as :meth:`_call` reports them."""
        try:
            replies = pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            self._failed(exc)
        except ResponseError as exc:
            if not str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise
            self._failed(exc)
        finally:
            pipe.reset()
        self._commands_ok = True
        return replies

    # -- the listener -------------------------------------------------------------------

    def _listen(self) -> None:
        """Keep one Pub/Sub subscription alive and hand every message to the hub."""
        failures = 0
        while not self._closed:
            conn = None
            try:
                conn = self._listen_pool.make_connection()
                conn.connect()
                conn.send_command("SUBSCRIBE", self.channel)
                self._read_reply(conn, self.ping_interval, expect=b"subscribe")
                # From here on every publish reaches us: catch up on what the cut hid.
                self._catch_up()
                if failures:
                    log.warning("redis listener: subscribed again after %d failed attempt(s); "
                                "subscriptions resynced from history", failures)
                    self.reconnects += 1
                failures = 0
                self._listening = True
                self._subscribed.set()
                self._pump(conn)
            except (RedisConnectionError, RedisTimeoutError, BackendUnavailable, OSError) as exc:
                if failures == 0:
                    log.warning("redis listener: connection lost (%s); reconnecting", exc,
                                exc_info=log.isEnabledFor(logging.DEBUG))
            except Exception:  # a bug: log it, and keep the process's live feed alive
                log.error("redis listener failed; reconnecting", exc_info=True)
            finally:
                self._listening = False
                if conn is not None:
                    conn.disconnect()
            if self._closed:
                return
            failures += 1
            gevent.sleep(self._backoff(failures))

    def _catch_up(self) -> None:
        """Resync every local subscription from history, then take "now" as the new
        known-good point. Runs once subscribed after a (re)connect, and when the live
        feed shows that the epoch changed."""
        now = self._clock()
        floor, heard = self._floor, self._heard
        if self._resync is not None:
            self._resync(lambda topic: self._start_for(topic, floor, heard))
        self._floor, self._heard, self._live_epoch = now, {}, now[0]

    def _backoff(self, failures: int) -> float:
        """Exponential delay capped at ``reconnect_cap``, half of it random ("equal jitter")."""
        delay = min(self.reconnect_cap, self.reconnect_base * 2 ** min(failures - 1, 16))
        return delay / 2 + random.uniform(0, delay / 2)

    def _pump(self, conn) -> None:
        """Read messages until the connection breaks (raises)."""
        ping_floor: tuple[str, int] | None = None  # the clock read just before our PING
        since_yield = 0
        while True:
            reply = self._read_reply(conn, self.ping_interval)
            if reply is None:
                if ping_floor is not None:
                    raise RedisTimeoutError(f"no answer to PING within {self.ping_interval:g}s")
                ping_floor = self._clock()
                conn.send_command("PING")
                continue
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[2])
                since_yield += 1
                if since_yield >= 100:  # a flood must not starve the worker's requests
                    since_yield = 0
                    gevent.sleep(0)
            elif kind == b"pong" and ping_floor is not None:
                # Everything published before the PING arrived before this answer.
                self._floor = max(self._floor, ping_floor, key=lambda f: f[1])
                ping_floor = None

    def _read_reply(self, conn, timeout: float, expect: bytes | None = None):
        """The next Pub/Sub reply, or None after ``timeout`` seconds of silence.

        Waits with gevent (not in the socket), so it yields to other greenlets whether or
        not the socket module is monkey-patched.
        """
        if not conn.can_read(0):
            try:
                gevent.socket.wait_read(conn._sock.fileno(), timeout)
            except socket.timeout:
                if expect is not None:
                    raise RedisTimeoutError(f"no {expect.decode()} confirmation within {timeout:g}s") from None
                return None
        reply = conn.read_response()
        if expect is not None and (not isinstance(reply, list) or reply[0] != expect):
            raise RedisConnectionError(f"unexpected reply {reply!r} to {expect.decode()}")
        return reply

    def _on_message(self, payload: bytes) -> None:
        """Decode one published event (``topic\\ncursor\\nbody``) and hand it to the hub."""
        self.received += 1
        try:
            topic, cursor_text, body = payload.split(b"\n", 2)
            cursor = Cursor.parse(cursor_text.decode("ascii"))
            fields = json.loads(body)
            ms = cursor.position[0]
            event = Event(cursor, topic.decode("ascii"), fields["type"], fields["data"], fields["sender"], ms / 1000,
                          **extras_from_stored(fields))
        except (ValueError, KeyError) as exc:
            log.error("redis listener: dropped a malformed message (%s): %r", exc, payload[:200])
            return
        if cursor.epoch in self._dead_epochs:
            return
        if cursor.epoch != self._live_epoch and not self._epoch_is_live(cursor.epoch):
            return
        if ms > self._floor[1]:
            self._floor = (cursor.epoch, ms)
        if len(self._heard) < _MAX_HEARD or event.topic in self._heard:
            self._heard[event.topic] = cursor
        try:
            self._deliver(event)
        except Exception:
            log.error("delivering an event failed", exc_info=True)

    def _epoch_is_live(self, epoch: str) -> bool:
        """Whether an event of ``epoch`` heard live belongs to the current history.

        One channel carries the epochs in order, but this process may learn of a new one
        earlier from a script's reply (another worker flushed Redis, or this one read
        history). Events of an epoch that has ended were published before the flush and
        are gone from history; delivering them after a subscription moved to the new
        epoch would break its order, so they are dropped (the subscriptions that still
        stood in that epoch get a gap from the catch-up). The first event of a new epoch
        triggers that catch-up.
        """
        current, _ = self._clock()
        if epoch != current:
            self._dead_epochs.add(epoch)
            return False
        log.warning("redis listener: the history's epoch changed (Redis flushed or restarted empty); "
                    "resyncing subscriptions")
        self._catch_up()
        return True

    def _clock(self) -> tuple[str, int]:
        """Redis's epoch and clock (ms) now."""
        epoch, now = self._call("clock", [self._epoch_key], [secrets.token_hex(6)])
        return self._epoch_from(epoch), int(now)

    def _start_for(self, topic: str, floor: tuple[str | None, int], heard: dict[str, Cursor]) -> Cursor:
        """Where a live-only subscription of ``topic`` that has received nothing resumes
        after a cut of the live feed.

        After the last event of the topic heard before the cut, if there was one (exact).
        Otherwise just before the first event at or after the known-good point ``floor``
        (events of the same millisecond as that point may come as extras: better than
        lost). If the epoch changed meanwhile (Redis flushed, or restarted empty): a cursor
        of the old epoch, which the read answers with a gap and the new epoch's events.
        """
        floor_epoch, floor_ms = floor
        epoch, ms, seq = self._run("position", topic, floor_ms)
        epoch = self._epoch_from(epoch)
        if floor_epoch is not None and floor_epoch != epoch:
            return Cursor(floor_epoch, (0, 0))
        last_heard = heard.get(topic)
        if last_heard is not None and last_heard.epoch == epoch:
            return last_heard
        return Cursor(epoch, (int(ms), int(seq)))

    # -- plumbing -----------------------------------------------------------------------

    def _run(self, script: str, topic: str, *args):
        """Run a topic script: KEYS epoch, stream, meta; ARGV a new epoch candidate, then ``args``."""
        return self._call(script, self._topic_keys(topic), [secrets.token_hex(6), *args])

    def _topic_keys(self, topic: str) -> list[str]:
        return [self._epoch_key, f"{self.prefix}:stream:{topic}", f"{self.prefix}:meta:{topic}"]

    def _call(self, script: str, keys: list[str], args: list):
        try:
            reply = self._scripts[script](keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            self._failed(exc)
        except ResponseError as exc:
            if not str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise
            self._failed(exc)
        self._commands_ok = True
        return reply

    def _failed(self, exc: Exception):
        if self._commands_ok:
            log.warning("redis: %s", exc)
        self._commands_ok = False
        raise BackendUnavailable("Redis cannot be reached") from exc

    def _epoch_from(self, raw: bytes) -> str:
        """Record the epoch a script saw; the one it replaces has ended."""
        epoch = raw.decode("ascii")
        if epoch != self.epoch:
            if self.epoch:
                self._dead_epochs.add(self.epoch)
            self.epoch = epoch
        return epoch

    @staticmethod
    def _events(topic: str, epoch: str, reply: list, start: int) -> list[Event]:
        events = []
        for i in range(start, len(reply), 2):
            ms, seq = _id_parts(reply[i])
            fields = json.loads(reply[i + 1])
            events.append(Event(Cursor(epoch, (ms, seq)), topic, fields["type"], fields["data"], fields["sender"],
                                ms / 1000, **extras_from_stored(fields)))
        return events

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"


def _encode_body(fields: dict) -> bytes:
    """The stored and published JSON: UTF-8, or ASCII escapes when the data holds a lone
    surrogate (a ``"\\ud800"`` escape in the published JSON has no UTF-8 form)."""
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _id_parts(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)
