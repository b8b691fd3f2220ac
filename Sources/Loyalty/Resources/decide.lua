-- Decides one member's matching rules for one event: caps, frequency and idempotency in one
-- atomic call. Every key carries the member's hash tag {m:<id>}, so it runs on Redis Cluster.
--
-- KEYS per rule (8): decision, frequency, points day/week/month, growth day/week/month.
-- ARGV: n, decision TTL, day/week/month TTLs, then per rule (10): points, growth, frequency,
-- frequency TTL (0 = forever), 3 point caps, 3 growth caps (-1 = none).
--
-- Replies one entry per rule, in order: {status, points, growth} (status granted, capped or
-- frequency; points and growth integers). A decision is stored as "status:points:growth", the
-- text every earlier version stored and read back: a decision remembered for 35 days must stay
-- readable across an upgrade and a rollback. A stored value that does not read as one is answered
-- {"unreadable", value}, and the caller fails with it rather than guess.
local n = tonumber(ARGV[1])
local decisionTTL = tonumber(ARGV[2])
local ttl = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local out = {}
for i = 0, n - 1 do
  local k = i * 8
  local a = 6 + i * 10
  local decided = redis.call('GET', KEYS[k + 1])
  if not decided then
    local points = tonumber(ARGV[a])
    local growth = tonumber(ARGV[a + 1])
    local frequency = ARGV[a + 2]
    local status = 'granted'
    if frequency ~= 'unlimited' and redis.call('EXISTS', KEYS[k + 2]) == 1 then
      points = 0
      growth = 0
      status = 'frequency'
    else
      for j = 0, 2 do
        local cap = tonumber(ARGV[a + 4 + j])
        if cap >= 0 then
          local left = math.max(cap - tonumber(redis.call('GET', KEYS[k + 3 + j]) or '0'), 0)
          if points > left then points = left; status = 'capped' end
        end
        cap = tonumber(ARGV[a + 7 + j])
        if cap >= 0 then
          local left = math.max(cap - tonumber(redis.call('GET', KEYS[k + 6 + j]) or '0'), 0)
          if growth > left then growth = left; status = 'capped' end
        end
      end
      -- Only capped periods are counted: an uncapped counter would be work nobody reads.
      for j = 0, 2 do
        if points > 0 and tonumber(ARGV[a + 4 + j]) >= 0 then
          redis.call('INCRBY', KEYS[k + 3 + j], points)
          redis.call('EXPIRE', KEYS[k + 3 + j], ttl[j + 1])
        end
        if growth > 0 and tonumber(ARGV[a + 7 + j]) >= 0 then
          redis.call('INCRBY', KEYS[k + 6 + j], growth)
          redis.call('EXPIRE', KEYS[k + 6 + j], ttl[j + 1])
        end
      end
      if frequency ~= 'unlimited' then
        local frequencyTTL = tonumber(ARGV[a + 3])
        if frequencyTTL > 0 then
          redis.call('SET', KEYS[k + 2], KEYS[k + 1], 'EX', frequencyTTL)
        else
          redis.call('SET', KEYS[k + 2], KEYS[k + 1])
        end
      end
    end
    decided = status .. ':' .. string.format('%d', points) .. ':' .. string.format('%d', growth)
    redis.call('SET', KEYS[k + 1], decided, 'EX', decisionTTL)
  end
  local status, points, growth = string.match(decided, '^(%a+):(%-?%d+):(%-?%d+)$')
  if status then
    out[#out + 1] = {status, tonumber(points), tonumber(growth)}
  else
    out[#out + 1] = {'unreadable', decided}
  end
end
return out
