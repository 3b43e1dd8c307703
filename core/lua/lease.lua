-- ratelimit: a token lease. Gives back a lease's unused tokens (capped at the burst), then
-- grants min(wanted, whole tokens / 4) tokens, none under 2, debited as a decision would be.
-- KEYS[1] the bucket; ARGV count, period, burst, returned, wanted.
-- Reply: "<granted> <level after, in units of 1/period token> <Redis time ms>".
-- Sent after bucket_read.lua, which reads the bucket.
local count, period, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local returned, wanted = tonumber(ARGV[4]), tonumber(ARGV[5])
if #KEYS ~= 1 or not (count and period and burst and returned and wanted)
    or count <= 0 or period <= 0 or burst <= 0 or returned < 0 or wanted < 0
    or returned ~= math.floor(returned) or wanted ~= math.floor(wanted) then
  return redis.error_reply('ratelimit: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = burst * period
local stored = redis.pcall('GET', KEYS[1])
local level, stamp = read_bucket(stored, count, period, burst, now)
if not level then
  return redis.error_reply('ratelimit: unreadable bucket value')
end
level = math.min(cap, level + returned * period)
local granted = math.min(wanted, math.floor(math.floor(level / period) / 4))
if granted < 2 then granted = 0 end
level = level - granted * period
if level < cap then
  -- Expires when readers see it full: refilling starts at its stamp.
  redis.call('PSETEX', KEYS[1], stamp - now + math.ceil((cap - level) / count),
             string.format('v2 %d %d %d', level, period, stamp))
elseif type(stored) == 'string' then
  redis.call('DEL', KEYS[1])
end
return string.format('%d %d %d', granted, level, now)
