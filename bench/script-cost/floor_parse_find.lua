-- ARGS: none
local v = 'v2 99999000 1000 1795946804450'
local acc = 0
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local sp = string.find(stored, ' ', 4, true)
    local l = tonumber(string.sub(stored, 4, sp - 1))
    local s = tonumber(string.sub(stored, string.find(stored, ' ', sp + 1, true) + 1))
    acc = acc + l + s
  end
  redis.call('SET', KEYS[i], v, 'PX', 60000)
end
return 1
