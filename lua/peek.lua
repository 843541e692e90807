-- peek.lua: read who is first in one event's line, with their user ids, in the order
-- the next admit call takes them. Reads only.
-- version: 1
--
-- A signed admit call (admit.lua) admits a waiter only with a token signed for that
-- session, and the worker learns whom to sign for from the previous call's reply.
-- An event's first call (a new event, a replica that just gained it, or one whose
-- line was empty) has no reply to go by: it would stop at its first waiter and a
-- second full call would follow. This read, a fraction of an admit call, comes
-- first instead. It decides nothing: admit.lua still admits only where a token
-- matches, and stops at the first waiter it has none for.
--
-- KEYS[1] queue     ZSET  member = session id, score = join time (ms)
-- KEYS[2] priority  ZSET  same shape, admitted before the queue
-- KEYS[3] config    HASH  priority_share (0-100) and claim_window_ms, plain decimal
--                         digits; anything else reads as the default, as admit.lua
--                         reads it
-- KEYS[4] rate      HASH  lane_p / lane_q: the priority share's counts
--
-- ARGV[1] session key prefix; a session hash is ARGV[1] .. session id
-- ARGV[2] how many waiters of each lane to read (at most 1000)
-- ARGV[3] default claim window, ms (0 = off)
--
-- Reply: { claim_window_ms (effective, as admit.lua reads it),
--          {session id, user id, session id, user id, ...} }: the first ARGV[2] of
--   each lane, interleaved by the share rule; a session without a user_id, or whose
--   ids are not UTF-8, is left out.
-- Error replies: none. A lane or hash of the wrong type reads as empty (the admit
--   call reports it).

local queue, priority, config, rate = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local session_prefix = ARGV[1]
local n = math.min(tonumber(ARGV[2]) or 0, 1000)

-- @include prospects

local function digits(v, default, max)
  if type(v) ~= 'string' or #v > 12 or not v:match('^%d+$') or tonumber(v) > max then
    return default
  end
  return tonumber(v)
end
local function length(key)
  local len = redis.pcall('ZCARD', key)
  if type(len) ~= 'number' then return 0 end
  return len
end

local cfg = redis.pcall('HMGET', config, 'priority_share', 'claim_window_ms')
if cfg.err then cfg = {} end
local share = digits(cfg[1], 100, 100)
local claim_window = digits(cfg[2], tonumber(ARGV[3]) or 0, 31536000000)
local r = redis.pcall('HMGET', rate, 'lane_p', 'lane_q')
if r.err then r = {} end
local p_len, q_len = length(priority), length(queue)
return { claim_window, lane_prospects(session_prefix, priority, queue, n, p_len, q_len, share,
  digits(r[1], 0, 999999999999), digits(r[2], 0, 999999999999)) }
