-- pace.lua: PushPace.take (Sources/Pushes/PushPace.swift), one call before each send.
-- KEYS: the app's token bucket, the app's sent counter for the Beijing day.
-- ARGV: rate per second (0: no limit), now (epoch ms), daily quota, the counter's TTL (s).
-- Returns 0 (go: a token taken and the send counted against the quota), -1 (the day's quota is
-- spent) or a positive number of milliseconds until the bucket holds a token.
-- The bucket holds 250 ms of messages (at least one): a burst runs ahead of the pace by no more
-- than that, and a worker that stalled for up to that long makes the time up.
local rate = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return -1 end
if rate > 0 then
  local capacity = math.max(1, rate / 4)
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(b[1] or capacity)
  local at = tonumber(b[2] or now)
  tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
    return math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[1], 60000)
end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
