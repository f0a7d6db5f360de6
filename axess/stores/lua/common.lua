-- axess session scripts: shared prelude (prepended to every script by valkey.py).
--
-- Data layout, all names under the store prefix P (ARGV[1] of every script):
--   P .. 's:' .. key   hash  p=payload e=expires_at c=created_at [u=user_id] [t=tenant_id]
--                            (u/t absent = None), native TTL as a safety net
--   P .. 'u:' .. user  zset  member=key, score=expires_at: the user's sessions, every tenant
--   P .. 'x'           zset  member=key, score=expires_at: every session, for purge
--
-- Index members are removed only together with their session hash, or when
-- the hash is gone (expired natively) or belongs to another user, so a live
-- session is never lost from its user's index.
--
-- Optional string arguments are '' for None and '=' .. value otherwise.
-- Times are decimal strings (Python repr of a float), compared as numbers.

local PREFIX = ARGV[1]
local XKEY = PREFIX .. 'x'

local function skey(key)
  return PREFIX .. 's:' .. key
end

local function ukey(user)
  return PREFIX .. 'u:' .. user
end

local function opt(v)
  if v == '' then
    return false
  end
  return string.sub(v, 2)
end

-- Delete a session hash and its index entries ('user' may be false).
local function drop(key, user)
  redis.call('DEL', skey(key))
  redis.call('ZREM', XKEY, key)
  if user then
    redis.call('ZREM', ukey(user), key)
  end
end

-- The row's {expires_at, user} if it exists and is live at 'now'. A row that
-- has expired by the caller's clock is deleted and reported missing.
local function live(key, now)
  local f = redis.call('HMGET', skey(key), 'e', 'u')
  if not f[1] then
    return nil
  end
  if tonumber(f[1]) <= now then
    drop(key, f[2])
    return nil
  end
  return f
end

-- Write the record whose six arguments start at ARGV[i]:
-- ttl_ms ('0' = no expiry), expires_at, created_at, payload, user, tenant.
local function put(key, i)
  local ttl, exp = tonumber(ARGV[i]), ARGV[i + 1]
  local user, tenant = opt(ARGV[i + 4]), opt(ARGV[i + 5])
  local k = skey(key)
  local fields = { 'p', ARGV[i + 3], 'e', exp, 'c', ARGV[i + 2] }
  if user then
    fields[#fields + 1] = 'u'
    fields[#fields + 1] = user
  end
  if tenant then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = tenant
  end
  redis.call('DEL', k)
  redis.call('HSET', k, unpack(fields))
  if ttl > 0 then
    redis.call('PEXPIRE', k, ttl)
  end
  redis.call('ZADD', XKEY, exp, key)
  if user then
    -- The index lives as long as its longest-lived session.
    local uk = ukey(user)
    local existed = redis.call('EXISTS', uk) == 1
    local cur = redis.call('PTTL', uk)
    redis.call('ZADD', uk, exp, key)
    if ttl == 0 then
      redis.call('PERSIST', uk)
    elseif not existed or (cur >= 0 and cur < ttl) then
      redis.call('PEXPIRE', uk, ttl)
    end
  end
end

-- Remove up to 100 index entries of 'user' that expired by 'before' and whose
-- hash is gone or no longer belongs to the user (bounds the index size).
local function prune(user, before)
  local uk = ukey(user)
  local stale = redis.call('ZRANGE', uk, '-inf', before, 'BYSCORE', 'LIMIT', 0, 100)
  for _, m in ipairs(stale) do
    if redis.call('HGET', skey(m), 'u') ~= user then
      redis.call('ZREM', uk, m)
    end
  end
end
