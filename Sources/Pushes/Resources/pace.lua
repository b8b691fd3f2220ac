-- pace.lua: PushPace.take (Sources/Pushes/PushPace.swift): one call gives tokens to the sends of one
-- app waiting in a process's line.
-- KEYS: the app's token bucket, the app's sent counter for the Beijing day.
-- ARGV: rate per second (0: no limit), now (epoch ms), daily quota, the counter's TTL (s), tokens
-- wanted (1 or more: the caller and those waiting behind it).
-- Returns {granted, 0}: granted tokens, at least 1 and at most wanted, each counted against the
-- quota; {0, ms}: the bucket holds no token for ms more milliseconds; {0, -1}: the day's quota is
-- spent.
-- The bucket holds 250 ms of messages (at least one): a burst runs ahead of the pace by no more
-- than that, and a worker that stalled for up to that long makes the time up.
local rate = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local wanted = tonumber(ARGV[5])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used >= quota then return {0, -1} end
local granted = math.min(wanted, quota - used)
if rate > 0 then
  local capacity = math.max(1, rate / 4)
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(b[1] or capacity)
  local at = tonumber(b[2] or now)
  tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
    return {0, math.ceil((1 - tokens) * 1000 / rate)}
  end
  granted = math.min(granted, math.floor(tokens))
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - granted), 'at', now)
  redis.call('PEXPIRE', KEYS[1], 60000)
end
redis.call('INCRBY', KEYS[2], granted)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {granted, 0}
