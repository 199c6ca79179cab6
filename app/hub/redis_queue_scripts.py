"""The Lua scripts of the Redis queue store (:mod:`app.hub.redis_queues`), one per operation.

Each runs atomically in Redis, so a check and what depends on it (is this entry still this
worker's? is there room in the queue?) cannot be split by another worker's command. Keys are
those of :mod:`app.hub.redis_queue_keys`, fields those of :mod:`app.hub.redis_queues`. Every
script is given the keys it touches (KEYS), all in one slot on a cluster, except ``REAP`` and
``STATS``, which read the registry and name the keys themselves and run on one Redis only (a
cluster runs ``REAP_QUEUE`` and ``STATS_QUEUE`` once per queue instead). The batch script reuses the event
backend's own append (:mod:`app.hub.redis.scripts`), so a topic event in a COMMIT is stored exactly
as a single publish stores it.
"""

from __future__ import annotations

from .redis.scripts import APPEND as _APPEND
from .redis.scripts import PRELUDE as _PRELUDE
from .redis.scripts import TRIM_BYTES as _TRIM_BYTES

__all__ = ["ACK", "COMMIT", "PUT_BACK", "REAP", "REAP_QUEUE", "REGISTER", "STATS", "STATS_QUEUE"]

_COMMON = r"""
local function fields_of(stream, id)
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 0 then return nil end
  local f, flat = {}, e[1][2]
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

local function ensure_group(stream)
  redis.pcall('XGROUP', 'CREATE', stream, 'g', '0', 'MKSTREAM')
end

local function owner_of(stream, id)
  local p = redis.pcall('XPENDING', stream, 'g', id, id, 1)
  if type(p) ~= 'table' or p.err or #p == 0 then return nil end
  return p[1][2]
end

-- Put entry `id` back (q: the queue's stream, meta, dead-letter stream and meta):
-- acknowledged and deleted, and a copy appended with one more delivery counted, or moved to
-- the dead-letter queue after `max` deliveries (its registration is the caller's).
local function requeue(q, id, max)
  local f = fields_of(q[1], id)
  redis.call('XACK', q[1], 'g', id)
  redis.call('XDEL', q[1], id)
  if not f then return 'gone' end
  local n = tonumber(f['n'] or '0') + 1
  local m = f['m'] or id
  if n >= max then
    ensure_group(q[3])
    redis.call('XADD', q[3], '*', 'b', f['b'], 's', f['s'], 't', f['t'], 'n', '0', 'm', m)
    redis.call('HINCRBY', q[2], 'bytes', -tonumber(f['s']))
    redis.call('HINCRBY', q[4], 'bytes', tonumber(f['s']))
    return 'dead'
  end
  redis.call('XADD', q[1], '*', 'b', f['b'], 's', f['s'], 't', f['t'], 'n', string.format('%d', n), 'm', m)
  return 'back'
end

-- One queue's reaping: what the consumers named in `dead` held, then what was held past
-- the ack timeout, goes back (at most `batch` of each). Outcomes appended to `out`.
local function reap_queue(q, dead, timeout, max, batch, out, label)
  for _, name in ipairs(dead) do
    local held = redis.pcall('XPENDING', q[1], 'g', '-', '+', batch, name)
    if type(held) == 'table' and not held.err then
      for _, p in ipairs(held) do
        if label then out[#out + 1] = label end
        out[#out + 1] = requeue(q, p[1], max)
      end
      if #held < batch then redis.call('XGROUP', 'DELCONSUMER', q[1], 'g', name) end
    end
  end
  local late = redis.pcall('XPENDING', q[1], 'g', 'IDLE', timeout, '-', '+', batch)
  if type(late) == 'table' and not late.err then
    for _, p in ipairs(late) do
      if label then out[#out + 1] = label end
      out[#out + 1] = requeue(q, p[1], max)
    end
  end
end
"""

# KEYS: stream, meta. ARGV: entry id, owner. 1 when acknowledged, 0 when no longer the owner's.
ACK = (
    _COMMON
    + r"""
if owner_of(KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local f = fields_of(KEYS[1], ARGV[1])
redis.call('XACK', KEYS[1], 'g', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if f then redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(f['s'])) end
return 1
"""
)

# KEYS: stream, meta, dead-letter stream, dead-letter meta. ARGV: entry id, owner, max
# deliveries. 'back', 'dead', or 'not-yours'.
PUT_BACK = (
    _COMMON
    + r"""
if owner_of(KEYS[1], ARGV[1]) ~= ARGV[2] then return 'not-yours' end
return requeue(KEYS, ARGV[1], tonumber(ARGV[3]))
"""
)

# One Redis (keys named here, not in KEYS): ARGV prefix, ack timeout ms, max deliveries,
# batch. For every registered queue, what a dead worker (heartbeat key gone) held and what
# was held past the ack timeout goes back. Returns {queue, outcome, ...}.
REAP = (
    _COMMON
    + r"""
local prefix, timeout, max, batch = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', prefix .. ':queues')) do
  local q = {prefix .. ':q:' .. name, prefix .. ':qm:' .. name,
             prefix .. ':q:' .. name .. '.dlq', prefix .. ':qm:' .. name .. '.dlq'}
  local consumers = redis.pcall('XINFO', 'CONSUMERS', q[1], 'g')
  if type(consumers) == 'table' and not consumers.err then
    local dead = {}
    for _, c in ipairs(consumers) do
      local info = {}
      for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
      if redis.call('EXISTS', prefix .. ':qw:' .. info['name']) == 0 then dead[#dead + 1] = info['name'] end
    end
    reap_queue(q, dead, timeout, max, batch, out, name)
  end
end
return out
"""
)

