"""The Lua scripts of the Redis backend: each operation on a topic is one atomic script.

Every script touches the keys of ONE topic (and its epoch key), which share a hash slot on a
cluster (:mod:`app.hub.redis.keys`), so a script never spans two slots. KEYS[1] is always the
epoch key, ARGV[1] a fresh random epoch used only when Redis has none. Numbers go through
string.format('%d'): Lua's own tostring would print ms as 1.7e+12.
"""

PRELUDE = r"""
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
TRIM_BYTES = r"""
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
# body, key lifetime ms, history bytes (0: none), max topics (0: none), and the publish
# command: PUBLISH, or SPUBLISH on a cluster (the channel shares the topic's slot, so only
# the shard that owns the topic forwards it).
# Returns {epoch, id}, or {epoch, '', ms until a topic may be forgotten} when refused.
APPEND_FUNCTION = (
    PRELUDE
    + TRIM_BYTES
    + r"""
local function append(stream, meta_key, topics, size, ttl, channel, topic, body, lifetime, max_bytes, max_topics,
                      publish)
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
  redis.call(publish, channel, topic .. '\n' .. epoch .. '-' .. id .. '\n' .. body)
  return {epoch, id}
end
"""
)

# KEYS: epoch, stream, meta, topics. ARGV: epoch candidate, history size, ttl ms, channel,
# topic, body, key lifetime ms, history bytes (0: none), max topics (0: none), publish command.
APPEND = (
    APPEND_FUNCTION
    + r"""
return append(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
              ARGV[10])
"""
)

# Retained events from a stream id on: the age bound is the caller's start id, the count
# bound (numbers above last_seq - size) is applied here, since MAXLEN ~ keeps a few more.
RETAINED = r"""
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
READ_AFTER = (
    PRELUDE
    + RETAINED
    + r"""
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
)

# KEYS: epoch, stream, meta. ARGV: epoch candidate, history size, ttl ms, limit.
# Returns {epoch, id, body, ...}, newest first.
READ_LATEST = (
    PRELUDE
    + RETAINED
    + r"""
local epoch = get_epoch()
local oldest = string.format('%d-0', math.max(0, math.ceil(now_ms() - tonumber(ARGV[3]))))
local limit = math.min(tonumber(ARGV[4]), tonumber(ARGV[2]))
-- The stream's newest entries are numbered last_seq, last_seq - 1, ... (it is trimmed
-- from the front only), so the newest `history size` of them are all within the bound.
return flatten({epoch}, redis.call('XREVRANGE', KEYS[2], '+', oldest, 'COUNT', limit))
"""
)

# KEYS: epoch, stream, meta. ARGV: epoch candidate, history size, ttl ms, count (0/1).
# Returns {epoch, last ms, last seq, retained count (if asked)}.
STAT = (
    PRELUDE
    + r"""
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
)

# Where a live-only subscription resumes after the listener was cut: the position of
# the newest event older than `floor` ms, i.e. just before anything it may have missed.
# KEYS: epoch, stream, meta. ARGV: epoch candidate, floor ms. Returns {epoch, ms, seq}.
POSITION = (
    PRELUDE
    + r"""
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
)

# KEYS: epoch. ARGV: epoch candidate. Returns {epoch, now ms}.
CLOCK = (
    PRELUDE
    + r"""
return {get_epoch(), math.floor(now_ms())}
"""
)

# KEYS: topics. ARGV: key lifetime ms. The topics whose keys still live.
TOPIC_COUNT = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
return redis.call('ZCOUNT', KEYS[1], string.format('%d', math.floor(now - tonumber(ARGV[1]))), '+inf')
"""

# On a cluster the topic limit cannot live in the append (the deployment's sorted set has a
# slot of its own): the backend counts a topic here before its first append, and again at
# most every half key lifetime while it publishes to it (app/hub/redis/backend.py).
# KEYS: topics. ARGV: topic, key lifetime ms, max topics.
# Returns '' when counted, else the ms until a topic may be forgotten.
REGISTER = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local topic, lifetime, max_topics = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], topic) and redis.call('ZCARD', KEYS[1]) >= max_topics then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', math.floor(now - lifetime)))
  if redis.call('ZCARD', KEYS[1]) >= max_topics then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return string.format('%d', math.max(0, tonumber(oldest[2]) + lifetime - now))
  end
end
redis.call('ZADD', KEYS[1], string.format('%d', math.floor(now)), topic)
redis.call('PEXPIRE', KEYS[1], lifetime)
return ''
"""

# KEYS: lock. ARGV: owner token, ttl ms. SET NX PX, or renew when we own it.
ACQUIRE = r"""
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
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Presence (app/hub/redis/presence.py). KEYS: epoch, stream, meta, topics, entries, members,
# holders, due. ARGV: epoch candidate, history size, ttl ms, channel, topic, key lifetime ms,
# history bytes, max topics, publish command (the append's), then this process's token, the entries' ttl ms,
# the number k of senders entering, k senders entering (or renewed), the senders leaving.
# First expires the topic's entries whose time is up (a process that died), except those
# renewed by this call. Returns {epoch, action, sender, ...}: the events appended.
PRESENCE = (
    APPEND_FUNCTION
    + r"""
local topic, worker = ARGV[5], ARGV[10]
local entry_ttl, entering = tonumber(ARGV[11]), tonumber(ARGV[12])
local now = now_ms()
local out = {get_epoch()}

local function announce(action, sender)
  local body = cjson.encode({type = 'presence', sender = sender, data = {action = action, sender = sender}})
  local reply = append(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], topic, body, ARGV[6], ARGV[7], ARGV[8], ARGV[9])
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
for i = 13, 12 + entering do
  renewed[worker .. ':' .. ARGV[i]] = true
end
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', string.format('%d', math.floor(now)))) do
  if not renewed[entry] then  -- an entry is <token>:<sender>; tokens are hex
    redis.call('ZREM', KEYS[5], entry)
    release(string.sub(entry, string.find(entry, ':', 1, true) + 1))
  end
end
local expires = string.format('%d', math.floor(now + entry_ttl))
for i = 13, 12 + entering do
  if redis.call('ZADD', KEYS[5], expires, worker .. ':' .. ARGV[i]) == 1 then
    hold(ARGV[i])
  end
end
for i = 13 + entering, #ARGV do
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
)

# KEYS: due. ARGV: limit. The topics with an entry whose time is up.
PRESENCE_DUE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', math.floor(now)), 'LIMIT', 0, ARGV[1])
"""

# Topics one sweep expires at most; the rest wait for the next one (a quarter ttl later).
SWEEP_TOPICS = 100

# Every script by the name the backend runs it under.
ALL = {
    "append": APPEND,
    "after": READ_AFTER,
    "latest": READ_LATEST,
    "stat": STAT,
    "position": POSITION,
    "clock": CLOCK,
    "acquire": ACQUIRE,
    "release": RELEASE,
    "topic_count": TOPIC_COUNT,
    "register": REGISTER,
    "presence": PRESENCE,
    "presence_due": PRESENCE_DUE,
}
