-- One change of the runtime limits (ratelimit_api limits/ and policies/), atomically.
-- KEYS[1] version counter, KEYS[2] hash of the overrides in force (field "<policy>" for a
-- policy change, "<policy>:<key>" for a key override), KEYS[3] sorted set of the fields by
-- the version that last changed them (what nodes read to catch up).
-- ARGV[1] field, ARGV[2] value ("" removes it).
-- Returns {new version, old value or false}.
local old = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[2] == '' then
    redis.call('HDEL', KEYS[2], ARGV[1])
else
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
local version = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[3], version, ARGV[1])
return {version, old}
