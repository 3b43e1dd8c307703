-- ratelimit: read one bucket, take nothing (sent after bucket_read.lua)
local count, period, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if #KEYS ~= 1 or not (count and period and burst)
    or count <= 0 or period <= 0 or burst <= 0 then
  return redis.error_reply('ratelimit: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.pcall('GET', KEYS[1])
local level = read_bucket(stored, count, period, burst, now)
if not level then
  return redis.error_reply('ratelimit: unreadable bucket value')
end
return {type(stored) == 'string' and 1 or 0, level, now}
