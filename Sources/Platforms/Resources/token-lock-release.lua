-- token-lock-release.lua: AccessTokenBroker's refresh lock (Sources/Platforms/AccessTokenBroker.swift).
-- Releases the lock only if it is still the caller's: a refresh that outlived the lock's expiry
-- must not delete the lock another worker took since.
-- KEYS[1]: the lock. ARGV[1]: the owner token given to SET NX PX. Returns 1 (released) or 0 (not
-- the caller's any more).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
