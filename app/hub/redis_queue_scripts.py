"""The Lua scripts of the Redis queue store (:mod:`app.hub.redis_queues`), one per operation.

Each runs atomically in Redis, so a check and what depends on it (is this entry still this
worker's? is there room in the queue?) cannot be split by another worker's command. Keys and
fields are those described in :mod:`app.hub.redis_queues`. The batch script reuses the event
backend's own append (:mod:`app.hub.redis.scripts`), so a topic event in a COMMIT is stored exactly
as a single publish stores it.
"""

from __future__ import annotations

from .redis.scripts import APPEND as _APPEND
from .redis.scripts import PRELUDE as _PRELUDE
from .redis.scripts import TRIM_BYTES as _TRIM_BYTES

__all__ = ["ACK", "COMMIT", "PUT_BACK", "REAP", "STATS"]

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

-- Put entry `id` of queue `name` back: acknowledged and deleted, and a copy appended with
-- one more delivery counted, or moved to the dead-letter queue after `max` deliveries.
local function requeue(prefix, name, id, max)
  local stream = prefix .. ':q:' .. name
  local f = fields_of(stream, id)
  redis.call('XACK', stream, 'g', id)
  redis.call('XDEL', stream, id)
  if not f then return 'gone' end
  local n = tonumber(f['n'] or '0') + 1
  local m = f['m'] or id
  if n >= max then
    local dead = name .. '.dlq'
    local dstream = prefix .. ':q:' .. dead
    ensure_group(dstream)
    redis.call('XADD', dstream, '*', 'b', f['b'], 's', f['s'], 't', f['t'], 'n', '0', 'm', m)
    redis.call('HINCRBY', prefix .. ':qm:' .. name, 'bytes', -tonumber(f['s']))
    redis.call('HINCRBY', prefix .. ':qm:' .. dead, 'bytes', tonumber(f['s']))
    redis.call('SADD', prefix .. ':queues', dead)
    return 'dead'
  end
  redis.call('XADD', stream, '*', 'b', f['b'], 's', f['s'], 't', f['t'], 'n', string.format('%d', n), 'm', m)
  return 'back'
end
"""

# ARGV: prefix, queue, entry id, owner. 1 when acknowledged, 0 when no longer the owner's.
ACK = (
    _COMMON
    + r"""
local stream = ARGV[1] .. ':q:' .. ARGV[2]
if owner_of(stream, ARGV[3]) ~= ARGV[4] then return 0 end
local f = fields_of(stream, ARGV[3])
redis.call('XACK', stream, 'g', ARGV[3])
redis.call('XDEL', stream, ARGV[3])
if f then redis.call('HINCRBY', ARGV[1] .. ':qm:' .. ARGV[2], 'bytes', -tonumber(f['s'])) end
return 1
"""
)

# ARGV: prefix, queue, entry id, owner, max deliveries. 'back', 'dead', or 'not-yours'.
PUT_BACK = (
    _COMMON
    + r"""
local stream = ARGV[1] .. ':q:' .. ARGV[2]
if owner_of(stream, ARGV[3]) ~= ARGV[4] then return 'not-yours' end
return requeue(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5]))
"""
)

# ARGV: prefix, ack timeout ms, max deliveries, batch. For every queue: what a dead worker
# held, and what was held past the ack timeout, goes back. Returns {queue, outcome, ...}.
REAP = (
    _COMMON
    + r"""
local prefix, timeout, max, batch = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', prefix .. ':queues')) do
  local stream = prefix .. ':q:' .. name
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, 'g')
  if type(consumers) == 'table' and not consumers.err then
    for _, c in ipairs(consumers) do
      local info = {}
      for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
      if redis.call('EXISTS', prefix .. ':qw:' .. info['name']) == 0 then
        local pending = tonumber(info['pending'])
        if pending > 0 then
          for _, p in ipairs(redis.call('XPENDING', stream, 'g', '-', '+', batch, info['name'])) do
            out[#out + 1] = name
            out[#out + 1] = requeue(prefix, name, p[1], max)
          end
        end
        if pending <= batch then redis.call('XGROUP', 'DELCONSUMER', stream, 'g', info['name']) end
      end
    end
    for _, p in ipairs(redis.call('XPENDING', stream, 'g', 'IDLE', timeout, '-', '+', batch)) do
      out[#out + 1] = name
      out[#out + 1] = requeue(prefix, name, p[1], max)
    end
  end
end
return out
"""
)

# ARGV: prefix. {queue, length, pending, ...}
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

# The event backend's append (app/hub/redis/scripts.py) as a function of its own KEYS and ARGV, so a
# batch appends each topic event exactly as a single publish does. Its prelude reads the
# global KEYS[1] and ARGV[1]: a batch passes the epoch key and an epoch candidate there too.
_APPEND_BODY = _APPEND[len(_PRELUDE + _TRIM_BYTES) :]
_APPEND_FN = "local function append_one(KEYS, ARGV)\n" + _APPEND_BODY + "\nend\n"

# KEYS[1]: the epoch key. ARGV[1]: an epoch candidate, ARGV[2]: the batch as JSON.
# Returns {'ok', epoch, id, ...} (one id per item), {'full', queue, bound, limit} or
# {'topics', ms until one may be forgotten}.
COMMIT = (
    _PRELUDE
    + _TRIM_BYTES
    + _COMMON
    + _APPEND_FN
    + r"""
local spec = cjson.decode(ARGV[2])
local prefix = spec['prefix']
local queues_key = prefix .. ':queues'
-- 1. every bound, before anything is stored
local adds, new_queues, new_count = {}, {}, 0
for _, op in ipairs(spec['ops']) do
  if op['k'] == 'q' then
    local a = adds[op['name']]
    if not a then
      a = {0, 0}
      adds[op['name']] = a
      if redis.call('SISMEMBER', queues_key, op['name']) == 0 and not new_queues[op['name']] then
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
  local stream = prefix .. ':q:' .. name
  if redis.call('XLEN', stream) + a[1] > tonumber(spec['max_messages']) then
    return {'full', name, 'messages', spec['max_messages']}
  end
  local held = tonumber(redis.call('HGET', prefix .. ':qm:' .. name, 'bytes') or '0')
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
    local stream = prefix .. ':q:' .. op['name']
    ensure_group(stream)
    out[#out + 1] = redis.call('XADD', stream, '*', 'b', op['b'], 's', op['s'], 't', now, 'n', '0')
    redis.call('HINCRBY', prefix .. ':qm:' .. op['name'], 'bytes', tonumber(op['s']))
    redis.call('SADD', queues_key, op['name'])
  else
    local reply = append_one(op['K'], op['A'])
    out[#out + 1] = reply[2]
  end
end
return out
"""
)
