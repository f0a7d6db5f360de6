-- save_session: update only a row that exists and is live at 'now' (no resurrection).
-- KEYS: session hash, expiry index
-- ARGV: prefix, key, now, <record: ttl_ms, expires_at, created_at, payload, user, tenant>
-- Returns 1 if written, 0 if the row is missing or expired.
local f = live(ARGV[2], tonumber(ARGV[3]))
if not f then
  return 0
end
local user = opt(ARGV[8])
if f[2] and f[2] ~= user then
  redis.call('ZREM', ukey(f[2]), ARGV[2])
end
put(ARGV[2], 4)
return 1
