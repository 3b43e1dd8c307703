-- ratelimit: read one bucket, take nothing
local count, period, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if #KEYS ~= 1 or not (count and period and burst)
    or count <= 0 or period <= 0 or burst <= 0 then
  return redis.error_reply('ratelimit: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = burst * period
local stored = redis.pcall('GET', KEYS[1])
if type(stored) ~= 'string' then
  return {0, cap, now}
end
local l, from, s
local v, rest = string.match(stored, '^v(%d+) (.*)$')
if v then
  if tonumber(v) >= 2 then
    local tail
    l, from, s, tail = string.match(rest, '^(%d+) (%d+) (%d+)(.*)$')
    if l and tail ~= '' and string.sub(tail, 1, 1) ~= ' ' then
      l = nil
    end
  end
else
  l, s = string.match(stored, '^(%d+) (%d+)$')
  from = period
end
if l then l, from, s = tonumber(l), tonumber(from), tonumber(s) end
-- A value no bucket can hold (negative, junk, past 2^53) is an error, never a full bucket.
if not l or from == 0 or from > 86400000 or l >= 9007199254740992
    or s >= 9007199254740992 then
  return redis.error_reply('ratelimit: unreadable bucket value')
end
if from ~= period and from > 0 then
  local tokens = math.floor(l / from)
  if tokens >= burst then
    l = cap
  else
    l = tokens * period + math.floor((l % from) * period / from)
  end
end
if l >= cap then
  l = cap
else
  local elapsed = math.max(0, now - s)
  if elapsed >= math.ceil((cap - l) / count) then
    l = cap
  else
    l = l + elapsed * count
  end
end
return {1, l, now}
