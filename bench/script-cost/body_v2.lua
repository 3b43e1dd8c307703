-- ARGS: per-key
-- GET, parse "v2 level period stamp", refill maths, format, SET PX per key; args per key as today
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  local count = tonumber(ARGV[4 * i - 3])
  local period = tonumber(ARGV[4 * i - 2])
  local burst = tonumber(ARGV[4 * i - 1])
  local cost = tonumber(ARGV[4 * i])
  local cap = burst * period
  local level = cap
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local l, p, s = string.match(stored, '^v2 (%d+) (%d+) (%d+)')
    if l then
      l = tonumber(l); s = tonumber(s)
      local elapsed = math.max(0, now - s)
      if elapsed < math.ceil((cap - l) / count) then level = l + elapsed * count end
    end
  end
  level = level - cost * period
  local reset = math.ceil((cap - level) / count)
  redis.call('SET', KEYS[i], string.format('v2 %d %d %d', level, period, now), 'PX', reset + 60000)
  out[#out + 1] = level
end
return out
