-- list_user_sessions: the user's rows live at 'now'.
-- KEYS: user index
-- ARGV: prefix, user, tenant ('' = every tenant), now
-- Returns {key, payload, expires_at, created_at, tenant ('' or '=' .. t)} per
-- row, unordered. Stale index entries are pruned on the way.
local user, tenant, now = ARGV[2], opt(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', skey(m), 'u', 't', 'e', 'c', 'p')
  if f[1] ~= user then
    redis.call('ZREM', KEYS[1], m)
  elseif tonumber(f[3]) > now and (not tenant or f[2] == tenant) then
    local t = ''
    if f[2] then
      t = '=' .. f[2]
    end
    out[#out + 1] = { m, f[5], f[3], f[4], t }
  end
end
return out
