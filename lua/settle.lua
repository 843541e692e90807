-- settle.lua: record what Kafka said of publish attempts, for one or more events.
-- version: 4
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
-- One call settles any number of events: the worker sends one call per delivery in
-- the default key layout, one per event in the cluster layout (an event's keys share
-- a hash slot, different events' keys do not).
--
-- Bounded and cheap: each chunk of up to 500 acknowledged entries costs four
-- commands (ZMSCORE of the entries and of their sessions' marks, one ZREM, one ZADD),
-- not three per entry. An entry or session named twice for one event counts once,
-- its first occurrence deciding, as if the entries were settled one by one.
--
-- KEYS[2i-1]  outbox of the i-th event     ZSET  member = JSON entry, score = due (ms)
-- KEYS[2i]    deadlines of the i-th event  ZSET  member = session id, score =
--                                                deadline or untold mark (ms)
--
-- ARGV, one section per event, in the order of KEYS:
--   a, r          how many acknowledged and how many failed entries follow
--   4a values     per acknowledged entry: entry, session id, deadline (ms), admitted (ms)
--   2r values     per failed entry: due (ms), entry
--
-- Reply: per event, the number of its acknowledged entries that were still in the
--   outbox.
-- Error replies: "ERR waitroom: bad settle arguments" when KEYS do not come in pairs
--   or the sections do not add up to ARGV (nothing written); WRONGTYPE when an
--   event's outbox or deadlines hold the wrong type (that event's first chunk fails
--   before it writes; events before it in the call are settled).

-- @include untold
-- Lua's unpack refuses a few thousand values: calls that grow go in chunks.
local CHUNK = 500

-- Validate: every section's counts, against the number of arguments.
local function count(v)
  local n = tonumber(v)
  if n and n >= 0 and n == math.floor(n) then return n end
  return nil
end
local sections, at = {}, 1
if #KEYS % 2 ~= 0 then return redis.error_reply('ERR waitroom: bad settle arguments') end
for i = 1, #KEYS / 2 do
  local a, r = count(ARGV[at]), count(ARGV[at + 1])
  if not a or not r or at + 1 + 4 * a + 2 * r > #ARGV then
    return redis.error_reply('ERR waitroom: bad settle arguments')
  end
  sections[i] = { acked = at + 2, n = a, retry = at + 2 + 4 * a, m = r }
  at = at + 2 + 4 * a + 2 * r
end
if at ~= #ARGV + 1 then return redis.error_reply('ERR waitroom: bad settle arguments') end

local replies = {}
for i, s in ipairs(sections) do
  local outbox, deadlines = KEYS[2 * i - 1], KEYS[2 * i]
  local removed, seen_entry, seen_sid = 0, {}, {}
  for first = 0, s.n - 1, CHUNK do
    local last = math.min(first + CHUNK, s.n) - 1
    local entries, sids = {}, {}
    for k = first, last do
      entries[#entries + 1] = ARGV[s.acked + 4 * k]
      sids[#sids + 1] = ARGV[s.acked + 4 * k + 1]
    end
    -- Read first: which entries are still in the outbox, and each session's score.
    -- A wrong-typed key fails here, before this chunk writes anything.
    local present = redis.call('ZMSCORE', outbox, unpack(entries))
    local scores = redis.call('ZMSCORE', deadlines, unpack(sids))
    local gone, swaps = {}, {}
    for j, entry in ipairs(entries) do
      if present[j] and not seen_entry[entry] then
        seen_entry[entry] = true
        gone[#gone + 1] = entry
        local base = s.acked + 4 * (first + j - 1)
        local sid, admitted, score = sids[j], tonumber(ARGV[base + 3]), tonumber(scores[j])
        if not seen_sid[sid] and score and admitted and score >= UNTOLD
            and score - UNTOLD <= admitted then
          seen_sid[sid] = true
          swaps[#swaps + 1] = ARGV[base + 2]
          swaps[#swaps + 1] = sid
        end
      end
    end
    -- Then write.
    if #gone > 0 then redis.call('ZREM', outbox, unpack(gone)) end
    if #swaps > 0 then redis.call('ZADD', deadlines, 'XX', unpack(swaps)) end
    removed = removed + #gone
  end
  local again = {}
  for k = s.retry, s.retry + 2 * s.m - 1 do
    again[#again + 1] = ARGV[k]
    if #again >= 2 * CHUNK then
      redis.call('ZADD', outbox, 'XX', unpack(again))
      again = {}
    end
  end
  if #again > 0 then redis.call('ZADD', outbox, 'XX', unpack(again)) end
  replies[i] = removed
end
return replies
