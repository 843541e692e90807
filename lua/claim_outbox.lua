-- claim_outbox.lua: take the due entries of one event's outbox for publishing,
-- oldest admission first, renewing the admissions whose window ran out unpublished.
-- version: 5
--
-- An outbox entry is due when its score (ms) is at or before now (Redis TIME).
-- Claiming moves the score to now + lease, so no other replica takes the same entry
-- while this one publishes it; if this worker dies, the entry is due again when the
-- lease runs out.
--
-- Every claimed entry is checked first (see the decision table below): an entry
-- whose session no longer holds the slot, or whose hash shows another admission, is
-- dropped with its own untold mark (nobody to tell); one whose slot is held but whose
-- hash is gone or no longer `admitted` is dropped and its slot's deadline brought to
-- now, so the slot comes back.
--
-- Renewal: an entry whose checkout deadline is less than ARGV[4] ms away was never
-- told in time (a Kafka outage). The admission is renewed: admitted now, a new
-- deadline one window away, the hash's admitted_at/checkout_expires_at rewritten,
-- and the entry replaced by the renewed one (a new token and message id follow from
-- it). Its untold mark keeps the first admission time, so backpressure still sees
-- how long publishing has stalled. An entry with a claim deadline (claim window on,
-- the entry's fifth element) is renewed too when less than half its claim window is
-- left, so a user told late still has time to claim; the renewed entry keeps the
-- length of its claim window, and the hash's claim_expires_at is rewritten.
--
-- KEYS[1]  outbox      ZSET  member = JSON entry, score = when it is due (ms)
-- KEYS[2]  processing  SET   sessions holding a checkout slot
-- KEYS[3]  deadlines   ZSET  checkout deadlines and untold marks
--
-- ARGV[1]  the most entries to claim in this call (bounds the work)
-- ARGV[2]  lease, ms
-- ARGV[3]  session key prefix (session hash = ARGV[3] .. session id)
-- ARGV[4]  renew when the deadline is closer than this, ms
-- ARGV[5]  checkout window, ms
-- ARGV[6]  session TTL, ms
--
-- Reply: { {renewed, dropped}, {claimed entries (bulk strings), oldest admission
--          first; renewed ones as renewed} }
--   An entry that is not a well-formed JSON array within the bounds the worker
--   accepts is returned as it is (first), for the worker to move aside.
-- Error replies: WRONGTYPE when processing or deadlines hold the wrong type (nothing
--   written); an outbox of the wrong type is moved aside to <outbox>:corrupt and
--   nothing is claimed.

local outbox, processing, deadlines = KEYS[1], KEYS[2], KEYS[3]
local limit, lease, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local renew_within, window, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

-- An empty outbox (the common case on a full pass) costs one command.
local size = redis.pcall('ZCARD', outbox)
if size == 0 then return { {0, 0}, {} } end
if type(size) ~= 'number' then
  redis.call('RENAME', outbox, outbox .. ':corrupt')
  return { {0, 0}, {} }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Nothing due (entries leased or just admitted) costs three commands.
local due = redis.call('ZRANGEBYSCORE', outbox, '-inf', now, 'LIMIT', 0, limit)
if #due == 0 then return { {0, 0}, due } end
-- The other keys are checked before anything is written.
redis.call('SCARD', processing)
redis.call('ZCARD', deadlines)

-- Validate: read every entry, oldest admission first.
-- The same bounds the worker checks (src/outbox.rs): ids of 1 to 1024 bytes, whole
-- ms from 1970 to year 9999, deadline not before admission. Anything else is
-- returned as it is, for the worker to move aside.
local MAX_MS = 253402300799999
local function id_ok(v) return type(v) == 'string' and v ~= '' and #v <= 1024 end
local function ms_ok(v)
  return type(v) == 'number' and v >= 1 and v <= MAX_MS and v == math.floor(v)
end
local bad, good = {}, {}
for i, raw in ipairs(due) do
  local ok, e = pcall(cjson.decode, raw)
  if ok and type(e) == 'table' and (#e == 4 or (#e == 5 and ms_ok(e[5])
        and e[5] >= e[3] and e[5] <= e[4])) and id_ok(e[1]) and id_ok(e[2])
      and ms_ok(e[3]) and ms_ok(e[4]) and e[4] >= e[3] then
    good[#good + 1] = { raw = raw, sid = e[1], user = e[2], admitted = e[3],
      deadline = e[4], claim_by = e[5], i = i }
  else
    bad[#bad + 1] = raw
  end
end
table.sort(good, function(a, b)
  if a.admitted ~= b.admitted then return a.admitted < b.admitted end
  return a.i < b.i
end)

-- @include rfc3339

-- Decide for each entry before writing anything. Every claimed entry is checked
-- against Redis first, so nobody is told of a slot they no longer hold:
--   not in processing, or the hash shows another admission  -> drop (nobody to tell)
--   in processing, hash gone or no longer `admitted`         -> free (slot comes back)
--   deadline closer than ARGV[4], its untold mark in place  -> renew
--   otherwise                                               -> lease
-- (An entry whose slot already has a real deadline, written before untold marks
-- existed, is published as it is, never renewed: its slot ends at that deadline.)
-- "Its untold mark" is a deadlines score >= UNTOLD whose admission time is not after
-- this entry's: a renewed entry keeps its first admission's mark, a newer admission
-- of the same session has a later one (and is not this entry's to touch).
-- The common case (lease) reads one SMISMEMBER for all and one HMGET per entry;
-- the mark is looked up only for the entries that may touch it.
-- @include untold
local function mark_of(e)
  local score = tonumber(redis.call('ZSCORE', deadlines, e.sid))
  return score ~= nil and score >= UNTOLD and score - UNTOLD <= e.admitted
end
-- Entries of one admission share their second: format each second once.
local stamps = {}
local function stamp(ms)
  local sec = math.floor(ms / 1000)
  local text = stamps[sec]
  if not text then
    text = rfc3339(sec)
    stamps[sec] = text
  end
  return text
end
-- Lua's unpack refuses a few thousand values: calls that grow with the claim go in
-- chunks of at most 1000 values.
local CHUNK = 1000
local held = {}
for first = 1, #good, CHUNK do
  local sids = {}
  for j = first, math.min(first + CHUNK - 1, #good) do sids[#sids + 1] = good[j].sid end
  for _, v in ipairs(redis.call('SMISMEMBER', processing, unpack(sids))) do
    held[#held + 1] = v
  end
end
for j, e in ipairs(good) do
  e.ours = false
  if held[j] == 0 then
    e.action = 'drop'
    e.ours = mark_of(e)
  else
    local h = redis.pcall('HMGET', prefix .. e.sid, 'status', 'admitted_at')
    if h.err or h[1] ~= 'admitted' then
      e.action = 'free'
      e.ours = mark_of(e)
    elseif h[2] ~= stamp(e.admitted) then
      e.action = 'drop'
    elseif (e.deadline - now < renew_within
        or (e.claim_by and 2 * (e.claim_by - now) < e.claim_by - e.admitted))
        and mark_of(e) then
      e.action = 'renew'
      e.ours = true
    else
      e.action = 'lease'
    end
  end
end

-- Mutate. Unreadable entries are leased too, so they do not hold the head of the
-- outbox while the worker moves them aside.
local claimed, renewed, dropped = {}, 0, 0
local leased = {}
local until_ms = string.format('%d', now + lease)
for _, raw in ipairs(bad) do
  leased[#leased + 1] = until_ms
  leased[#leased + 1] = raw
  claimed[#claimed + 1] = raw
end
local deadline = math.ceil((now + window) / 1000) * 1000
for _, e in ipairs(good) do
  if e.action == 'lease' then
    leased[#leased + 1] = until_ms
    leased[#leased + 1] = e.raw
    claimed[#claimed + 1] = e.raw
  elseif e.action == 'renew' then
    local key = prefix .. e.sid
    local tail, claim_by = '', nil
    if e.claim_by then
      claim_by = math.min(math.ceil((now + e.claim_by - e.admitted) / 1000) * 1000, deadline)
      tail = ',' .. string.format('%d', claim_by)
    end
    local entry = '[' .. cjson.encode(e.sid) .. ',' .. cjson.encode(e.user) .. ','
      .. string.format('%d', now) .. ',' .. string.format('%d', deadline) .. tail .. ']'
    redis.call('ZREM', outbox, e.raw)
    redis.call('ZADD', outbox, now + lease, entry)
    redis.call('HSET', key, 'admitted_at', stamp(now),
      'checkout_expires_at', stamp(deadline), 'admitted_ms', string.format('%d', now))
    if claim_by then redis.call('HSET', key, 'claim_expires_at', stamp(claim_by)) end
    redis.call('PEXPIRE', key, ttl)
    claimed[#claimed + 1] = entry
    renewed = renewed + 1
  else
    redis.call('ZREM', outbox, e.raw)
    -- Only this entry's own untold mark is touched: gone with a slot that is gone,
    -- brought to now (reaped a second later) for a slot nobody can be told of.
    if e.ours then
      if e.action == 'free' then
        redis.call('ZADD', deadlines, 'XX', now, e.sid)
      else
        redis.call('ZREM', deadlines, e.sid)
      end
    end
    dropped = dropped + 1
  end
end
-- One ZADD for the leased entries (per chunk).
for first = 1, #leased, CHUNK do
  redis.call('ZADD', outbox, 'XX', unpack(leased, first, math.min(first + CHUNK - 1, #leased)))
end
return { {renewed, dropped}, claimed }
