-- admit.lua: move waiting sessions of one event into checkout, atomically.
-- version: 4
--
-- One call does, for one event: read the capacity settings (per-event config hash
-- over the defaults), count the slots in use, look at the head of the priority lane
-- and then of the queue, drop every member that may not be admitted, and for each
-- admitted session: SADD to processing, HSET status/admitted_at/checkout_expires_at,
-- refresh the session TTL, record the slot deadline and an outbox entry.
-- Everything is read and checked first; writes happen only after all checks passed.
--
-- KEYS[1]  queue        ZSET  member = session id, score = join time (ms)
-- KEYS[2]  priority     ZSET  same shape, admitted before the queue
-- KEYS[3]  processing   SET   sessions holding a checkout slot
-- KEYS[4]  config       HASH  optional overrides: max_concurrent, batch_size, paused,
--                             new_users_per_minute
-- KEYS[5]  outbox       ZSET  member = JSON entry, score = when it is due (ms)
-- KEYS[6]  deadlines    ZSET  member = session id, score = checkout deadline (ms)
-- KEYS[7]  rate         HASH  minute = epoch minute, count = admitted in that minute,
--                             prev = admitted in the minute before
--
-- ARGV[1]  session key prefix; a session hash is ARGV[1] .. session id. Keys built
--          here are in the event's hash slot in the cluster layout.
-- ARGV[2]  event id (a session whose event_id field names another event is skipped)
-- ARGV[3]  default max_concurrent
-- ARGV[4]  default batch_size
-- ARGV[5]  now, ms since the epoch
-- ARGV[6]  admitted_at, RFC 3339 (the same instant as ARGV[5], whole seconds)
-- ARGV[7]  checkout deadline, ms since the epoch (= token exp * 1000)
-- ARGV[8]  checkout_expires_at, RFC 3339 (the same instant as ARGV[7])
-- ARGV[9]  session TTL, ms
-- ARGV[10] outbox lease, ms: new entries are due at now + lease, so the admitting
--          worker publishes them and other replicas only take over if it dies
-- ARGV[11] hard cap on admissions per call (bounds the work of one call)
-- ARGV[12] hard cap on members examined per call (admitted + skipped)
--
-- Reply: { {admitted, skipped, in_use, capacity, batch, paused, rate_left,
--           queue_length, outbox_depth, deadlines, next_deadline_ms},
--          {invalid config field names...},
--          {outbox entries of the admitted sessions, in admission order...} }
--   rate_left is -1 when no per-minute cap is configured; queue_length counts both
--   lanes after the call; outbox_depth is the outbox's size after the call;
--   deadlines is the size of the deadlines set and next_deadline_ms its earliest
--   score (-1 when empty).
--   An outbox entry is the JSON array [session_id, user_id, admitted_ms, deadline_ms].
-- Error replies: WRONGTYPE from SCARD/ZCARD when processing, queue, priority, outbox
--   or deadlines hold the wrong type (nothing is written then).

local queue, priority, processing, config, outbox, deadlines, rate =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local session_prefix, event_id = ARGV[1], ARGV[2]
local now_ms, admitted_at = ARGV[5], ARGV[6]
local deadline_ms, expires_at = ARGV[7], ARGV[8]
local ttl_ms, lease_ms = tonumber(ARGV[9]), tonumber(ARGV[10])
local max_admit, max_scan = tonumber(ARGV[11]), tonumber(ARGV[12])

