-- GCRA rate-limit check (axess.ratelimit): one call covers every limit of
-- every rule that applies to a request. The arithmetic mirrors
-- axess/ratelimit/gcra.py exactly (integer microseconds, all below 2^53).
--
-- KEYS:  one per limit, holding its TAT (theoretical arrival time, decimal µs)
-- ARGV:  prefix (unused), then per limit: emission_us, capacity_us, cost
-- The clock is the server's TIME, so instances with skewed clocks agree.
-- The request is admitted only if it conforms to every limit; only then are
-- the TATs written, each with a TTL that ends when its bucket is full again
-- (at most the limit's period, or its refill time when burst > count).
-- Reply, from which gcra.states_from() derives the rest: ahead_i is how far
-- limit i's TAT is ahead of now after the check (the new TAT if admitted,
-- the stored one if refused). One limit: an integer, ahead_1 (>= 1) if
-- admitted, -1 - ahead_1 if refused. Several: the string
-- "<allowed 0|1> <ahead_1> ... <ahead_n>".
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local ahead = {}
local allowed = 1
for i = 1, n do
  local j = 3 * i - 1
  local emission, capacity, cost = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  local held = (tonumber(redis.call('GET', KEYS[i]) or '0') or 0) - now
  if held < 0 then
    held = 0
  end
  ahead[i] = held
  if held + cost * emission > capacity then
    allowed = 0
  end
end
if n == 1 and allowed == 0 then
  return -1 - ahead[1]
end
local out = { tostring(allowed) }
for i = 1, n do
  if allowed == 1 then
    local j = 3 * i - 1
    ahead[i] = ahead[i] + tonumber(ARGV[j]) * tonumber(ARGV[j + 2])
    local tat = string.format('%.0f', now + ahead[i])
    redis.call('SET', KEYS[i], tat, 'PX', math.ceil(ahead[i] / 1000))
  end
  if n == 1 then
    return ahead[1]
  end
  out[i + 1] = string.format('%.0f', ahead[i])
end
return table.concat(out, ' ')
