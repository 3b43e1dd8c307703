-- ARGS: per-key
-- floor + 4 tonumber(ARGV) per key (today's per-limit arguments)
local v = 'v2 99999000 1000 1795946804450'
local acc = 0
for i = 1, #KEYS do
  acc = acc + tonumber(ARGV[4*i-3]) + tonumber(ARGV[4*i-2]) + tonumber(ARGV[4*i-1]) + tonumber(ARGV[4*i])
  redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], v, 'PX', 60000)
end
return 1
