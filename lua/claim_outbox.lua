-- claim_outbox.lua: take the due entries of one event's outbox for publishing.
-- version: 1
--
-- An outbox entry is due when its score (ms) is at or before now. Claiming moves the
-- score to now + lease, so no other replica takes the same entry while this one
-- publishes it; if this worker dies, the entry is due again when the lease runs out.
--
-- KEYS[1]  outbox   ZSET  member = JSON entry, score = when it is due (ms)
--
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  lease, ms
-- ARGV[3]  the most entries to claim in this call (bounds the work)
--
-- Reply: the claimed entries (bulk strings), oldest due first; empty when none is due.
-- Error replies: WRONGTYPE when KEYS[1] is not a sorted set.

local outbox = KEYS[1]
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])

local due = redis.call('ZRANGEBYSCORE', outbox, '-inf', now, 'LIMIT', 0, limit)
if #due == 0 then return due end

local args = {}
for _, entry in ipairs(due) do
  args[#args + 1] = now + lease
  args[#args + 1] = entry
end
redis.call('ZADD', outbox, 'XX', unpack(args))
return due
