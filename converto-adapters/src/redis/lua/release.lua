-- ARGV[3]: id, ARGV[4]: token.
-- Hands the delivery back uncounted: the job is ready again in its old place (its ready member,
-- kept in the hash, holds its priority, not-before and sequence). Returns 1, or 0 if the lease
-- is not held.
local id = ARGV[3]
local key = jobprefix .. id
local now = now_us()
if not holds(key, ARGV[4], now) then
  return 0
end
redis.call('ZREM', leased, id)
redis.call('HDEL', key, 'tok', 'exp')
local member, tenant = ready_place(key)
local deliveries = tonumber(redis.call('HGET', key, 'dlv') or '1') - 1
if deliveries < 0 then
  deliveries = 0
end
make_ready(member, tenant)
redis.call('HSET', key, 'state', 'r', 'dlv', deliveries)
-- Always news: a reserver may wait while other tenants' jobs are ready but skipped.
redis.call('PUBLISH', wake, '')
return 1
