-- ARGS: none
local level, period, now = 99999000, 1000, 1795946804450
for i = 1, #KEYS do
  redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], string.format('v2 %d %d %d', level, period, now), 'PX', 60000)
end
return 1
