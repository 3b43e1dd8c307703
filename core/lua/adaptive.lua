-- One node's interval for an adaptive controller (ratelimit_adaptive), once per interval.
-- KEYS[1]: the controller's base key (a hash tag keeps its keys in one cluster slot).
-- ARGV: interval_ms, the node's counts (requests errors slow warm admitted latency_ms), then the
-- interval and state this node computed last time ('' '' for none).
-- Adds the counts to the current interval (numbered by Redis time), keeps the first state
-- proposed for the previous interval (every node computes the same one), and returns
-- {interval, the previous interval's state (or the last one kept, or false), its totals}.
local t = redis.call('TIME')
local interval = tonumber(ARGV[1])
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = math.floor(now / interval)
local base = KEYS[1]
local ttl = interval * 10
local names = {'requests', 'errors', 'slow', 'warm', 'admitted', 'latency_ms'}
local current = base .. ':c:' .. n
for i = 1, 6 do
  local v = tonumber(ARGV[i + 1])
  if v and v > 0 then
    redis.call('HINCRBY', current, names[i], v)
  end
end
redis.call('PEXPIRE', current, ttl)
local previous = base .. ':s:' .. (n - 1)
if ARGV[8] ~= '' and tonumber(ARGV[8]) == n - 1 then
  if redis.call('SET', previous, ARGV[9], 'NX', 'PX', ttl) then
    redis.call('SET', base .. ':last', ARGV[9], 'PX', 86400000)
  end
end
local state = redis.call('GET', previous) or redis.call('GET', base .. ':last')
local totals = redis.call('HMGET', base .. ':c:' .. (n - 1), unpack(names))
local reply = {n, state}
for i = 1, 6 do
  reply[i + 2] = tonumber(totals[i]) or 0
end
return reply
