-- lua/include/prospects.lua: shared by admit.lua and peek.lua (spliced in by name).
-- The waiters to sign tokens for: who is first in line, in the order an admit call
-- takes them, so a token signed ahead is the one that call needs.

-- Session and user ids travel in JSON and JWTs, so they must be non-empty UTF-8 of at
-- most 1024 bytes (what an outbox entry may hold); anything else is dropped like any
-- other session that may not be admitted.
local function utf8_ok(s)
  if s == '' or #s > 1024 then return false end
  if not s:find('[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local cc = s:byte(j)
      if cc < 0x80 or cc > 0xBF then return false end
    end
    if len == 3 then
      local c2 = s:byte(i + 1)
      if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F) then return false end
    elseif len == 4 then
      local c2 = s:byte(i + 1)
      if (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then return false end
    end
    i = i + len
  end
  return true
end

-- The first `n` waiters of each lane (`priority`, `queue`: their keys; `p_len`,
-- `q_len`: their lengths, 0 skips a lane) with their user ids, as a flat list
-- {session id, user id, ...}. In the order an admit call takes them: with both lanes
-- waiting and a priority `share` below 100, the lanes interleave by the share rule
-- from the counts `lp`, `lq` (lane_p / lane_q of the rate hash). A session without a
-- user_id, or whose ids are not UTF-8 (see utf8_ok), is left out: no token for it.
local function lane_prospects(session_prefix, priority, queue, n, p_len, q_len, share, lp, lq)
  local out = {}
  if n <= 0 then return out end
  local lanes = {}
  for i, l in ipairs({ { priority, p_len }, { queue, q_len } }) do
    lanes[i] = {}
    if l[2] > 0 then
      for _, sid in ipairs(redis.call('ZRANGE', l[1], 0, n - 1)) do
        local u = redis.pcall('HGET', session_prefix .. sid, 'user_id')
        if type(u) == 'string' and utf8_ok(u) and utf8_ok(sid) then
          lanes[i][#lanes[i] + 1] = { sid, u }
        end
      end
    end
  end
  local p, q, i, j = lanes[1], lanes[2], 1, 1
  if #p == 0 or #q == 0 then lp, lq = 0, 0 end
  while i <= #p or j <= #q do
    local from_q = i > #p or (j <= #q and share < 100
      and (lp + 1) * 100 > share * (lp + lq + 1))
    local w
    if from_q then w, j, lq = q[j], j + 1, lq + 1 else w, i, lp = p[i], i + 1, lp + 1 end
    out[#out + 1] = w[1]
    out[#out + 1] = w[2]
  end
  return out
end
