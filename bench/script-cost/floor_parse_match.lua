-- ARGS: none
local v = 'v2 99999000 1000 1795946804450'
local acc = 0
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local l, p, s = string.match(stored, '^v2 (%d+) (%d+) (%d+)')
    acc = acc + tonumber(l) + tonumber(s)
  end
  redis.call('SET', KEYS[i], v, 'PX', 60000)
end
return 1
