-- delete_user_sessions: atomically delete every session of a user (one
-- tenant, or all tenants), except one key.
-- KEYS: user index, expiry index
-- ARGV: prefix, user, tenant ('' = every tenant), except key ('' = none)
-- Returns the number of rows deleted. Session hashes are found through the
-- index inside the script, so a concurrent save or cycle is either before
-- (and deleted here) or after (and finds no row).
local user, tenant, except = ARGV[2], opt(ARGV[3]), opt(ARGV[4])
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if m ~= except then
    local f = redis.call('HMGET', skey(m), 'u', 't')
    if f[1] ~= user then
      redis.call('ZREM', KEYS[1], m)
    elseif not tenant or f[2] == tenant then
      drop(m, user)
      n = n + 1
    end
  end
end
return n
