-- set_tokens.lua: write signed checkout tokens into the admitted sessions' hashes.
-- version: 2
--
-- A token is written only into the admission it was signed for: the hash must exist,
-- say `status=admitted`, and its admitted_at must equal the one the token was signed
-- with. The worker publishes a QUEUE_READY only for the tokens written, so a session
-- the API abandoned meanwhile is never handed a token for a slot it no longer holds. A hash that has
-- expired or was deleted is not re-created (it would live without a TTL), and a
-- later admission of a re-queued session is not overwritten by an old token.
-- Writing the same token twice changes nothing, so a retry is harmless.
--
-- KEYS[i]      the session hash of the i-th token
--
-- ARGV[2i-1]   admitted_at (RFC 3339) the i-th token was signed for
-- ARGV[2i]     the i-th token
--
-- Reply: one integer per key, 1 written (or already holding this token), 0 not.
-- Error replies: "ERR waitroom: want 2 ARGV per key" when the counts do not match;
--   a session key of the wrong type is skipped, not an error.

if #ARGV ~= 2 * #KEYS then
  return redis.error_reply('ERR waitroom: want 2 ARGV per key')
end

local written = {}
for i, key in ipairs(KEYS) do
  local h = redis.pcall('HMGET', key, 'status', 'admitted_at')
  if not h.err and h[1] == 'admitted' and h[2] == ARGV[2 * i - 1] then
    redis.call('HSET', key, 'checkout_token', ARGV[2 * i])
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
