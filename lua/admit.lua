-- admit.lua: move waiting sessions of one event into checkout, atomically.
-- version: 13
--
-- One call does, for one event: read the capacity settings (per-event config hash
-- over the defaults), count the slots in use, look at the head of the priority lane
-- and then of the queue, drop every member that may not be admitted, and for each
-- admitted session: SADD to processing, HSET status/admitted_at/checkout_expires_at,
-- refresh the session TTL, and record its outbox entry and its "untold" mark.
-- A waiter whose last_seen is older than the idle timeout when its turn comes has
-- left: dropped with status=left_queue, it takes no slot and the batch is filled
-- from the members behind. With a claim window, an admission must be claimed
-- (lua/claim.lua) by claim_expires_at or its slot comes back as a no-show.
-- Inventory: with `stock` set, no more are in checkout than units are left, and at
-- 0 the event is sold out: it admits nobody, and the sell-out is recorded in
-- KEYS[10] for the worker to announce (the outbox pattern for one message: leased,
-- taken over by any replica once the lease runs out, marked sent by
-- settle_sold_out.lua). Stock above 0 again ends the sell-out.
-- The valve: with `adaptive` on, the capacity is also capped by KEYS[9]'s `cap`
-- (written by valve.lua), never below `min_concurrent`.
-- Lanes: with both lanes waiting, the priority lane takes at most priority_share
-- percent of the admissions (counted across calls in KEYS[7]'s lane_p / lane_q).
-- Everything is read and checked first; writes happen only after all checks passed,
-- except the repair of a worker-owned key that holds the wrong type (moved aside).
--
-- Time is Redis's own (TIME), so every replica stamps and compares with one clock.
--
-- Untold: until Kafka acknowledged a session's QUEUE_READY, its score in the
-- deadlines set is UNTOLD + admitted_ms (UNTOLD = 2^50 ms, far past any real
-- deadline), so the reaper never takes the slot back; the settle script puts the
-- real deadline there once the message is acknowledged. The oldest untold mark is
-- how old the oldest unpublished admission is: past ARGV[10] the event stops
-- admitting (backpressure) until publishing catches up.
--
-- KEYS[1]  queue        ZSET  member = session id, score = join time (ms)
-- KEYS[2]  priority     ZSET  same shape, admitted before the queue
-- KEYS[3]  processing   SET   sessions holding a checkout slot
-- KEYS[4]  config       HASH  optional overrides: max_concurrent, batch_size,
--                             new_users_per_minute, rate_burst, claim_window_ms,
--                             waiter_idle_timeout_ms, stock, min_concurrent,
--                             priority_share (0-100) (plain decimal digits);
--                             adaptive: on/off words as paused (invalid: off);
--                             paused: 1/true/yes/on or 0/false/no/off (any case); any
--                             other value is reported and keeps the event paused
-- KEYS[5]  outbox       ZSET  member = JSON entry, score = when it is due (ms)
-- KEYS[6]  deadlines    ZSET  member = session id, score = checkout deadline (ms),
--                             or UNTOLD + admitted_ms while unpublished
-- KEYS[7]  rate         HASH  tat = the rate limiter's theoretical arrival time (ms);
--                             minute = epoch minute, count = admitted in that minute,
--                             prev = admitted in the minute before (the outflow shown);
--                             lane_p / lane_q = admitted from each lane while both
--                             waited (the priority share's count)
-- KEYS[8]  stats        HASH  counters this script adds to: admitted_total,
--                             left_queue_total, skipped_total (read back with the
--                             others kept there, see the reply)
-- KEYS[9]  valve        HASH  cap = the effective capacity valve.lua set (adaptive only)
-- KEYS[10] sold_out     HASH  state (pending/sent), at (ms), queue_length, due (ms):
--                             the sell-out to announce
--
-- ARGV[1]  session key prefix; a session hash is ARGV[1] .. session id. Keys built
--          here are in the event's hash slot in the cluster layout.
-- ARGV[2]  event id (a session whose event_id field names another event is skipped)
-- ARGV[3]  default max_concurrent
-- ARGV[4]  default batch_size
-- ARGV[5]  checkout window, ms
-- ARGV[6]  session TTL, ms
-- ARGV[7]  outbox lease, ms: new entries are due at now + lease, so the admitting
--          worker publishes them and other replicas only take over if it dies
-- ARGV[8]  hard cap on admissions per call (bounds the work of one call)
-- ARGV[9]  hard cap on members examined per call (admitted + skipped)
-- ARGV[10] max unpublished age, ms: hold admission while the oldest unpublished
--          admission is older
-- ARGV[11] 1 when the event is served; 0 when it is retired (drained: admits nobody,
--          the call only reports)
-- ARGV[12] the workers' process interval, ms (the default rate_burst is one
--          interval's worth of the rate)
-- ARGV[13] default claim window, ms (0 = off)
-- ARGV[14] default waiter idle timeout, ms (0 = off)
-- ARGV[15] 1 when the valve is on by default (the config's adaptive overrides)
-- ARGV[16] default min_concurrent, percent of the capacity
-- ARGV[17] 1: signed admissions (the tokens follow; a session is admitted only with
--          its token, written in the same HSET as status=admitted, so no session is
--          ever seen admitted without its token); absent or 0: unsigned (the token
--          is patched in later by set_tokens.lua; tests and the bench's ceiling)
-- ARGV[18] signed: the admission instant (ms) the tokens were signed for; used as
--          admitted_ms when within [now - 2000, now + 1000] of Redis's clock (and,
--          with a claim window, at least 500 ms of it left), else no token is used
--          (the reply says stale_stamp, with Redis's clock)
-- ARGV[19] signed: the claim window (ms) the tokens were signed with; a token is
--          used only if the event's effective claim window is the same
-- ARGV[20] signed: how many waiters to read ahead (the prospects of the reply)
-- ARGV[21+3k], ARGV[22+3k], ARGV[23+3k]  signed: a session id, the user id its
--          token was signed for, the token (k = 0, 1, ...)
--
-- Signed admissions admit in lane order and stop at the first admissible waiter
-- without a usable token (short = 1): it stays first in line, and the reply's
-- prospects name the waiters to sign for next. The prospects are read after the
-- admissions: the first ARGV[20] (at least the slots still wanted when short) of
-- each lane, with their user ids.
--
-- Rate: new_users_per_minute is enforced by GCRA (the generic cell rate algorithm):
-- one admission costs T = 60000 / rate ms of "theoretical arrival time" (tat). So
-- any window of W ms admits at most W / T + burst, whatever the interval, the batch
-- size, the number of replicas (they share tat) or where minute boundaries fall, and
-- a rate that does not divide into intervals (7 a minute at 1 s) still averages
-- exactly. See the GCRA block below.
--
-- Reply: { {admitted, skipped, in_use, capacity, batch, paused, rate_left,
--           queue_length, outbox_depth, deadlines, next_deadline_ms, held,
--           unpublished_age_ms, now_ms, rate_per_minute, outflow_per_minute, left,
--           bad_last_seen},
--          {invalid config field names...},
--          {outbox entries of the admitted sessions, in admission order...},
--          {keys repaired (moved aside to <key>:corrupt) by this call...},
--          {admitted_total, left_queue_total, skipped_total, no_show_total,
--           expired_total, completed_total, checkout_ms_total},
--          {stock (-1 none), adaptive (0/1), configured capacity (before the valve
--           and the stock), announce_at (ms, -1 none), announce_queue_length,
--           failed_total, claim_window (ms, effective), short (0/1), stale_stamp (1:
--           tokens came but their instant or claim window was not usable)},
--          {prospects: session id, user id, session id, user id, ... (signed only)} }
--   capacity (in the counts) is the effective one: the configured capacity capped
--   by the valve and by the stock.
--   announce_at: a sell-out this worker must now announce (it holds the lease).
--   paused is 1 when the config says so or its paused value is invalid (fail safe),
--   else 0; rate_left is -1 when no per-minute cap is configured; queue_length
--   counts both lanes after the call; outbox_depth is the outbox's size after the call;
--   deadlines is the size of the deadlines set and next_deadline_ms its earliest
--   real deadline (-1 when none); held is 0 (admitting), 1 (publishing stalled),
--   2 (not served), 3 (sold out: stock 0); unpublished_age_ms is the age of the oldest unpublished
--   admission (-1 when none); now_ms is Redis's clock; rate_per_minute is the
--   configured cap (-1 none); outflow_per_minute the admissions of the last 60 s
--   (this minute's count plus the part of the last minute's still inside the window);
--   left is how many waiters were dropped because they had left the queue (idle
--   past the timeout; not counted in skipped);
--   bad_last_seen how many examined waiters had a last_seen that is not plain
--   digits (read as absent: they are admitted). The totals are the stats hash's
--   counters after the call (0 where absent).
--   An outbox entry is the JSON array [session_id, user_id, admitted_ms, deadline_ms]
--   or, with a claim window, [session_id, user_id, admitted_ms, deadline_ms, claim_by_ms].
-- Error replies: WRONGTYPE from SCARD/ZCARD when processing, queue or priority hold
--   the wrong type (nothing is written then); "ERR waitroom: want 3 ARGV per signed
--   admission" when the signed ARGV do not come in threes (nothing is written).

-- @include untold
local queue, priority, processing, config, outbox, deadlines, rate =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local session_prefix, event_id = ARGV[1], ARGV[2]
local window_ms, ttl_ms, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_admit, max_scan = tonumber(ARGV[8]), tonumber(ARGV[9])
local max_unpublished, served = tonumber(ARGV[10]), ARGV[11] == '1'
local interval_ms = tonumber(ARGV[12])
local stats = KEYS[8]
local signed = ARGV[17] == '1'
if signed and (#ARGV < 20 or (#ARGV - 20) % 3 ~= 0) then
  return redis.error_reply('ERR waitroom: want 3 ARGV per signed admission')
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Validate: a number written by a person or the API is plain decimal digits within
-- bounds; anything else ('inf', '0x10', '1e3', ' 5') is reported and the default used.
local invalid = {}
local function setting(value, name, default, max)
  if value == false or value == nil or value == '' then return default end
  if #value > 12 or not value:match('^%d+$') or tonumber(value) > max then
    invalid[#invalid + 1] = name
    return default
  end
  return tonumber(value)
end

-- paused fails safe: an operator who wrote something meant to stop, so a value that
-- is neither on (1/true/yes/on) nor off (0/false/no/off), in any case, is reported
-- and pauses the event until fixed. Absent means not paused.
local function pause_flag(value)
  if value == false or value == nil then return 0 end
  local v = #value <= 5 and value:lower() or ''
  if v == '1' or v == 'true' or v == 'yes' or v == 'on' then return 1 end
  if v == '0' or v == 'false' or v == 'no' or v == 'off' then return 0 end
  invalid[#invalid + 1] = 'paused'
  return 1
end

local cfg = redis.pcall('HMGET', config, 'max_concurrent', 'batch_size', 'paused',
  'new_users_per_minute', 'rate_burst', 'claim_window_ms', 'waiter_idle_timeout_ms',
  'stock', 'adaptive', 'min_concurrent', 'priority_share')
if cfg.err then
  invalid[#invalid + 1] = 'config'
  cfg = {}
end
local capacity = setting(cfg[1], 'max_concurrent', tonumber(ARGV[3]), 100000000)
local batch = setting(cfg[2], 'batch_size', tonumber(ARGV[4]), 100000000)
local paused = pause_flag(cfg[3])
local per_minute = setting(cfg[4], 'new_users_per_minute', -1, 100000000)
local burst = setting(cfg[5], 'rate_burst', -1, 100000000)
if burst == 0 then invalid[#invalid + 1] = 'rate_burst'; burst = -1 end
-- At most a year: a bound that keeps every sum of times far inside a double's
-- exact integers.
local claim_window = setting(cfg[6], 'claim_window_ms', tonumber(ARGV[13]), 31536000000)
local idle_timeout = setting(cfg[7], 'waiter_idle_timeout_ms', tonumber(ARGV[14]), 31536000000)
local stock = setting(cfg[8], 'stock', -1, 100000000)
local share = setting(cfg[11], 'priority_share', 100, 100)
-- adaptive reads like paused, but an invalid value leaves the valve off (reported):
-- a valve switched on by mistake would only admit fewer.
local adaptive = 0
do
  local before = #invalid
  adaptive = pause_flag(cfg[9])
  if #invalid > before then invalid[#invalid] = 'adaptive'; adaptive = 0 end
end
if tonumber(ARGV[15]) == 1 and not cfg[9] then adaptive = 1 end
local max_capacity = capacity
if adaptive == 1 then
  local floor = setting(cfg[10], 'min_concurrent',
    math.max(1, math.floor(capacity * tonumber(ARGV[16]) / 100)), 100000000)
  floor = math.min(floor, capacity)
  local v = redis.pcall('HGET', KEYS[9], 'cap')
  if type(v) == 'string' and #v <= 12 and v:match('^%d+$') then
    capacity = math.max(math.min(tonumber(v), capacity), floor)
  end
end
-- Units left cap the number in checkout: a buyer buys at least one.
if stock >= 0 then capacity = math.min(capacity, stock) end

-- Signed: the admission instant is the one the tokens were signed for, if it is
-- close to Redis's clock and the tokens carry the event's claim window; else no
-- token is usable (the worker signs again from the reply).
local stamp_ms, tokens, lookahead, short, stale_stamp = now_ms, {}, 0, 0, 0
if signed then
  local at, cw = ARGV[18], ARGV[19]
  lookahead = math.min(tonumber(ARGV[20]) or 0, max_admit)
  -- With a claim window, the claim deadline must still be ahead (a short window
  -- and a stamp from 2 s ago would hand out a token already past its claim-by).
  local t = #at <= 15 and at:match('^%d+$') and tonumber(at)
  local in_time = t and t >= now_ms - 2000 and t <= now_ms + 1000
    and (claim_window == 0 or t + claim_window > now_ms + 500)
  if in_time and cw == string.format('%d', claim_window) then
    stamp_ms = t
    -- Each session id maps to the index of its user id in ARGV (the token follows).
    for i = 21, #ARGV, 3 do tokens[ARGV[i]] = i + 1 end
  elseif not in_time and #ARGV > 20 then
    stale_stamp = 1
  end
end

-- Worker-owned keys of the wrong type are moved aside (kept for a look) so they
-- never jam the event; the API's keys are only checked (an error reply, no write).
-- The wrong type shows in the reads the script needs anyway (their error reply), so
-- a healthy key costs no extra command.
local repaired = {}
local function owned(key, reply)
  if type(reply) == 'table' and reply.err then
    redis.call('RENAME', key, key .. ':corrupt')
    repaired[#repaired + 1] = key
    return nil
  end
  return reply
end
local outbox_len = owned(outbox, redis.pcall('ZCARD', outbox)) or 0
local deadlines_len = owned(deadlines, redis.pcall('ZCARD', deadlines)) or 0
local r = owned(rate, redis.pcall('HMGET', rate, 'minute', 'count', 'prev', 'tat', 'lane_p',
  'lane_q')) or {}
local totals = owned(stats, redis.pcall('HMGET', stats, 'admitted_total', 'left_queue_total',
  'skipped_total', 'no_show_total', 'expired_total', 'completed_total',
  'checkout_ms_total', 'failed_total')) or {}

local in_use = redis.call('SCARD', processing)
local queue_len = redis.call('ZCARD', queue)
local priority_len = redis.call('ZCARD', priority)

local minute = math.floor(now_ms / 60000)
local rate_count, rate_prev = 0, 0
local function count(v)
  if type(v) == 'string' and #v <= 12 and v:match('^%d+$') then return tonumber(v) end
  return 0
end
if r[1] == tostring(minute) then
  rate_count, rate_prev = count(r[2]), count(r[3])
elseif r[1] == tostring(minute - 1) then
  rate_prev = count(r[2])
end
local outflow = rate_count + math.floor(rate_prev * (60000 - now_ms % 60000) / 60000)
-- The stats counters as numbers (anything else reads as 0: the worker's figures
-- then restart from there).
local total = {}
for i = 1, 8 do
  local v = totals[i]
  total[i] = (type(v) == 'string' and #v <= 15 and v:match('^%d+$')) and tonumber(v) or 0
end

-- GCRA, as virtual scheduling: cell i is due at tat + i * T. A call admits the cells
-- due up to now + (burst - 1) * T + 0.45 T. A tick that comes late keeps up to
-- 0.45 T of debt (a schedule lagging more keeps exactly that much), and one lagging
-- by more than a whole cell more starts afresh at now (an idle event). The two
-- slacks add up to less than one cell, so any window of W ms holds at most
-- W / T + burst admissions, while ticks that come a little early or late keep their
-- cells and the outflow averages exactly the rate. tat is worker-written: anything
-- but a plain decimal (ms, maybe with a fraction) reads as an idle event.
-- The limiter's clock is the admission instant (signed: the one the tokens carry,
-- close to Redis's), so the admission times written and published obey the cap.
local rate_now = stamp_ms
local rate_left, cost, tat = -1, 0, rate_now
if per_minute == 0 then
  rate_left = 0
elseif per_minute > 0 then
  cost = 60000 / per_minute
  if burst < 0 then burst = math.max(1, math.ceil(per_minute * interval_ms / 60000)) end
  local lag = 0.45 * cost
  local early = (burst - 1) * cost + lag
  local stored = r[4]
  if type(stored) == 'string' and #stored <= 24 and stored:match('^%d+%.?%d*$')
      and tonumber(stored) >= rate_now - cost - lag then
    tat = math.max(tonumber(stored), rate_now - lag)
  end
  -- tat - rate_now first (exact for close numbers), and a whisker of slack, so that
  -- float rounding never starves a whole cell.
  rate_left = math.max(math.floor((early - (tat - rate_now)) / cost + 1e-6) + 1, 0)
end

-- The earliest real deadline (-1 when none), so the worker knows when this event
-- needs the reaper, and how old the oldest unpublished admission is (-1 when none).
-- Admitting adds only untold marks, so the earliest real deadline read here is
-- still the earliest after the call (at worst earlier: a stale deadline of a
-- session admitted now is overwritten by its mark).
local next_deadline, unpublished_age = -1, -1
if deadlines_len > 0 then
  local first = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
  local low, head = tonumber(first[2]), nil
  if low and low >= UNTOLD then
    head = low
  else
    next_deadline = low or -1
    local h = redis.call('ZRANGEBYSCORE', deadlines, UNTOLD, '+inf', 'LIMIT', 0, 1, 'WITHSCORES')
    head = tonumber(h[2])
  end
  if head then unpublished_age = math.max(now_ms - (head - UNTOLD), 0) end
end
local held = 0
if not served then held = 2
elseif unpublished_age > max_unpublished then held = 1
elseif stock == 0 then held = 3 end

-- The sell-out: recorded once (pending) when stock is 0, handed to this worker to
-- announce while it is not leased to another, forgotten when stock is back.
local announce_at, announce_len = -1, 0
if stock >= 0 then
  local so = owned(KEYS[10], redis.pcall('HMGET', KEYS[10], 'state', 'due', 'at',
    'queue_length')) or {}
  if stock == 0 then
    local due = tonumber(so[2])
    if not so[1] or (so[1] == 'pending' and not tonumber(so[3])) then
      announce_at, announce_len = now_ms, queue_len + priority_len
      redis.call('HSET', KEYS[10], 'state', 'pending', 'at', announce_at,
        'queue_length', announce_len, 'due', now_ms + lease_ms)
    elseif so[1] == 'pending' and (not due or due <= now_ms) then
      announce_at, announce_len = tonumber(so[3]), tonumber(so[4]) or 0
      redis.call('HSET', KEYS[10], 'due', now_ms + lease_ms)
    end
  elseif so[1] then
    redis.call('DEL', KEYS[10])
  end
end
local extra = function()
  return { stock, adaptive, max_capacity, announce_at, announce_len, total[8], claim_window,
    short, stale_stamp }
end

-- @include prospects

-- Signed: the first `n` waiters of each lane with their user ids, read after the
-- admissions, for the worker to sign for the next call (lua/include/prospects.lua).
local function prospects(n, p_len, q_len, lp, lq)
  if not signed or not served then return {} end
  return lane_prospects(session_prefix, priority, queue, n, p_len, q_len, share, lp, lq)
end

local want = math.min(capacity - in_use, batch, max_admit)
if rate_left >= 0 then want = math.min(want, rate_left) end
if paused == 1 or held ~= 0 or want <= 0 or queue_len + priority_len == 0 then
  return { {0, 0, in_use, capacity, batch, paused, rate_left, queue_len + priority_len,
    outbox_len, deadlines_len, next_deadline, held, unpublished_age, now_ms, per_minute,
    outflow, 0, 0}, invalid, {}, repaired, { unpack(total, 1, 7) }, extra(),
    prospects(lookahead, priority_len, queue_len, count(r[5]), count(r[6])) }
end

-- Validate: walk the lanes in order and decide for each member, without writing.
local admitted, users, dropped, seen = {}, {}, {}, {}
local left, stale_claims, bad_last_seen = {}, {}, 0
local examined = 0
local has_priority = priority_len > 0
-- Each lane read in pages, in order; a lane is done when a page comes back empty.
local function lane(key, len)
  return { key = key, offset = 0, buf = {}, pos = 1, done = len == 0 }
end
local function next_member(l)
  if l.pos > #l.buf then
    if l.done then return nil end
    local n = math.max(math.min(want - #admitted, max_scan - examined), 1)
    l.buf, l.pos = redis.call('ZRANGE', l.key, l.offset, l.offset + n - 1), 1
    l.offset = l.offset + #l.buf
    if #l.buf == 0 then l.done = true; return nil end
  end
  l.pos = l.pos + 1
  return l.buf[l.pos - 1]
end
local plane, qlane = lane(priority, priority_len), lane(queue, queue_len)
-- The share applies while both lanes wait; its counts start afresh otherwise.
local both = priority_len > 0 and queue_len > 0
local lane_p, lane_q = 0, 0
if both then lane_p, lane_q = count(r[5]), count(r[6]) end
while #admitted < want and examined < max_scan do
  -- Priority first, unless it has had its share of the admissions so far.
  local first, second = plane, qlane
  if both and share < 100 and (lane_p + 1) * 100 > share * (lane_p + lane_q + 1) then
    first, second = qlane, plane
  end
  local from, sid = first, next_member(first)
  if sid == nil then from, sid = second, next_member(second) end
  if sid == nil then break end
  do
      examined = examined + 1
      if not seen[sid] then
        seen[sid] = true
        local h = redis.pcall('HMGET', session_prefix .. sid, 'status', 'user_id', 'event_id',
          'last_seen', 'claimed_at', 'claim_expires_at')
        if not h.err and h[1] == 'queued' and h[2] and utf8_ok(h[2]) and utf8_ok(sid)
            and (not h[3] or h[3] == '' or h[3] == event_id) then
          local seen_ms = h[4]
          if seen_ms and not (#seen_ms <= 15 and seen_ms:match('^%d+$')) then
            bad_last_seen = bad_last_seen + 1
            seen_ms = nil
          end
          if idle_timeout > 0 and seen_ms and now_ms - tonumber(seen_ms) > idle_timeout then
            left[#left + 1] = sid
          elseif signed and (not tokens[sid] or ARGV[tokens[sid]] ~= h[2]) then
            -- No usable token: stop here; this waiter stays first in line.
            short = 1
            break
          else
            admitted[#admitted + 1] = sid
            users[#users + 1] = h[2]
            if from == plane then lane_p = lane_p + 1 else lane_q = lane_q + 1 end
            -- A re-queued session keeps the claim fields of its last admission:
            -- cleared, so this admission starts unclaimed.
            stale_claims[#admitted] = (h[5] or h[6]) and true or false
          end
        else
          dropped[#dropped + 1] = sid
        end
      end
  end
end

-- @include rfc3339

-- A JSON string as cjson writes it: ids of plain printable ASCII without a quote,
-- backslash or slash (nearly all) are quoted as they are, the rest go to cjson.
local function json_string(v)
  if v:find('[^%w%-_.:@]') then return cjson.encode(v) end
  return '"' .. v .. '"'
end

-- Calls whose argument count grows with the batch go in chunks: Lua's unpack
-- refuses a few thousand values. Returns the sum of the replies (members removed or
-- added), which keeps the lengths in the reply exact without reading them again.
local function chunked(cmd, key, args, step)
  local sum = 0
  for i = 1, #args, step do
    sum = sum + redis.call(cmd, key, unpack(args, i, math.min(i + step - 1, #args)))
  end
  return sum
end

-- Mutate.
local taken = {}
for _, sid in ipairs(dropped) do taken[#taken + 1] = sid end
for _, sid in ipairs(left) do taken[#taken + 1] = sid end
for _, sid in ipairs(admitted) do taken[#taken + 1] = sid end
local waiting = queue_len + priority_len
local p_left = priority_len
if #taken > 0 then
  waiting = waiting - chunked('ZREM', queue, taken, 500)
  if has_priority then
    local n = chunked('ZREM', priority, taken, 500)
    waiting, p_left = waiting - n, p_left - n
  end
end

if #left > 0 then
  local ended_at = rfc3339(math.floor(now_ms / 1000))
  for _, sid in ipairs(left) do
    redis.call('HSET', session_prefix .. sid, 'status', 'left_queue', 'ended_at', ended_at)
  end
  redis.call('HINCRBY', stats, 'left_queue_total', #left)
  total[2] = total[2] + #left
end
if #dropped > 0 then
  redis.call('HINCRBY', stats, 'skipped_total', #dropped)
  total[3] = total[3] + #dropped
end

local entries = {}
if #admitted > 0 then
  chunked('SADD', processing, admitted, 500)
  -- The deadline is a whole second (the token's exp) at least one window after the
  -- admission instant (signed: the one the tokens carry, at most 2 s before now).
  local deadline_ms = math.ceil((stamp_ms + window_ms) / 1000) * 1000
  local admitted_at = rfc3339(math.floor(stamp_ms / 1000))
  local expires_at = rfc3339(deadline_ms / 1000)
  -- The claim deadline is a whole second too (the token's cby), never past the
  -- checkout deadline.
  local claim_by, claim_at, claim_tail = 0, nil, ''
  if claim_window > 0 then
    claim_by = math.min(math.ceil((stamp_ms + claim_window) / 1000) * 1000, deadline_ms)
    claim_at = rfc3339(claim_by / 1000)
    claim_tail = ',' .. string.format('%d', claim_by)
  end
  local admitted_ms = string.format('%d', stamp_ms)
  -- Numbers as text once per call, not once per session.
  local due = string.format('%d', now_ms + lease_ms)
  local untold_score = string.format('%d', UNTOLD + stamp_ms)
  local times = ',' .. admitted_ms .. ',' .. string.format('%d', deadline_ms) .. claim_tail .. ']'
  local outbox_args, deadline_args = {}, {}
  -- One field list for every session; only the token changes from one to the next.
  local fields = { 'status', 'admitted', 'admitted_at', admitted_at,
    'checkout_expires_at', expires_at, 'admitted_ms', admitted_ms }
  if claim_at then
    fields[#fields + 1] = 'claim_expires_at'
    fields[#fields + 1] = claim_at
  end
  local token_at = #fields + 2
  if signed then
    fields[#fields + 1] = 'checkout_token'
    fields[#fields + 1] = ''
  end
  for i, sid in ipairs(admitted) do
    local key = session_prefix .. sid
    if stale_claims[i] then redis.call('HDEL', key, 'claimed_at', 'claim_expires_at') end
    if signed then fields[token_at] = ARGV[tokens[sid] + 1] end
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, ttl_ms)
    local entry = '[' .. json_string(sid) .. ',' .. json_string(users[i]) .. times
    entries[i] = entry
    outbox_args[#outbox_args + 1] = due
    outbox_args[#outbox_args + 1] = entry
    deadline_args[#deadline_args + 1] = untold_score
    deadline_args[#deadline_args + 1] = sid
  end
  outbox_len = outbox_len + chunked('ZADD', outbox, outbox_args, 500)
  deadlines_len = deadlines_len + chunked('ZADD', deadlines, deadline_args, 500)
  redis.call('HSET', rate, 'minute', minute, 'count', rate_count + #admitted, 'prev', rate_prev,
    'lane_p', lane_p, 'lane_q', lane_q)
  -- Fixed-point text, so the value always reads back as plain digits.
  if cost > 0 then
    redis.call('HSET', rate, 'tat', string.format('%.3f', tat + #admitted * cost))
  end
  -- Kept at least as long as the schedule reaches ahead, so a long burst's debt is
  -- not forgotten while the event is full.
  redis.call('PEXPIRE', rate, math.max(180000, math.ceil(tat + #admitted * cost - rate_now + cost)))
  outflow = outflow + #admitted
  if unpublished_age < 0 then unpublished_age = 0 end
  redis.call('HINCRBY', stats, 'admitted_total', #admitted)
  total[1] = total[1] + #admitted
end

return { {#admitted, #dropped, in_use + #admitted, capacity, batch, paused,
  rate_left < 0 and -1 or (rate_left - #admitted), waiting, outbox_len, deadlines_len,
  next_deadline, held, unpublished_age, now_ms, per_minute, outflow, #left, bad_last_seen},
  invalid, entries, repaired, { unpack(total, 1, 7) }, extra(),
  prospects(short == 1 and math.max(lookahead, want - #admitted) or lookahead, p_left,
    waiting - p_left, lane_p, lane_q) }
