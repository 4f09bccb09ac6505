-- ARGV[3]: lease length (µs); ARGV[4..]: one fresh token per job wanted.
-- Returns {now, lease expiry, µs until the next delayed job or lease comes due (-1: none),
-- {{id, deliveries, priority, token}, ...}}.
local now = now_us()
promote(now)
local expires = now + tonumber(ARGV[3])
local out = {}
local scored = {}
local popped = redis.call('ZPOPMIN', ready, #ARGV - 3)
for i = 1, #popped, 2 do
  local id = string.sub(popped[i], ID_AT)
  local key = jobprefix .. id
  local job = redis.call('HMGET', key, 'prio', 'dlv')
  -- A member whose hash is gone (deleted behind our back) is dropped, not delivered.
  if job[1] then
    local token = ARGV[3 + #out + 1]
    local deliveries = tonumber(job[2]) + 1
    redis.call('HSET', key, 'state', 'l', 'tok', token, 'exp', expires, 'dlv', deliveries)
    scored[#scored + 1] = expires
    scored[#scored + 1] = id
    out[#out + 1] = {id, deliveries, job[1], token}
  end
end
if #scored > 0 then
  redis.call('ZADD', leased, unpack(scored))
end
local next_due = -1
local first_delayed = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local first_lease = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')
for _, first in ipairs({first_delayed, first_lease}) do
  if first[2] then
    local due = tonumber(first[2]) - now
    if due < 0 then
      due = 0
    end
    if next_due < 0 or due < next_due then
      next_due = due
    end
  end
end
return {now, expires, next_due, out}
