-- ARGS: once
-- as body.lua, but the numbers passed once per call (ARGV[1..4]) and no string.format:
-- value = level .. ' ' .. now (exact below 2^53 only with %d; here the experiment)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count, period, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cap = burst * period
local out = {}
for i = 1, #KEYS do
  local level = cap
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local sp = string.find(stored, ' ', 4, true)
    local l = tonumber(string.sub(stored, 4, sp - 1))
    local s = tonumber(string.sub(stored, string.find(stored, ' ', sp + 1, true) + 1))
    if l and s then
      local elapsed = math.max(0, now - s)
      if elapsed < math.ceil((cap - l) / count) then level = l + elapsed * count end
    end
  end
  level = level - cost * period
  local reset = math.ceil((cap - level) / count)
  redis.call('SET', KEYS[i], 'v2 ' .. level .. ' ' .. period .. ' ' .. now, 'PX', reset + 60000)
  out[i] = level
end
return out
