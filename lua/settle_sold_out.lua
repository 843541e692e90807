-- settle_sold_out.lua: record that Kafka acknowledged an event's EVENT_SOLD_OUT.
-- version: 1
--
-- The admit script records a sell-out as pending (with the instant `at` it was
-- seen) and leases it to the worker that announces it; once Kafka acknowledged the
-- message, this marks it sent, so no replica announces it again. Only the very
-- sell-out announced is marked: if stock came back meanwhile (the record was
-- deleted) or a new sell-out was recorded (another `at`), nothing changes.
--
-- KEYS[1]  sold_out  HASH  state (pending/sent), at (ms), queue_length, due (ms)
--
-- ARGV[1]  the announced sell-out's `at` (ms, as the admit script wrote it)
--
-- Reply: 1 marked sent, 0 not (another sell-out, none, or already sent).
-- Error replies: WRONGTYPE when KEYS[1] holds the wrong type (nothing written).

local h = redis.call('HMGET', KEYS[1], 'state', 'at')
if h[1] ~= 'pending' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'sent')
return 1
