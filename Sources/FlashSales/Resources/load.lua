-- load.lua: FlashSaleStock.loadScript (Sources/FlashSales/FlashSaleStock.swift).
-- KEYS: stripe. ARGV: initial, limit, start, end, timeout, audience flag, then for a new
-- stripe remaining, reserved, paid; then the change of `initial` for an existing stripe, or
-- empty to move it to ARGV[1].
local exists = redis.call('EXISTS', KEYS[1])
if exists == 1 then
  local initial = tonumber(redis.call('HGET', KEYS[1], 'initial'))
  local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
  local delta = tonumber(ARGV[1]) - initial
  if ARGV[10] ~= '' then delta = tonumber(ARGV[10]) end
  if remaining + delta < 0 then return -1 end
  redis.call('HINCRBY', KEYS[1], 'initial', delta)
  redis.call('HINCRBY', KEYS[1], 'remaining', delta)
else
  redis.call('HSET', KEYS[1], 'initial', ARGV[1], 'remaining', ARGV[7], 'reserved', ARGV[8], 'paid', ARGV[9])
end
redis.call('HSET', KEYS[1], 'limit', ARGV[2], 'start', ARGV[3], 'end', ARGV[4], 'timeout', ARGV[5], 'audience', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[4]) + 30 * 86400000)
return 1
