-- lend.lua: FlashSaleStock.lendScript (Sources/FlashSales/FlashSaleStock.swift).
-- KEYS: a donor stripe. ARGV: units wanted. Gives up half of what it has left (at least what
-- is wanted, at most what it has), so a dry stripe does not come back for every unit.
local r = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
if r <= 0 then return 0 end
local n = math.max(tonumber(ARGV[1]), math.ceil(r / 2))
if n > r then n = r end
redis.call('HINCRBY', KEYS[1], 'remaining', -n)
redis.call('HINCRBY', KEYS[1], 'initial', -n)
return n
