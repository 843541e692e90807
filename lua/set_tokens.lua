-- set_tokens.lua: write signed checkout tokens into the admitted sessions' hashes.
-- version: 1
--
-- A token is written only into the admission it was signed for: the hash must exist
-- and its admitted_at must equal the one the token was signed with. A hash that has
-- expired or was deleted is not re-created (it would live without a TTL), and a
-- later admission of a re-queued session is not overwritten by an old token.
-- Writing the same token twice changes nothing, so a retry is harmless.
--
-- KEYS[i]      the session hash of the i-th token
--
-- ARGV[2i-1]   admitted_at (RFC 3339) the i-th token was signed for
-- ARGV[2i]     the i-th token
--
-- Reply: the number of hashes written.
-- Error replies: "ERR waitroom: want 2 ARGV per key" when the counts do not match;
--   a session key of the wrong type is skipped, not an error.

if #ARGV ~= 2 * #KEYS then
  return redis.error_reply('ERR waitroom: want 2 ARGV per key')
end

local written = 0
for i, key in ipairs(KEYS) do
  local current = redis.pcall('HGET', key, 'admitted_at')
  if type(current) == 'string' and current == ARGV[2 * i - 1] then
    redis.call('HSET', key, 'checkout_token', ARGV[2 * i])
    written = written + 1
  end
end
return written
