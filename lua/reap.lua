-- reap.lua: take back the slots of sessions whose checkout window has passed.
-- version: 2
--
-- Completion is the normal release; this is the backstop for users who left.
-- Each call looks at no more than ARGV[3] deadlines and ARGV[6] processing members,
-- so it never holds Redis for long; the worker calls it every cycle, from any
-- replica: the script is atomic, so two replicas never reap the same session.
--
-- It also adopts sessions put in processing by something else without a deadline:
-- when processing holds more members than deadlines has, a bounded SSCAN step
-- (cursor kept in KEYS[3]) gives each such member a deadline one checkout window
-- after it was first seen, so no slot can leak.
--
-- KEYS[1]  deadlines   ZSET  member = session id, score = checkout deadline (ms)
-- KEYS[2]  processing  SET   sessions holding a checkout slot
-- KEYS[3]  cursor      STRING  SSCAN cursor of the adoption sweep
--
-- ARGV[1]  session key prefix (session hash = ARGV[1] .. session id)
-- ARGV[2]  now, ms since the epoch
-- ARGV[3]  the most expired deadlines handled in this call
-- ARGV[4]  now, RFC 3339 (stamped as ended_at)
-- ARGV[5]  session TTL, ms
-- ARGV[6]  SSCAN COUNT of the adoption sweep (0 = no sweep)
-- ARGV[7]  deadline given to adopted members, ms since the epoch
--
-- Reply: { expired, stale, adopted, {expired session ids...} }
--   expired: slots taken back (status set to expired where it was admitted)
--   stale:   deadlines of sessions no longer in processing, dropped
--   adopted: processing members without a deadline that got one
-- Error replies: WRONGTYPE when deadlines or processing hold the wrong type.

local deadlines, processing, cursor_key = KEYS[1], KEYS[2], KEYS[3]
local prefix, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_text, ttl, sweep, adopt_at = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]

redis.call('SCARD', processing)
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)

local expired, stale = {}, 0
for _, sid in ipairs(due) do
  if redis.call('SISMEMBER', processing, sid) == 1 then
    expired[#expired + 1] = sid
  else
    stale = stale + 1
  end
end

if #due > 0 then redis.call('ZREM', deadlines, unpack(due)) end
if #expired > 0 then redis.call('SREM', processing, unpack(expired)) end
for _, sid in ipairs(expired) do
  local key = prefix .. sid
  local status = redis.pcall('HGET', key, 'status')
  if status == 'admitted' then
    redis.call('HSET', key, 'status', 'expired', 'ended_at', now_text)
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Sweep only when some member must lack a deadline (more slots than deadlines):
-- an O(1) check, so the common case costs nothing. A member hidden by stale
-- deadlines is found once those pass and are dropped above.
local adopted = 0
if sweep > 0 and redis.call('SCARD', processing) > redis.call('ZCARD', deadlines) then
  local cursor = redis.call('GET', cursor_key) or '0'
  local page = redis.call('SSCAN', processing, cursor, 'COUNT', sweep)
  for _, sid in ipairs(page[2]) do
    if not redis.call('ZSCORE', deadlines, sid) then
      redis.call('ZADD', deadlines, adopt_at, sid)
      adopted = adopted + 1
    end
  end
  if page[1] == '0' then redis.call('DEL', cursor_key)
  else redis.call('SET', cursor_key, page[1], 'PX', 3600000) end
end

return { #expired, stale, adopted, expired }
