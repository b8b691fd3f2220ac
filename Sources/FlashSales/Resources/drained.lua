-- drained.lua: FlashSaleStock.drainedScript (Sources/FlashSales/FlashSaleStock.swift).
-- KEYS: the drained mark. ARGV: "check", or "set" and its TTL (ms). Scripts, not plain
-- commands, so these ride the coalesced pipelines with the reservations.
if ARGV[1] == 'set' then redis.call('SET', KEYS[1], '1', 'PX', ARGV[2]) return 1 end
return redis.call('EXISTS', KEYS[1])
