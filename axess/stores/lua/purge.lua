-- purge_expired_sessions, one batch.
-- KEYS: expiry index
-- ARGV: prefix, now, batch size
-- Returns {removed, examined}: 'removed' counts expiry-index entries of
-- sessions dead at 'now' that were removed (their hash deleted here, or
-- already expired natively by Valkey). Call again while examined == batch.
local now = tonumber(ARGV[2])
local batch = redis.call('ZRANGE', XKEY, '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, m in ipairs(batch) do
  local f = redis.call('HMGET', skey(m), 'e', 'u')
  if not f[1] then
    redis.call('ZREM', XKEY, m)
    n = n + 1
  elseif tonumber(f[1]) <= now then
    drop(m, f[2])
    n = n + 1
  else
    redis.call('ZADD', XKEY, f[1], m)
  end
end
return { n, #batch }