-- Validate: settings from the config hash, falling back to the defaults.
local invalid = {}
local function setting(value, name, default, min)
  if value == false or value == nil or value == '' then return default end
  local n = tonumber(value)
  if n == nil or n < min or n ~= math.floor(n) then
    invalid[#invalid + 1] = name
    return default
  end
  return n
end

local cfg = redis.pcall('HMGET', config, 'max_concurrent', 'batch_size', 'paused',
  'new_users_per_minute')
if cfg.err then
  invalid[#invalid + 1] = 'config'
  cfg = {}
end
local capacity = setting(cfg[1], 'max_concurrent', tonumber(ARGV[3]), 0)
local batch = setting(cfg[2], 'batch_size', tonumber(ARGV[4]), 0)
local paused = setting(cfg[3], 'paused', 0, 0)
if paused > 1 then invalid[#invalid + 1] = 'paused'; paused = 0 end
local per_minute = setting(cfg[4], 'new_users_per_minute', -1, 0)

local in_use = redis.call('SCARD', processing)
redis.call('ZCARD', outbox)
redis.call('ZCARD', deadlines)

local minute = math.floor(tonumber(now_ms) / 60000)
local rate_count, rate_prev = 0, 0
local r = redis.pcall('HMGET', rate, 'minute', 'count', 'prev')
if not r.err then
  local m = tonumber(r[1])
  if m == minute then
    rate_count, rate_prev = tonumber(r[2]) or 0, tonumber(r[3]) or 0
  elseif m == minute - 1 then
    rate_prev = tonumber(r[2]) or 0
  end
end
local rate_left = -1
if per_minute >= 0 then rate_left = math.max(per_minute - rate_count, 0) end

-- After the call: both lanes' length, the outbox's size, how many deadlines there
-- are and the earliest one (-1 if none), so the worker knows when this event needs
-- the reaper or the outbox claim and can skip them for idle events.
local function lengths()
  local first = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
  return redis.call('ZCARD', queue) + redis.call('ZCARD', priority), redis.call('ZCARD', outbox),
    redis.call('ZCARD', deadlines), tonumber(first[2]) or -1
end

local want = math.min(capacity - in_use, batch, max_admit)
if rate_left >= 0 then want = math.min(want, rate_left) end
if paused == 1 or want <= 0 then
  local q, o, d, nd = lengths()
  return { {0, 0, in_use, capacity, batch, paused, rate_left, q, o, d, nd}, invalid, {} }
end

-- Session and user ids travel in JSON and JWTs, so they must be non-empty UTF-8;
-- anything else is dropped like any other session that may not be admitted.
local function utf8_ok(s)
  if s == '' then return false end
  if not s:find('[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local cc = s:byte(j)
      if cc < 0x80 or cc > 0xBF then return false end
    end
    if len == 3 then
      local c2 = s:byte(i + 1)
      if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F) then return false end
    elseif len == 4 then
      local c2 = s:byte(i + 1)
      if (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then return false end
    end
    i = i + len
  end
  return true
end

-- Validate: walk the lanes in order and decide for each member, without writing.
local admitted, users, dropped, seen = {}, {}, {}, {}
local examined = 0
local has_priority = redis.call('EXISTS', priority) == 1
local lanes = has_priority and {priority, queue} or {queue}
for _, lane in ipairs(lanes) do
  local offset = 0
  while #admitted < want and examined < max_scan do
    local n = math.min(want - #admitted, max_scan - examined)
    local members = redis.call('ZRANGE', lane, offset, offset + n - 1)
    if #members == 0 then break end
    offset = offset + #members
    for _, sid in ipairs(members) do
      examined = examined + 1
      if not seen[sid] then
        seen[sid] = true
        local h = redis.pcall('HMGET', session_prefix .. sid, 'status', 'user_id', 'event_id')
        if not h.err and h[1] == 'queued' and h[2] and utf8_ok(h[2]) and utf8_ok(sid)
            and (not h[3] or h[3] == '' or h[3] == event_id) then
          admitted[#admitted + 1] = sid
          users[#users + 1] = h[2]
        else
          dropped[#dropped + 1] = sid
        end
      end
    end
  end
end

-- Mutate.
local taken = {}
for _, sid in ipairs(dropped) do taken[#taken + 1] = sid end
for _, sid in ipairs(admitted) do taken[#taken + 1] = sid end
if #taken > 0 then
  redis.call('ZREM', queue, unpack(taken))
  if has_priority then redis.call('ZREM', priority, unpack(taken)) end
end

local entries = {}
if #admitted > 0 then
  redis.call('SADD', processing, unpack(admitted))
  local due = tonumber(now_ms) + lease_ms
  local outbox_args, deadline_args = {}, {}
  for i, sid in ipairs(admitted) do
    local key = session_prefix .. sid
    redis.call('HSET', key, 'status', 'admitted', 'admitted_at', admitted_at,
      'checkout_expires_at', expires_at)
    redis.call('PEXPIRE', key, ttl_ms)
    local entry = '[' .. cjson.encode(sid) .. ',' .. cjson.encode(users[i]) .. ','
      .. now_ms .. ',' .. deadline_ms .. ']'
    entries[i] = entry
    outbox_args[#outbox_args + 1] = due
    outbox_args[#outbox_args + 1] = entry
    deadline_args[#deadline_args + 1] = deadline_ms
    deadline_args[#deadline_args + 1] = sid
  end
  redis.call('ZADD', outbox, unpack(outbox_args))
  redis.call('ZADD', deadlines, unpack(deadline_args))
  redis.call('HSET', rate, 'minute', minute, 'count', rate_count + #admitted, 'prev', rate_prev)
  redis.call('PEXPIRE', rate, 120000)
end

local q, o, d, nd = lengths()
return { {#admitted, #dropped, in_use + #admitted, capacity, batch, paused,
  rate_left < 0 and -1 or (rate_left - #admitted), q, o, d, nd}, invalid, entries }
