-- cycle_session: atomically replace the live row 'old' by a new row 'new'.
-- KEYS: old session hash, new session hash, expiry index
-- ARGV: prefix, old key, new key, now,
--       <record: ttl_ms, expires_at, created_at, payload, user, tenant>
-- Returns 1 if rotated; 0 (nothing written) if 'old' is missing or expired
-- or 'new' already exists.
local f = live(ARGV[2], tonumber(ARGV[4]))
if not f then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
drop(ARGV[2], f[2])
put(ARGV[3], 5)
return 1
