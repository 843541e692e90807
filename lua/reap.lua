-- reap.lua: take back the slots of sessions whose checkout window has passed.
-- version: 5
--
-- Completion is the normal release; this is the backstop for users who left.
-- Each call looks at no more than ARGV[3] deadlines and ARGV[5] processing members,
-- so it never holds Redis for long; the worker calls it every cycle, from any
-- replica: the script is atomic, so two replicas never reap the same session.
--
-- Time is Redis's own (TIME). A token is valid while its exp (whole seconds) is not
-- before the verifier's second, so a slot whose deadline is D ms (= exp * 1000) is
-- taken back only once D + 1000 <= now: never while its old token is still valid.
--
-- No-shows: with a claim window, an admission's deadline is its claim deadline
-- until the checkout service claims it (lua/claim.lua moves it to the checkout
-- deadline). A slot taken back while its hash has claim_expires_at and no
-- claimed_at was never claimed: status no_show, counted apart from the expired.
--
-- Untold sessions (score UNTOLD + admitted_ms, see admit.lua) are never reaped: their
-- QUEUE_READY has not been acknowledged yet. If the outbox is empty while such marks
-- remain, nothing can ever publish them (the outbox was deleted by hand): the marks
-- become real deadlines, one checkout window after their admission.
--
-- It also adopts sessions put in processing by something else without a deadline:
-- when processing holds more members than deadlines has, a bounded SSCAN step
-- (cursor kept in KEYS[3]) gives each such member a deadline one checkout window
-- after it was first seen, so no slot can leak.
--
-- KEYS[1]  deadlines   ZSET    member = session id, score = checkout deadline (ms)
-- KEYS[2]  processing  SET     sessions holding a checkout slot
-- KEYS[3]  cursor      STRING  SSCAN cursor of the adoption sweep (digits)
-- KEYS[4]  outbox      ZSET    unpublished admissions (only its size is read)
-- KEYS[5]  stats       HASH    counters: no_show_total and expired_total are added to
--
-- ARGV[1]  session key prefix (session hash = ARGV[1] .. session id)
-- ARGV[2]  checkout window, ms
-- ARGV[3]  the most expired deadlines handled in this call
-- ARGV[4]  now, RFC 3339 (stamped as ended_at)
-- ARGV[5]  SSCAN COUNT of the adoption sweep (0 = no sweep)
-- ARGV[6]  session TTL, ms
--
-- Reply: { expired, stale, adopted, {expired session ids...}, {keys repaired...},
--          orphans, no_shows }
--   expired: slots taken back (status set to expired, or no_show, where it was
--            admitted); no_shows: how many of them were no-shows
--   stale:   deadlines of sessions no longer in processing, dropped
--   adopted: processing members without a deadline that got one
--   keys repaired: worker-owned keys that held garbage (moved aside or reset)
--   orphans: untold marks with no outbox left that became real deadlines
-- Error replies: WRONGTYPE when processing holds the wrong type (nothing written).

-- @include untold
local deadlines, processing, cursor_key, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats = KEYS[5]
local prefix, window, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_text, sweep, ttl = ARGV[4], tonumber(ARGV[5]), ARGV[6]

-- Validate. Worker-owned keys holding garbage are repaired, never left to jam: the
-- wrong type shows in the count the script reads anyway (its error reply).
local in_use = redis.call('SCARD', processing)
local repaired = {}
local dl_len = redis.pcall('ZCARD', deadlines)
if type(dl_len) ~= 'number' then
  redis.call('RENAME', deadlines, deadlines .. ':corrupt')
  repaired[#repaired + 1] = deadlines
  dl_len = 0
end
-- Nothing to reap, convert or adopt: an idle event costs two commands.
if dl_len == 0 and (in_use == 0 or sweep == 0) then
  return { 0, 0, 0, {}, repaired, 0, 0 }
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The sweep's cursor is read only when a sweep runs (below).
local function sweep_cursor()
  local c = redis.pcall('GET', cursor_key)
  -- SSCAN takes a cursor of at most 2^64 - 1: compare as text, digits of one length.
  if type(c) == 'string' and c:match('^%d+$')
      and (#c < 20 or (#c == 20 and c <= '18446744073709551615')) then
    return c
  elseif c then
    redis.call('DEL', cursor_key)
    repaired[#repaired + 1] = cursor_key
  end
  return '0'
end
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now - 1000, 'LIMIT', 0, limit)
local expired, stale = {}, 0
for _, sid in ipairs(due) do
  if redis.call('SISMEMBER', processing, sid) == 1 then
    expired[#expired + 1] = sid
  else
    stale = stale + 1
  end
end
-- Orphaned marks are looked for only when the outbox is empty (an outbox of the
-- wrong type counts as not empty: it is the claim's to repair).
local orphaned = {}
if dl_len > #due and redis.pcall('ZCARD', outbox) == 0 then
  orphaned = redis.call('ZRANGEBYSCORE', deadlines, UNTOLD, '+inf', 'LIMIT', 0, limit,
    'WITHSCORES')
end

-- Mutate.
for _, sid in ipairs(due) do redis.call('ZREM', deadlines, sid) end
local no_shows = 0
for _, sid in ipairs(expired) do
  redis.call('SREM', processing, sid)
  local key = prefix .. sid
  local h = redis.pcall('HMGET', key, 'status', 'claim_expires_at', 'claimed_at')
  if not h.err and h[1] == 'admitted' then
    local status = 'expired'
    if h[2] and not h[3] then
      status = 'no_show'
      no_shows = no_shows + 1
    end
    redis.call('HSET', key, 'status', status, 'ended_at', now_text)
    redis.call('PEXPIRE', key, ttl)
  end
end
-- The stats hash is the worker's: one of the wrong type is moved aside, not a
-- reason to keep a slot.
local function count(field, n)
  if n > 0 and type(redis.pcall('HINCRBY', stats, field, n)) ~= 'number' then
    redis.call('RENAME', stats, stats .. ':corrupt')
    repaired[#repaired + 1] = stats
    redis.call('HINCRBY', stats, field, n)
  end
end
count('no_show_total', no_shows)
count('expired_total', #expired - no_shows)
for i = 1, #orphaned, 2 do
  local admitted = tonumber(orphaned[i + 1]) - UNTOLD
  redis.call('ZADD', deadlines, math.ceil((admitted + window) / 1000) * 1000, orphaned[i])
end

-- Sweep only when some member must lack a deadline (more slots than deadlines):
-- an O(1) check, so the common case costs nothing. A member hidden by stale
-- deadlines is found once those pass and are dropped above.
local adopted = 0
-- (Both counts as they are now: reaping removed #expired slots and #due deadlines.)
if sweep > 0 and in_use - #expired > dl_len - #due then
  local adopt_at = math.ceil((now + window) / 1000) * 1000
  local page = redis.call('SSCAN', processing, sweep_cursor(), 'COUNT', sweep)
  for _, sid in ipairs(page[2]) do
    if not redis.call('ZSCORE', deadlines, sid) then
      redis.call('ZADD', deadlines, adopt_at, sid)
      adopted = adopted + 1
    end
  end
  if page[1] == '0' then redis.call('DEL', cursor_key)
  else redis.call('SET', cursor_key, page[1], 'PX', 3600000) end
end

return { #expired, stale, adopted, expired, repaired, #orphaned / 2, no_shows }
