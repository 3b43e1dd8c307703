-- ratelimit 0.4: a batch of requests over token buckets, in order
local keys, argv = KEYS, ARGV
local nk, nargs = #keys, #argv
local tonumber, fmod, smatch, sformat = tonumber, math.fmod, string.match, string.format
local sgsub, ssub = string.gsub, string.sub
local nr, np = tonumber(argv[1]), tonumber(argv[2])
if nk == 0 or not nr or not np or np < 1 or nargs < 2 + 3 * np + nk + nr then
  return redis.error_reply('ratelimit: bad arguments')
end
local function ceil_div(a, b)
  local r = fmod(a, b)
  if r == 0 then return (a - r) / b end
  return (a - r) / b + 1
end
local counts, periods, bursts, caps = {}, {}, {}, {}
local big = false
for p = 1, np do
  local c, per, b = tonumber(argv[3 * p]), tonumber(argv[3 * p + 1]), tonumber(argv[3 * p + 2])
  if not (c and per and b) or c <= 0 or per <= 0 or b <= 0 then
    return redis.error_reply('ratelimit: bad arguments')
  end
  counts[p], periods[p], bursts[p], caps[p] = c, per, b, b * per
  if b * per >= 1e14 then big = true end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.call('MGET', unpack(keys))
local kp, levels, stamps = {}, {}, {}
local a = 2 + 3 * np
for i = 1, nk do
  local p = tonumber(argv[a + i])
  local cap = caps[p]
  if not cap then
    return redis.error_reply('ratelimit: bad arguments')
  end
  local period, level, stamp = periods[p], cap, now
  local v = stored[i]
  if v then
    local ver, l, per, s, after = smatch(v, '^v(%d+) (%d+) (%d+) (%d+)(.?)')
    if ver then
      if tonumber(ver) < 2 or (after ~= '' and after ~= ' ') then l = nil end
    else
      l, s = smatch(v, '^(%d+) (%d+)$')
      per = period
    end
    if l then l, per, s = tonumber(l), tonumber(per), tonumber(s) end
    -- A value no bucket can hold (negative, junk, past 2^53) is an error, never a full bucket.
    if not l or l >= 9007199254740992 or s >= 9007199254740992 or per == 0
        or per > 86400000 then
      return redis.error_reply('ratelimit: unreadable bucket value at '
        .. sgsub(ssub(keys[i], 1, 160), '[%c\128-\255]', '?'))
    end
    -- A stamp ahead of this clock keeps: the level is as of it (stored_state in C++).
    if s > now then stamp = s end
    if per ~= period then
      local frac = fmod(l, per)
      local tokens = (l - frac) / per
      if tokens >= bursts[p] then
        l = cap
      else
        local x = frac * period
        l = tokens * period + (x - fmod(x, per)) / per
      end
    end
    if l < cap then
      local elapsed = now - s
      if elapsed < 0 then elapsed = 0 end
      -- Exact even past 2^53: such a product still compares as at least 2^53 > cap.
      if elapsed * counts[p] < cap - l then
        level = l + elapsed * counts[p]
      end
    end
  end
  kp[i], levels[i], stamps[i] = p, level, stamp
end
a = a + nk + 1
local out, o = {now}, 1
local dirty, order = {}, {}
local ks, needs, seen = {}, {}, {}
for r = 1, nr do
  local x = tonumber(argv[a])
  if not x or x == 0 or x ~= math.floor(x) then
    return redis.error_reply('ratelimit: bad arguments')
  end
  if x > 0 then
    local p = kp[x]
    if not p then
      return redis.error_reply('ratelimit: bad arguments')
    end
    local level, need = levels[x], periods[p]
    if level >= need then
      level = level - need
      levels[x] = level
      if not dirty[x] then dirty[x] = true; order[#order + 1] = x end
      out[o + 1] = 1
    else
      out[o + 1] = 0
    end
    out[o + 2] = level
    o = o + 2
    a = a + 1
  else
    local n = -x
    local allowed = 1
    for j = 1, n do
      local k, cost = tonumber(argv[a + 2 * j - 1]), tonumber(argv[a + 2 * j])
      -- A key twice in one request would be checked twice against one level.
      if not (k and cost) or not kp[k] or cost < 0 or cost ~= math.floor(cost)
          or seen[k] == r then
        return redis.error_reply('ratelimit: bad arguments')
      end
      seen[k] = r
      local need = cost * periods[kp[k]]
      if levels[k] < need then allowed = 0 end
      ks[j], needs[j] = k, need
    end
    o = o + 1
    out[o] = allowed
    for j = 1, n do
      local k = ks[j]
      if allowed == 1 and needs[j] > 0 then
        levels[k] = levels[k] - needs[j]
        if not dirty[k] then dirty[k] = true; order[#order + 1] = k end
      end
      o = o + 1
      out[o] = levels[k]
    end
    a = a + 1 + 2 * n
  end
end
if a - 1 ~= nargs then
  return redis.error_reply('ratelimit: bad arguments')
end
for _, k in ipairs(order) do
  local level, p = levels[k], kp[k]
  if level < caps[p] then
    -- Expires when readers see it full: refilling starts at its stamp.
    redis.call('PSETEX', keys[k], stamps[k] - now + ceil_div(caps[p] - level, counts[p]),
               sformat('v2 %d %d %d', level, periods[p], stamps[k]))
  end
end
if big then
  for i = 2, o do out[i] = sformat('%d', out[i]) end
end
return table.concat(out, ' ')
