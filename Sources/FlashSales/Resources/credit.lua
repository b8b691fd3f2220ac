-- credit.lua: FlashSaleStock.creditScript (Sources/FlashSales/FlashSaleStock.swift).
-- KEYS: a stripe. ARGV: units lent to it. 0 when the stripe is gone (Redis lost it).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'initial', ARGV[1])
return 1
