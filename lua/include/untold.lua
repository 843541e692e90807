-- lua/include/untold.lua: shared by every script that reads untold marks (spliced in by name).
-- Until Kafka acknowledged a session's QUEUE_READY, its score in the deadlines set
-- is UNTOLD + admitted_ms: 2^50 ms, far past any real deadline, so the reaper never
-- takes the slot back (see admit.lua and settle.lua).
local UNTOLD = 1125899906842624
