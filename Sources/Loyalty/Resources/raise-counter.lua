-- Raises a cap counter (or a frequency mark) to what the ledger proves, never lowers it: while
-- workers keep deciding, Redis may be ahead of the ledger by decisions not yet committed.
-- KEYS[1]: the counter. ARGV[1]: the ledger's total. ARGV[2]: its TTL in seconds (0 = none).
-- Replies 1 when it raised the counter, 0 when the counter was already there.
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < tonumber(ARGV[1]) then
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  return 1
end
return 0
