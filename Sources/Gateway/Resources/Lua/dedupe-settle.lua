-- Settles a claim after the publish (EventPublisher): only the request holding the claim may.
-- KEYS[1] fanflow:seen:<event id>; ARGV[1] the claim's token; ARGV[2] 'done' (confirmed: remember
-- it for ARGV[3] ms so a platform's retry is recognized) or 'release' (not confirmed: let the retry
-- publish). Replies 1 when settled, 0 when the claim was no longer this request's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
