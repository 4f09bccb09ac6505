-- ARGV[3]: id, ARGV[4]: token, ARGV[5]: not-before (µs).
-- Returns 1, or 0 if the lease is not held.
local id = ARGV[3]
local key = jobprefix .. id
local now = now_us()
if not holds(key, ARGV[4], now) then
  return 0
end
redis.call('ZREM', leased, id)
redis.call('HDEL', key, 'tok', 'exp')
local job = redis.call('HMGET', key, 'prio', 'ten')
if place(id, key, tonumber(job[1]), tonumber(ARGV[5]), now, {}, job[2] or DEFAULT_TENANT) then
  redis.call('PUBLISH', wake, '')
end
return 1
