-- valve.lua: one step of the checkout-health valve of one event.
-- version: 1
--
-- With `adaptive` on, an event's effective capacity lives in KEYS[1] (`cap`),
-- between min_concurrent and max_concurrent; the admit script never fills more
-- slots than it. Each step looks at the completions since the last step (the
-- counters release.lua keeps in the stats hash) and applies the control law:
--   failed share above ARGV[4] per mille                 -> cap x ARGV[7] %  (cut)
--   mean checkout time above the baseline x ARGV[5] %     -> cap x ARGV[7] %  (cut)
--   otherwise (healthy)          -> cap + ARGV[8] % of max_concurrent (at least 1)
--   fewer than ARGV[6] completions since the last step   -> hold (nothing to judge)
-- always within [min_concurrent, max_concurrent]. The baseline is a moving average
-- (1/5 weight to the newest) of the mean checkout time of healthy steps only, so a
-- slow spell does not become the new normal. Lowering the cap evicts nobody: fewer
-- are admitted until enough have left.
--
-- Steps are gated by time (one per ARGV[3] ms, on Redis's clock), and the script is
-- atomic: any replica may call it every pass and the valve still steps once per
-- interval, with one state that all replicas read.
--
-- KEYS[1]  valve   HASH  cap, reason, at (ms of the last step), base_ms (baseline),
--                        c, f, ms (the counters at the last step)
-- KEYS[2]  stats   HASH  completed_total, failed_total, checkout_ms_total (read only)
-- KEYS[3]  config  HASH  max_concurrent, min_concurrent (read only)
--
-- ARGV[1]  default max_concurrent
-- ARGV[2]  default min_concurrent, percent of max_concurrent (at least 1 slot)
-- ARGV[3]  step interval, ms
-- ARGV[4]  failure threshold, per mille of the completions
-- ARGV[5]  slowness threshold, percent of the baseline
-- ARGV[6]  completions needed to judge a step
-- ARGV[7]  cut: the cap is multiplied by this percent
-- ARGV[8]  recovery: the cap grows by this percent of max_concurrent per step
--
-- Reply: {cap, changed (1 when this call changed the cap), reason, failed per mille
--         (-1 not judged), mean checkout ms (-1), baseline ms (-1)}
--   reason: start, hold (too few completions), failures, slow, recovering, healthy
-- Error replies: none of its own; a valve key of the wrong type is moved aside to
--   <key>:corrupt and the valve starts again fully open.

local valve, stats, config = KEYS[1], KEYS[2], KEYS[3]
local step_ms, fail_max, slow_pct = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local min_done, cut_pct, up_pct = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

-- Validate.
local function num(v, max)
  if type(v) == 'string' and #v <= 15 and v:match('^%d+$') and tonumber(v) <= max then
    return tonumber(v)
  end
  return nil
end
local cfg = redis.pcall('HMGET', config, 'max_concurrent', 'min_concurrent')
if cfg.err then cfg = {} end
local max = num(cfg[1], 100000000) or tonumber(ARGV[1])
local floor = num(cfg[2], 100000000)
  or math.max(1, math.floor(max * tonumber(ARGV[2]) / 100))
floor = math.min(floor, max)
local v = redis.pcall('HMGET', valve, 'cap', 'reason', 'at', 'base_ms', 'c', 'f', 'ms')
if v.err then
  redis.call('RENAME', valve, valve .. ':corrupt')
  v = {}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = num(v[1], 100000000) or max
cap = math.max(math.min(cap, max), floor)
local at = num(v[3], 1e15)
local base = num(v[4], 1e15)
if at and now - at < step_ms then
  return { cap, 0, v[2] or 'hold', -1, -1, base or -1 }
end
local s = redis.pcall('HMGET', stats, 'completed_total', 'failed_total', 'checkout_ms_total')
if s.err then s = {} end
local c, f, ms = num(s[1], 1e15) or 0, num(s[2], 1e15) or 0, num(s[3], 1e15) or 0
local pc, pf, pms = num(v[5], 1e15), num(v[6], 1e15), num(v[7], 1e15)

-- Decide.
local new, reason, fail, avg = cap, 'hold', -1, -1
if not at or not pc or not pf or not pms or c < pc or f < pf or ms < pms then
  reason = 'start'
elseif c - pc >= min_done then
  local done = c - pc
  fail = math.floor((f - pf) * 1000 / done)
  avg = math.floor((ms - pms) / done)
  if fail > fail_max then
    new, reason = math.max(floor, math.floor(cap * cut_pct / 100)), 'failures'
  elseif base and avg * 100 > base * slow_pct then
    new, reason = math.max(floor, math.floor(cap * cut_pct / 100)), 'slow'
  else
    new = math.min(max, cap + math.max(1, math.floor(max * up_pct / 100)))
    reason = new > cap and 'recovering' or 'healthy'
    base = base and math.floor(base * 0.8 + avg * 0.2) or avg
  end
end

-- Mutate.
redis.call('HSET', valve, 'cap', new, 'reason', reason, 'at', now, 'c', c, 'f', f, 'ms', ms)
if base then redis.call('HSET', valve, 'base_ms', base) end
return { new, new ~= cap and 1 or 0, reason, fail, avg, base or -1 }
