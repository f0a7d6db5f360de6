-- axess lockout counters (one script, dispatched on ARGV[2]; ARGV[1] is the
-- store prefix, unused: every key arrives fully named in KEYS).
--
-- Layout: KEYS[i] = P .. 'l:' .. lever key  hash  f=failures w=window_start
--         u=locked_until n=lockouts e=expires_at (epoch ms), native TTL as a
--         safety net; a trusted origin is the same kind of hash with only e.
-- Liveness is always decided by the caller's 'now' against e.
--
-- The transition mirrors axess.stores.base.apply_failure exactly.

local op = ARGV[2]
local now = tonumber(ARGV[3])

local function live(k)
  local h = redis.call('HMGET', k, 'f', 'w', 'u', 'n', 'e')
  local e = tonumber(h[5])
  if not e or e <= now then
    return { 0, 0, 0, 0, 0 }
  end
  return { tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0, e }
end

local function trusted(k)
  local e = tonumber(redis.call('HGET', k, 'e'))
  return e ~= nil and e > now
end

local function ttl(e)
  local t = e - now
  if t < 1 then
    t = 1
  end
  return t
end

if op == 'status' then
  -- ARGV[4]: '1' if the last key is the origin. Returns locked_until of
  -- each lever (0 = not locked), then 1/0 for the origin's trust.
  local has_origin = ARGV[4] == '1'
  local n = #KEYS
  if has_origin then
    n = n - 1
  end
  local out = {}
  for i = 1, n do
    local s = live(KEYS[i])
    if s[3] > now then
      out[i] = s[3]
    else
      out[i] = 0
    end
  end
  if has_origin and trusted(KEYS[#KEYS]) then
    out[n + 1] = 1
  else
    out[n + 1] = 0
  end
  return out
end

if op == 'fail' or op == 'reserve' then
  -- ARGV[4]: origin flag; then per lever six values from ARGV[5]:
  -- threshold, window, lock_for, backoff, max_lock, exempt_if_trusted.
  -- 'reserve' is all or nothing: when a counted lever is locked, nothing
  -- is written (axess.stores.base.reserve_levers).
  -- Returns {refused, trusted}, then per lever {applied, f, w, u, n, e, tripped}
  -- (for a refused reservation, u is the lever's lock end or 0).
  local has_origin = ARGV[4] == '1'
  local n = #KEYS
  local is_trusted = false
  if has_origin then
    n = n - 1
    is_trusted = trusted(KEYS[#KEYS])
  end
  local function exempt(i)
    return is_trusted and ARGV[5 + (i - 1) * 6 + 5] == '1'
  end
  if op == 'reserve' then
    local refused = 0
    local rows = {}
    for i = 1, n do
      local u = 0
      if not exempt(i) then
        local s = live(KEYS[i])
        if s[3] > now then
          u = s[3]
          refused = 1
        end
      end
      rows[i] = { 0, 0, 0, u, 0, 0, 0 }
    end
    if refused == 1 then
      local out = { { 1, is_trusted and 1 or 0 } }
      for i = 1, n do
        out[i + 1] = rows[i]
      end
      return out
    end
  end
  local out = { { 0, is_trusted and 1 or 0 } }
  for i = 1, n do
    local a = 5 + (i - 1) * 6
    local threshold, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local lock_for, backoff = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local max_lock = tonumber(ARGV[a + 4])
    if exempt(i) then
      out[i + 1] = { 0, 0, 0, 0, 0, 0, 0 }
    else
      local s = live(KEYS[i])
      local f, w, u, lk, e = s[1], s[2], s[3], s[4], s[5]
      local tripped = 0
      if u <= now then
        if f == 0 or w + window <= now then
          f, w = 1, now
        else
          f = f + 1
        end
        if f >= threshold then
          tripped = 1
          lk = lk + 1
          local length = lock_for * backoff ^ (lk - 1)
          if length > max_lock then
            length = max_lock
          end
          u = now + math.floor(length + 0.5)
          f, w = 0, now
        end
        e = w + window
        if lk > 0 and u + max_lock > e then
          e = u + max_lock
        end
        redis.call('HSET', KEYS[i], 'f', f, 'w', w, 'u', u, 'n', lk, 'e', e)
        redis.call('PEXPIRE', KEYS[i], ttl(e))
      end
      out[i + 1] = { 1, f, w, u, lk, e, tripped }
    end
  end
  return out
end

if op == 'success' then
  -- ARGV[4]: origin flag, ARGV[5]: trusted_until, ARGV[6]: R, the number of
  -- units to hand back; ARGV[7..]: their window starts. KEYS: the counters
  -- to delete, then the R counters to hand a unit back to, then the origin.
  -- A unit goes back only to the window it was taken in, never to a locked
  -- or dead counter (axess.stores.base.release_unit).
  local has_origin = ARGV[4] == '1'
  local r = tonumber(ARGV[6]) or 0
  local n = #KEYS
  if has_origin then
    n = n - 1
    local until_ms = tonumber(ARGV[5])
    redis.call('HSET', KEYS[#KEYS], 'e', until_ms)
    redis.call('PEXPIRE', KEYS[#KEYS], ttl(until_ms))
  end
  for i = 1, n - r do
    redis.call('DEL', KEYS[i])
  end
  for j = 1, r do
    local k = KEYS[n - r + j]
    local s = live(k)
    if s[1] > 0 and s[3] <= now and s[2] == tonumber(ARGV[6 + j]) then
      redis.call('HSET', k, 'f', s[1] - 1)
    end
  end
  return n
end

return redis.error_reply('unknown lockout op')
