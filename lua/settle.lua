-- settle.lua: record what Kafka said of one event's publish attempts.
-- version: 2
--
-- An acknowledged entry leaves the outbox and, in the same step, its session's
-- untold mark in the deadlines set becomes the real checkout deadline. This happens
-- only if this very entry was still in the outbox, and only to this admission's own
-- mark (a score >= UNTOLD whose admission time is not after the entry's: a renewed
-- entry keeps its first admission's mark): a real deadline is never lowered, and a
-- newer admission of the same session (re-queued and admitted again) keeps its own
-- mark. So a late or duplicate acknowledgement can never shorten anyone's window.
-- A failed entry is due again at the given time (ZADD XX: an entry another replica
-- already acknowledged is not brought back).
--
-- KEYS[1]  outbox     ZSET  member = JSON entry, score = when it is due (ms)
-- KEYS[2]  deadlines  ZSET  member = session id, score = deadline or untold mark
--
-- ARGV[1]              n, the number of acknowledged entries
-- ARGV[2 .. 4n+1]      per acknowledged entry: entry, session id, deadline (ms),
--                      admitted (ms)
-- ARGV[4n+2 ..]        per failed entry: due (ms), entry
--
-- Reply: the number of acknowledged entries that were still in the outbox.
-- Error replies: "ERR waitroom: bad settle arguments" when the counts do not add up
--   (nothing written); WRONGTYPE when outbox or deadlines hold the wrong type
--   (nothing written).

local outbox, deadlines = KEYS[1], KEYS[2]
local n = tonumber(ARGV[1])
if not n or n < 0 or n ~= math.floor(n) or #ARGV < 4 * n + 1
    or (#ARGV - 4 * n - 1) % 2 ~= 0 then
  return redis.error_reply('ERR waitroom: bad settle arguments')
end
redis.call('ZCARD', outbox)
redis.call('ZCARD', deadlines)

local UNTOLD = 1125899906842624
local removed = 0
for i = 0, n - 1 do
  local base = 2 + 4 * i
  local sid, deadline, admitted = ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3])
  if redis.call('ZREM', outbox, ARGV[base]) == 1 then
    local score = tonumber(redis.call('ZSCORE', deadlines, sid))
    if score and admitted and score >= UNTOLD and score - UNTOLD <= admitted then
      redis.call('ZADD', deadlines, 'XX', deadline, sid)
    end
    removed = removed + 1
  end
end
for i = 4 * n + 2, #ARGV, 2 do
  redis.call('ZADD', outbox, 'XX', ARGV[i], ARGV[i + 1])
end
return removed
