-- GCRA rate-limit check (axess.ratelimit): one call covers every limit of
-- every rule that applies to a request. The arithmetic mirrors
-- axess/ratelimit/gcra.py exactly (integer microseconds, all below 2^53).
--
-- KEYS:  one per limit, holding its TAT (theoretical arrival time, decimal µs)
-- ARGV:  prefix (unused), then per limit: emission_us, capacity_us, cost
-- The clock is the server's TIME, so instances with skewed clocks agree.
-- The request is admitted only if it conforms to every limit; only then are
-- the TATs written, each with a TTL that ends when its bucket is full again
-- (at most the limit's period, or its capacity when burst > count).
-- Returns {allowed, then per limit: remaining, reset_us, retry_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local base = {}
local allowed = 1
for i = 1, n do
  local j = 3 * i - 1
  local emission, capacity, cost = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  local b = tat
  if b < now then
    b = now
  end
  base[i] = b
  if b + cost * emission - now > capacity then
    allowed = 0
  end
end
local out = { allowed }
for i = 1, n do
  local j = 3 * i - 1
  local emission, capacity, cost = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  local ahead = base[i] - now
  local retry = 0
  if allowed == 1 then
    ahead = ahead + cost * emission
    redis.call('SET', KEYS[i], string.format('%.0f', now + ahead), 'PX', math.ceil(ahead / 1000))
  else
    retry = ahead + cost * emission - capacity
    if retry < 0 then
      retry = 0
    end
  end
  local left = math.floor((capacity - ahead) / emission)
  if left < 0 then
    left = 0
  end
  out[#out + 1] = left
  out[#out + 1] = ahead
  out[#out + 1] = retry
end
return out
