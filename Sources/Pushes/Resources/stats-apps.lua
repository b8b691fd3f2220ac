-- stats-apps.lua: PushStats.today (Sources/Pushes/PushStats.swift).
-- KEYS: the Beijing day's set of apps that pushed. Returns their ids (an array of texts).
return redis.call('SMEMBERS', KEYS[1])