# A cluster, one queue (one slot): KEYS stream, meta, dead-letter stream, dead-letter meta.
# ARGV: ack timeout ms, max deliveries, batch, then the consumers found dead (by the caller,
# whose heartbeat keys live in other slots). Returns {outcome, ...}.
REAP_QUEUE = (
    _COMMON
    + r"""
local out, dead = {}, {}
for i = 4, #ARGV do dead[#dead + 1] = ARGV[i] end
reap_queue(KEYS, dead, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), out, nil)
return out
"""
)

# KEYS[1]: the registry. ARGV: queue, max queues. 1 when it is (now) registered, 0 when the
# registry is full.
REGISTER = r"""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# One Redis: ARGV prefix. {queue, length, pending, ...}
STATS = r"""
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':queues')) do
  local stream = ARGV[1] .. ':q:' .. name
  local pending = redis.pcall('XPENDING', stream, 'g')
  local count = 0
  if type(pending) == 'table' and not pending.err then count = tonumber(pending[1]) end
  out[#out + 1] = name
  out[#out + 1] = redis.call('XLEN', stream)
  out[#out + 1] = count
end
return out
"""

# A cluster, one queue: KEYS[1] its stream. {length, pending}
STATS_QUEUE = r"""
local pending = redis.pcall('XPENDING', KEYS[1], 'g')
local count = 0
if type(pending) == 'table' and not pending.err then count = tonumber(pending[1]) end
return {redis.call('XLEN', KEYS[1]), count}
"""

# The event backend's append (app/hub/redis/scripts.py) as a function of its own KEYS and ARGV, so a
# batch appends each topic event exactly as a single publish does. Its prelude reads the
# global KEYS[1] and ARGV[1]: a batch passes the epoch key and an epoch candidate there too.
_APPEND_BODY = _APPEND[len(_PRELUDE + _TRIM_BYTES) :]
_APPEND_FN = "local function append_one(KEYS, ARGV)\n" + _APPEND_BODY + "\nend\n"

# KEYS[1]: the epoch key, then every key the batch touches (so a cluster client routes it to
# their one slot). ARGV[1]: an epoch candidate, ARGV[2]: the batch as JSON: each queue item
# names its stream and meta keys; ``registry`` (one Redis only) is the set of queues the
# ``max_queues`` check and registration use (a cluster registers them before, separately).
# Returns {'ok', epoch, id, ...} (one id per item), {'full', queue, bound, limit} or
# {'topics', ms until one may be forgotten}.
COMMIT = (
    _PRELUDE
    + _TRIM_BYTES
    + _COMMON
    + _APPEND_FN
    + r"""
local spec = cjson.decode(ARGV[2])
local queues_key = spec['registry']
-- 1. every bound, before anything is stored
local adds, new_queues, new_count = {}, {}, 0
for _, op in ipairs(spec['ops']) do
  if op['k'] == 'q' then
    local a = adds[op['name']]
    if not a then
      a = {0, 0, op['sk'], op['mk']}
      adds[op['name']] = a
      if queues_key and redis.call('SISMEMBER', queues_key, op['name']) == 0 and not new_queues[op['name']] then
        new_queues[op['name']] = true
        new_count = new_count + 1
      end
    end
    a[1] = a[1] + 1
    a[2] = a[2] + tonumber(op['s'])
  end
end
if new_count > 0 and redis.call('SCARD', queues_key) + new_count > tonumber(spec['max_queues']) then
  for name, _ in pairs(new_queues) do return {'full', name, 'queues', spec['max_queues']} end
end
for name, a in pairs(adds) do
  if redis.call('XLEN', a[3]) + a[1] > tonumber(spec['max_messages']) then
    return {'full', name, 'messages', spec['max_messages']}
  end
  local held = tonumber(redis.call('HGET', a[4], 'bytes') or '0')
  if held + a[2] > tonumber(spec['max_bytes']) then
    return {'full', name, 'bytes', spec['max_bytes']}
  end
end
local max_topics = tonumber(spec['max_topics'])
if max_topics > 0 then
  local topics_key, fresh, seen = spec['topics_key'], 0, {}
  for _, op in ipairs(spec['ops']) do
    if op['k'] == 't' and not seen[op['A'][5]] then
      seen[op['A'][5]] = true
      if not redis.call('ZSCORE', topics_key, op['A'][5]) then fresh = fresh + 1 end
    end
  end
  if fresh > 0 and redis.call('ZCARD', topics_key) + fresh > max_topics then
    local now = now_ms()
    local lifetime = tonumber(spec['lifetime'])
    redis.call('ZREMRANGEBYSCORE', topics_key, '-inf', string.format('(%d', math.floor(now - lifetime)))
    if redis.call('ZCARD', topics_key) + fresh > max_topics then
      local oldest = redis.call('ZRANGE', topics_key, 0, 0, 'WITHSCORES')
      return {'topics', string.format('%d', math.max(0, tonumber(oldest[2]) + lifetime - now))}
    end
  end
end
-- 2. store everything, in order
local epoch = get_epoch()
local out = {'ok', epoch}
local now = string.format('%d', math.floor(now_ms()))
for _, op in ipairs(spec['ops']) do
  if op['k'] == 'q' then
    ensure_group(op['sk'])
    out[#out + 1] = redis.call('XADD', op['sk'], '*', 'b', op['b'], 's', op['s'], 't', now, 'n', '0')
    redis.call('HINCRBY', op['mk'], 'bytes', tonumber(op['s']))
    if queues_key then redis.call('SADD', queues_key, op['name']) end
  else
    local reply = append_one(op['K'], op['A'])
    out[#out + 1] = reply[2]
  end
end
return out
"""
)
