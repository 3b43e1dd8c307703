-- ratelimit: a token lease. Gives back a lease's unused tokens (capped at the burst), then
-- grants min(wanted, whole tokens / 4) tokens, none under 2, debited as a decision would be.
-- KEYS[1] the bucket; ARGV count, period, burst, returned, wanted.
-- Reply: "<granted> <level after, in units of 1/period token> <Redis time ms>".
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
local level, stamp = cap, now
local stored = redis.pcall('GET', KEYS[1])
if type(stored) == 'string' then
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
  -- A stamp ahead of this clock keeps: the level is as of it (as in the decision script).
  if s > now then stamp = s end
  if from ~= period then
    local tokens = math.floor(l / from)
    if tokens >= burst then
      l = cap
    else
      l = tokens * period + math.floor((l % from) * period / from)
    end
  end
  if l < cap then
    local elapsed = math.max(0, now - s)
    if elapsed < math.ceil((cap - l) / count) then
      level = l + elapsed * count
    end
  end
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
