-- What changed in the runtime limits since a node's version, a page at a time.
-- KEYS as overrides_write.lua. ARGV[1] the node's version, ARGV[2] the page size.
-- Returns {version, reset, field1, score1, value1, ...}: reset 1 when the node's version is
-- ahead of Redis's (Redis lost its data): the node starts again from nothing. A value of ""
-- means the field was removed. Scores are unique, so a node that got a full page continues
-- from the last score.
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
local since = tonumber(ARGV[1])
local reset = 0
if since > version then
    since = 0
    reset = 1
end
local out = {version, reset}
if since == version then
    return out
end
local changed = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, version, 'WITHSCORES',
                           'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #changed, 2 do
    out[#out + 1] = changed[i]
    out[#out + 1] = changed[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], changed[i]) or ''
end
return out
