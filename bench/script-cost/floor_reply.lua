-- ARGS: none
local v = 'v2 99999000 1000 1795946804450'
local out = {}
for i = 1, #KEYS do
  redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], v, 'PX', 60000)
  out[i] = 99999000
end
return out
