-- create_session: insert only if absent.
-- KEYS: session hash, expiry index
-- ARGV: prefix, key, <record: ttl_ms, expires_at, created_at, payload, user, tenant>
-- Returns 1 if written, 0 if the key already exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
put(ARGV[2], 3)
local user = opt(ARGV[7])
if user then
  prune(user, ARGV[5])
end
return 1
