-- Releases the counter-rebuild lock only if it is still the caller's: a rebuild that outlived the
-- lock's expiry must not delete the lock another worker took since.
-- KEYS[1]: the lock. ARGV[1]: the owner token given to SET NX PX.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
