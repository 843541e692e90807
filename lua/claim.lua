-- claim.lua: the checkout service claims an admitted session's slot when the user
-- arrives with the token.
-- version: 1
--
-- Called synchronously by the checkout service (EVALSHA from any language, or
-- `waitroom-worker claim --event E SESSION`), so it gets an answer it can act on.
-- Atomically: the session must hold a slot of this event and, when its admission
-- has a claim window (the hash's claim_expires_at), be inside it; then its deadline
-- in the deadlines set becomes the full checkout deadline (the hash's
-- checkout_expires_at, also the token's exp) and claimed_at is stamped.
--
-- The claim window ends with the second claim_expires_at names (the token's cby is
-- that second): a claim is in time while Redis's clock is not past it. The reaper
-- takes an unclaimed slot back once that second has passed (reap.lua: D + 1000 <=
-- now), so a claim and a reap never both win: both are atomic, and the two
-- conditions are exact complements. A late claim changes nothing and never takes a
-- slot back: capacity holds.
--
-- Claiming before Kafka acknowledged the QUEUE_READY (the user got the token
-- anyway) puts the real deadline in place of the untold mark; the acknowledgement
-- then leaves it alone (settle.lua swaps only an untold mark).
--
-- KEYS[1]  session     HASH  the session's hash
-- KEYS[2]  processing  SET   sessions holding a checkout slot of the event
-- KEYS[3]  deadlines   ZSET  member = session id, score = deadline (ms)
--
-- ARGV[1]  session id
-- ARGV[2]  event id (optional: when given, a hash naming another event is
--          not_admitted)
--
-- Reply (bulk string):
--   claimed          the slot is the session's until its checkout deadline
--   already_claimed  claimed before (nothing changed)
--   too_late         the claim window has passed (nothing changed; the slot comes
--                    back, or came back, as a no-show)
--   not_admitted     the session holds no slot of this event (never admitted,
--                    finished, expired, another event, or no hash)
-- Error replies: "ERR waitroom: want a session id" when ARGV[1] is missing or empty;
--   "ERR waitroom: unreadable checkout_expires_at" or "... claim_expires_at" when the
--   hash of a session holding a slot does not hold RFC 3339 seconds there (nothing
--   written); WRONGTYPE when processing or deadlines hold the wrong type.

local session, processing, deadlines = KEYS[1], KEYS[2], KEYS[3]
local sid, event_id = ARGV[1], ARGV[2]

-- Validate.
if not sid or sid == '' then return redis.error_reply('ERR waitroom: want a session id') end

-- Seconds since the epoch of the RFC 3339 UTC text the worker writes
-- (YYYY-MM-DDTHH:MM:SSZ), nil for anything else.
local function seconds(text)
  if type(text) ~= 'string' then return nil end
  local y, m, d, hh, mm, ss =
    text:match('^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$')
  if not y then return nil end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m < 1 or m > 12 or d < 1 or d > 31 then return nil end
  -- Days from the civil date (proleptic Gregorian), the inverse of rfc3339.lua.
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

local h = redis.pcall('HMGET', session, 'status', 'event_id', 'claimed_at',
  'claim_expires_at', 'checkout_expires_at')
local held = redis.call('SISMEMBER', processing, sid) == 1
redis.call('ZCARD', deadlines)
if h.err or (event_id and event_id ~= '' and h[2] and h[2] ~= '' and h[2] ~= event_id) then
  return 'not_admitted'
end
if h[1] == 'no_show' then return 'too_late' end
if h[1] ~= 'admitted' or not held then return 'not_admitted' end
if h[3] then return 'already_claimed' end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = seconds(h[5])
if not deadline then return redis.error_reply('ERR waitroom: unreadable checkout_expires_at') end
if h[4] then
  local by = seconds(h[4])
  if not by then return redis.error_reply('ERR waitroom: unreadable claim_expires_at') end
  if math.floor(now_ms / 1000) > by then return 'too_late' end
end

-- Mutate.
-- (This script includes nothing, so `redis-cli --eval lua/claim.lua` runs it as it
-- is: the formatter below is lua/include/rfc3339.lua's, checked equal by a test.)
-- RFC 3339 UTC text of a whole second since the epoch (days to civil date, proleptic
-- Gregorian), as the contract writes times in session hashes.
local function rfc3339(sec)
  local days, rem = math.floor(sec / 86400), sec % 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', y, m, d,
    math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60)
end
redis.call('ZADD', deadlines, deadline * 1000, sid)
redis.call('HSET', session, 'claimed_at', rfc3339(math.floor(now_ms / 1000)))
return 'claimed'
