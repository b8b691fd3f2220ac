-- reserve.lua: FlashSaleStock.reserveScript (Sources/FlashSales/FlashSaleStock.swift).
-- KEYS: sale, held, request, rate, audience, hold, holds. ARGV: now (ms), quantity, reservation
-- id, rate limit per window (0 = none), window (ms), request TTL (ms), member id, request id.
-- A reservation's hold record starts `held`, indexed by time until something settles it.
-- Replies (ScriptReply.Reserve): {'refused', <refusal>}, or the request's answer as
-- {'pending'|'ok', <reservation id>, <pay-by ms>, <quantity>}. The answer is kept under the request
-- id as the text '<state>:<id>:<pay-by ms>:<quantity>' (hold.lua turns 'pending' into 'ok').
local function answered(text)
  local state, id, payBy, q = string.match(text, '^(%a+):([^:]+):(%-?%d+):(%d+)$')
  if not state then return {'unreadable', text} end
  return {state, id, tonumber(payBy), tonumber(q)}
end
local prior = redis.call('GET', KEYS[3])
if prior then return answered(prior) end
local perWindow = tonumber(ARGV[4])
if perWindow > 0 then
  local n = redis.call('INCR', KEYS[4])
  if n == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[5]) end
  if n > perWindow then return {'refused', 'rate_limited'} end
end
local s = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'start', 'end', 'timeout', 'audience')
if not s[1] then return {'refused', 'not_loaded'} end
local now = tonumber(ARGV[1])
local q = tonumber(ARGV[2])
if now < tonumber(s[3]) then return {'refused', 'not_started'} end
if now >= tonumber(s[4]) then return {'refused', 'ended'} end
if s[6] == '1' and redis.call('SISMEMBER', KEYS[5], ARGV[7]) == 0 then return {'refused', 'not_eligible'} end
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if held + q > tonumber(s[2]) then return {'refused', 'limit_reached'} end
if tonumber(s[1]) < q then return {'refused', 'sold_out'} end
redis.call('HINCRBY', KEYS[1], 'remaining', -q)
redis.call('HINCRBY', KEYS[1], 'reserved', q)
redis.call('INCRBY', KEYS[2], q)
redis.call('PEXPIREAT', KEYS[2], tonumber(s[4]) + 30 * 86400000)
local payBy = now + tonumber(s[5]) * 1000
local answer = 'pending:' .. ARGV[3] .. ':' .. string.format('%d', payBy) .. ':' .. ARGV[2]
redis.call('SET', KEYS[3], answer, 'PX', ARGV[6])
local keep = tonumber(s[4]) + 30 * 86400000
redis.call('HSET', KEYS[6], 'state', 'held', 'q', ARGV[2], 'member', ARGV[7], 'req', ARGV[8], 'at', ARGV[1])
redis.call('PEXPIREAT', KEYS[6], keep)
redis.call('ZADD', KEYS[7], ARGV[1], ARGV[3])
redis.call('PEXPIREAT', KEYS[7], keep)
return {'pending', ARGV[3], payBy, q}
