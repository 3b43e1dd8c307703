-- ARGS: none
-- GET + SET PX per key, constant value: the floor of a batched script
local v = 'v2 99999000 1000 1795946804450'
for i = 1, #KEYS do
  redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], v, 'PX', 60000)
end
return 1
