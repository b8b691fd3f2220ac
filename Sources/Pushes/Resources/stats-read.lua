-- stats-read.lua: PushStats.today (Sources/Pushes/PushStats.swift), one call per app.
-- KEYS: the app's outcome counts, its sent counter (the quota), its forced token refreshes, all
-- for the Beijing day. Returns {forced, used, outcome, count, outcome, count, ...}: two integers,
-- then pairs of a text and an integer.
local out = {tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0')}
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  out[#out + 1] = counts[i]
  out[#out + 1] = tonumber(counts[i + 1])
end
return out
