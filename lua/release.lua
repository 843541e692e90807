-- release.lua: free the checkout slot of a session that finished checkout.
-- version: 4
--
-- Idempotent: releasing a session that does not hold a slot changes nothing, so a
-- replayed or duplicate completion message is harmless. The release that frees the
-- slot records its id (ARGV[6]) in the hash as released_by, so a retry of that very
-- release whose first reply was lost (a timeout while Redis hung, then applied)
-- is told apart from a duplicate: it replies 2, a duplicate 0.
--
-- KEYS[1]  processing  SET   sessions holding a checkout slot
-- KEYS[2]  deadlines   ZSET  checkout deadlines (ms) of admitted sessions
-- KEYS[3]  session     HASH  the session's hash
-- KEYS[4]  stats       HASH  counters of the event: completed_total + 1 and
--                            checkout_ms_total + (now - the hash's admitted_ms) when a
--                            slot is freed and the hash has admitted_ms (the wait
--                            estimate's checkout time), and failed_total + 1 for
--                            outcome failed (the valve's failure share)
-- KEYS[5]  config      HASH  the event's config: its `stock` (units left) goes down
--                            by ARGV[7] when a slot is freed with outcome completed,
--                            never below 0 (only when stock is set, as plain digits)
--
-- ARGV[1]  session id
-- ARGV[2]  event id the completion names (checked against the hash's event_id)
-- ARGV[3]  new status: completed, abandoned or failed
-- ARGV[4]  now, RFC 3339 (stamped as ended_at)
-- ARGV[5]  session TTL, ms (refreshed on the state change)
-- ARGV[6]  release id: the same for every attempt of one completion message,
--          different for another message (stored as released_by; empty: none)
-- ARGV[7]  quantity bought (positive integer; only outcome completed uses it)
--
-- Reply: 1 released; 2 not in processing, and the hash shows this very release
--        done (status ARGV[3], released_by ARGV[6]): an earlier attempt of it was
--        applied (nothing changed); 0 not in processing otherwise (nothing changed);
--        -1 the hash names another event (nothing changed).
-- Error replies: "ERR waitroom: bad status" for any other ARGV[3]; "ERR waitroom: bad
--   quantity" for an ARGV[7] that is not an integer from 1 to 1,000,000;
--   WRONGTYPE when processing or deadlines hold the wrong type.

local processing, deadlines, session, stats, config = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local quantity = tonumber(ARGV[7] or '1')
local sid, event_id, status, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local release_id = ARGV[6] or ''

if status ~= 'completed' and status ~= 'abandoned' and status ~= 'failed' then
  return redis.error_reply('ERR waitroom: bad status')
end
if not quantity or quantity < 1 or quantity ~= math.floor(quantity) or quantity > 1000000 then
  return redis.error_reply('ERR waitroom: bad quantity')
end

local owner = redis.pcall('HGET', session, 'event_id')
if type(owner) == 'string' and owner ~= '' and owner ~= event_id then
  return -1
end
if redis.call('SISMEMBER', processing, sid) == 0 then
  if release_id ~= '' and type(owner) ~= 'table' then
    local h = redis.call('HMGET', session, 'status', 'released_by')
    if h[1] == status and h[2] == release_id then return 2 end
  end
  return 0
end
redis.call('ZCARD', deadlines)

redis.call('SREM', processing, sid)
redis.call('ZREM', deadlines, sid)
local admitted_ms = nil
if redis.call('EXISTS', session) == 1 and type(owner) ~= 'table' then
  admitted_ms = redis.call('HGET', session, 'admitted_ms')
  if release_id ~= '' then
    redis.call('HSET', session, 'status', status, 'ended_at', now, 'released_by', release_id)
  else
    redis.call('HSET', session, 'status', status, 'ended_at', now)
  end
  redis.call('PEXPIRE', session, ttl)
end
-- Counted for the wait estimate; a stats key of the wrong type is the worker's to
-- repair (the admit script moves it aside): never a reason to keep a slot.
-- Only an admission that stamped admitted_ms (every one since script version 9 of
-- admit.lua) is counted, so the average stays an average of measured times.
if type(admitted_ms) == 'string' and #admitted_ms <= 15 and admitted_ms:match('^%d+$') then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if type(redis.pcall('HINCRBY', stats, 'completed_total', 1)) == 'number' then
    redis.call('HINCRBY', stats, 'checkout_ms_total', math.max(now_ms - tonumber(admitted_ms), 0))
    if status == 'failed' then redis.call('HINCRBY', stats, 'failed_total', 1) end
  end
end
-- The units bought leave the stock, once per freed slot (a duplicate completion
-- frees nothing, so takes nothing), never below 0. A stock that is not plain
-- digits is the operator's to fix; the admit script reports it.
if status == 'completed' then
  local stock = redis.pcall('HGET', config, 'stock')
  if type(stock) == 'string' and #stock <= 12 and stock:match('^%d+$') then
    redis.call('HSET', config, 'stock', math.max(tonumber(stock) - quantity, 0))
  end
end
return 1
