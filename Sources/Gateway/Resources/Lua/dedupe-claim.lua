-- Claims an event id before it is published (EventPublisher).
-- KEYS[1] fanflow:seen:<event id>; ARGV[1] the claiming request's token, ARGV[2] claim TTL (ms).
-- Replies 'new' (claimed now: publish it), 'done' (published and confirmed before: a retry) or
-- 'pending' (another request holds the claim right now).
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'new'
end
if v == 'done' then return 'done' end
return 'pending'
