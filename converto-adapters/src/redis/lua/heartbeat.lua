-- ARGV[3]: id, ARGV[4]: token, ARGV[5]: lease length (µs).
-- Returns the new expiry, or 0 if the lease is not held.
local id = ARGV[3]
local key = jobprefix .. id
local now = now_us()
if not holds(key, ARGV[4], now) then
  return 0
end
local expires = now + tonumber(ARGV[5])
redis.call('HSET', key, 'exp', expires)
redis.call('ZADD', leased, expires, id)
return expires
