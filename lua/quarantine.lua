-- quarantine.lua: move unreadable outbox entries aside, atomically.
-- version: 2
--
-- An entry the worker cannot read (not a JSON array of the right shape, or values
-- out of range) would be claimed again and again and never published. It is moved
-- to the event's `outbox:invalid` set for an operator, and if its session id can
-- still be read and the session's deadlines score is an untold mark (not a real
-- deadline: that session was told; and, when the entry's admission time can be read,
-- not a newer admission's mark), that mark becomes a deadline of now, so the slot
-- comes back instead of being held for ever: nobody can be told from a corrupt entry. An `outbox:invalid` key of the wrong type is moved
-- aside to `<key>:corrupt` first (and named in the reply), so a garbage key never
-- keeps entries in the way.
--
-- KEYS[1]  outbox     ZSET  member = JSON entry, score = when it is due (ms)
-- KEYS[2]  invalid    ZSET  entries moved aside, score = when (ms)
-- KEYS[3]  deadlines  ZSET  checkout deadlines and untold marks
--
-- ARGV[1..n]  the unreadable entries, exactly as stored
--
-- Reply: { moved, {keys repaired...} }
--   moved: entries that were still in the outbox and are now in KEYS[2].
-- Error replies: WRONGTYPE when the outbox or deadlines hold the wrong type
--   (nothing written).

local outbox, invalid, deadlines = KEYS[1], KEYS[2], KEYS[3]
redis.call('ZCARD', outbox)
redis.call('ZCARD', deadlines)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Validate: which entries are still there, and whose they are.
-- @include untold
local present, sids = {}, {}
for _, raw in ipairs(ARGV) do
  if redis.call('ZSCORE', outbox, raw) then
    present[#present + 1] = raw
    local ok, e = pcall(cjson.decode, raw)
    if ok and type(e) == 'table' and type(e[1]) == 'string' and e[1] ~= '' then
      local score = tonumber(redis.call('ZSCORE', deadlines, e[1]))
      local admitted = type(e[3]) == 'number' and e[3] or math.huge
      if score and score >= UNTOLD and score - UNTOLD <= admitted then
        sids[#sids + 1] = e[1]
      end
    end
  end
end

-- Mutate.
local repaired = {}
local kind = redis.call('TYPE', invalid).ok
if kind ~= 'zset' and kind ~= 'none' then
  redis.call('RENAME', invalid, invalid .. ':corrupt')
  repaired[#repaired + 1] = invalid
end
for _, raw in ipairs(present) do
  redis.call('ZADD', invalid, now, raw)
  redis.call('ZREM', outbox, raw)
end
for _, sid in ipairs(sids) do
  redis.call('ZADD', deadlines, 'XX', now, sid)
end
return { #present, repaired }
