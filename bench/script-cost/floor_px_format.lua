-- ARGS: none
-- floor with PX given as a string made by string.format('%d') (as today)
local v = 'v2 99999000 1000 1795946804450'
for i = 1, #KEYS do
  redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], v, 'PX', string.format('%d', 60000 + i))
end
return 1
