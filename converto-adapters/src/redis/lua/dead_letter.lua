-- ARGV[3]: id, ARGV[4]: token, ARGV[5]: error code, ARGV[6]: error message.
-- Returns 1, or 0 if the lease is not held.
local id = ARGV[3]
local key = jobprefix .. id
if not holds(key, ARGV[4], now_us()) then
  return 0
end
redis.call('ZREM', leased, id)
redis.call('HDEL', key, 'tok', 'exp')
redis.call('HSET', key, 'state', 'x', 'error_code', ARGV[5], 'error_message', ARGV[6])
redis.call('SADD', dead, id)
return 1
