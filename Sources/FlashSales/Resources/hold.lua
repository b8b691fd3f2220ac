-- hold.lua: FlashSaleStock.holdScript (Sources/FlashSales/FlashSaleStock.swift).
-- One change of a reservation's hold, compare-and-set: it happens only from one of the states
-- in `from`, and only `released` (units back to stock and to the member's limit) and `paid`
-- (reserved to paid) move units. Answers {'changed', <state>} when this call made the change,
-- {'unchanged', <state>} with the state it found otherwise ({'unchanged', 'none'}: no record),
-- {'lost'} when Redis no longer holds the campaign (rebuild it: `Reconciler`). Read by
-- ScriptReply.Hold.
--
-- A missing record (Redis lost it, or the reservation predates hold records) is handled as
-- `missing` says: `none` changes nothing; `adopt` (an order arriving) takes the units from
-- stock again if there are enough, else the hold is `released` (cancelled, never oversold),
-- unless the request's answer (fix = 1) still names the reservation: then it was reserved by
-- the earlier scheme, which kept no record, and its units are counted already;
-- `assume` (expiry or payment of an existing order) treats it as `ordered`, unless a `settled`
-- mark of the earlier scheme says it was settled already.
--
-- With `fix` = 1 the request's answer (KEYS[5]) follows the hold while it is still this
-- reservation's pending one: deleted once released (the request id may try again), `ok` once
-- confirmed, ordered or paid.
--
-- KEYS: sale, held, hold, holds, request (or any key of the stripe), legacy settled mark.
-- ARGV: to, from (comma-separated), quantity and member (for a missing record), missing, fix,
-- reservation id.
local to = ARGV[1]
local state = redis.call('HGET', KEYS[3], 'state')
local q = tonumber(redis.call('HGET', KEYS[3], 'q') or ARGV[3])
if not state then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
  local legacy = redis.call('GET', KEYS[6])
  if legacy then
    if legacy == 'paid' then state = 'paid' else state = 'released' end
  elseif ARGV[5] == 'adopt' then
    local answer = false
    if ARGV[6] == '1' then answer = redis.call('GET', KEYS[5]) end
    if answer and string.find(answer, ':' .. ARGV[7] .. ':', 1, true) then
      -- Reserved by the earlier scheme, which kept no record: its units were counted then
      -- (a Redis that lost the record would have lost this answer with it).
      state = 'held'
    elseif tonumber(redis.call('HGET', KEYS[1], 'remaining')) >= q then
      redis.call('HINCRBY', KEYS[1], 'remaining', -q)
      redis.call('HINCRBY', KEYS[1], 'reserved', q)
      redis.call('INCRBY', KEYS[2], q)
      redis.call('PEXPIREAT', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'end')) + 30 * 86400000)
      state = 'held'
    else
      state = 'released'
    end
  elseif ARGV[5] == 'assume' then
    state = 'ordered'
  else
    return {'unchanged', 'none'}
  end
  redis.call('HSET', KEYS[3], 'state', state, 'q', q, 'member', ARGV[4])
  redis.call('PEXPIREAT', KEYS[3], tonumber(redis.call('HGET', KEYS[1], 'end')) + 30 * 86400000)
end
local won = false
for from in string.gmatch(ARGV[2], '[^,]+') do
  if from == state then won = true end
end
if won then
  if (to == 'released' or to == 'paid') and redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
  if to == 'released' then
    redis.call('HINCRBY', KEYS[1], 'remaining', q)
    redis.call('HINCRBY', KEYS[1], 'reserved', -q)
    redis.call('DECRBY', KEYS[2], q)
  elseif to == 'paid' then
    redis.call('HINCRBY', KEYS[1], 'reserved', -q)
    redis.call('HINCRBY', KEYS[1], 'paid', q)
  end
  redis.call('HSET', KEYS[3], 'state', to)
  state = to
end
if state ~= 'held' then redis.call('ZREM', KEYS[4], ARGV[7]) end
if ARGV[6] == '1' then
  local answer = redis.call('GET', KEYS[5])
  local prefix = 'pending:' .. ARGV[7] .. ':'
  if answer and string.sub(answer, 1, #prefix) == prefix then
    if state == 'released' then
      redis.call('DEL', KEYS[5])
    elseif state ~= 'held' then
      redis.call('SET', KEYS[5], 'ok' .. string.sub(answer, 8), 'KEEPTTL')
    end
  end
end
if won then return {'changed', state} end
return {'unchanged', state}
