-- stats-record.lua: PushStats.record (Sources/Pushes/PushStats.swift), one call per push outcome.
-- KEYS: the app's outcome counts for the Beijing day, the day's set of apps that pushed.
-- ARGV: the outcome, the app, the keys' TTL (s). Returns the outcome's new count for the day.
local count = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return count
