-- settle.lua: record what Kafka said of one event's publish attempts.
-- version: 1
--
-- An acknowledged entry leaves the outbox and, in the same step, its session's
-- untold mark in the deadlines set becomes the real checkout deadline (ZADD XX LT:
-- only a mark or a later deadline is lowered; a slot already released stays gone).
-- This happens only if this very entry was still in the outbox: an acknowledgement
-- of an entry another replica already settled or renewed changes nothing else, so a
-- late duplicate can never shorten a renewed admission.
-- A failed entry is due again at the given time (ZADD XX: an entry another replica
-- already acknowledged is not brought back).
--
-- KEYS[1]  outbox     ZSET  member = JSON entry, score = when it is due (ms)
-- KEYS[2]  deadlines  ZSET  member = session id, score = deadline or untold mark
--
-- ARGV[1]              n, the number of acknowledged entries
-- ARGV[2 .. 3n+1]      per acknowledged entry: entry, session id, deadline (ms)
-- ARGV[3n+2 ..]        per failed entry: due (ms), entry
--
-- Reply: the number of acknowledged entries that were still in the outbox.
-- Error replies: "ERR waitroom: bad settle arguments" when the counts do not add up
--   (nothing written); WRONGTYPE when outbox or deadlines hold the wrong type
--   (nothing written).

local outbox, deadlines = KEYS[1], KEYS[2]
local n = tonumber(ARGV[1])
if not n or n < 0 or n ~= math.floor(n) or #ARGV < 3 * n + 1
    or (#ARGV - 3 * n - 1) % 2 ~= 0 then
  return redis.error_reply('ERR waitroom: bad settle arguments')
end
redis.call('ZCARD', outbox)
redis.call('ZCARD', deadlines)

local removed = 0
for i = 0, n - 1 do
  local base = 2 + 3 * i
  if redis.call('ZREM', outbox, ARGV[base]) == 1 then
    redis.call('ZADD', deadlines, 'XX', 'LT', ARGV[base + 2], ARGV[base + 1])
    removed = removed + 1
  end
end
for i = 3 * n + 2, #ARGV, 2 do
  redis.call('ZADD', outbox, 'XX', ARGV[i], ARGV[i + 1])
end
return removed
