-- ARGS: none
local level, period, now = 99999000, 1000, 1795946804450
local acc = 0
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  if stored and #stored == 24 then
    local l, p, s = struct.unpack('ddd', stored)
    acc = acc + l + s
  end
  redis.call('SET', KEYS[i], struct.pack('ddd', level, period, now), 'PX', 60000)
end
return 1
