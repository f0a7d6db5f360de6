-- delete_session. KEYS: session hash, expiry index. ARGV: prefix, key.
-- Returns 1 if a row was deleted, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
drop(ARGV[2], redis.call('HGET', KEYS[1], 'u'))
return 1
