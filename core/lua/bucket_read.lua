-- ratelimit: how a script reads a stored bucket, shared by view.lua and lease.lua (each is
-- sent with this in front: bucket_read_script() in bucket_view.h).
-- The level of `stored` (GET's reply; anything but a string is a missing, full bucket) at
-- `now`, in units of 1/period token, and the stamp it is as of; nil for a value no bucket can
-- hold. Mirrors view_stored() in bucket_view.cpp.
local function read_bucket(stored, count, period, burst, now)
  local cap = burst * period
  if type(stored) ~= 'string' then
    return cap, now
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
    return nil
  end
  -- A stamp ahead of this clock keeps: the level is as of it (as in the decision script).
  local stamp = math.max(s, now)
  if from ~= period then
    local tokens = math.floor(l / from)
    if tokens >= burst then
      l = cap
    else
      l = tokens * period + math.floor((l % from) * period / from)
    end
  end
  if l >= cap or math.max(0, now - s) >= math.ceil((cap - l) / count) then
    return cap, stamp
  end
  return l + math.max(0, now - s) * count, stamp
end
