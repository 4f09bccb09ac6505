-- ARGV[3]: lease length (µs); ARGV[4]: how many tenants to skip, k; ARGV[5 .. 4 + k]: those
-- tenants (their jobs stay where they are); ARGV[5 + k ..]: one fresh token per job wanted.
-- Returns {now, lease expiry, µs until the next delayed job or lease comes due (-1: none),
-- {{id, deliveries, priority, token}, ...}}, the jobs in the fair order of
-- `converto_core::queue`: tenants take turns; within a tenant, by ready member.
local now = now_us()
promote(now)
local expires = now + tonumber(ARGV[3])
local skipped = tonumber(ARGV[4])
local tokens_at = 4 + skipped
local want = #ARGV - tokens_at
local skip = {}
for i = 5, tokens_at do
  skip[ARGV[i]] = true
end
local active = {}
for _, tenant in ipairs(redis.call('SMEMBERS', tenants)) do
  if not skip[tenant] then
    active[#active + 1] = tenant
  end
end
local counts = {}
local highest = 0
for i, tenant in ipairs(active) do
  counts[i] = tonumber(redis.call('HGET', turns, tenant) or '0')
  if counts[i] > highest then
    highest = counts[i]
  end
end
-- Each tenant's first `want` jobs, each with the turn it would be delivered in.
local candidates = {}
for i, tenant in ipairs(active) do
  local first = math.max(counts[i], highest - 1)
  for k, member in ipairs(redis.call('ZRANGE', ready_of(tenant), 0, want - 1)) do
    candidates[#candidates + 1] = {first + k - 1, member, tenant}
  end
end
-- By turn, then member (priority, not-before, sequence: members are unique).
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then
    return a[1] < b[1]
  end
  return a[2] < b[2]
end)
local out = {}
local scored = {}
local taken = {}
local last_turn = {}
for i = 1, math.min(want, #candidates) do
  local turn, member, tenant = candidates[i][1], candidates[i][2], candidates[i][3]
  -- A tenant's picks are the first of its set (its turns rise with its order): counted, then
  -- removed in one call below.
  taken[tenant] = (taken[tenant] or 0) + 1
  last_turn[tenant] = turn
  local id = string.sub(member, ID_AT)
  local key = jobprefix .. id
  local job = redis.call('HMGET', key, 'prio', 'dlv')
  -- A member whose hash is gone (deleted behind our back) is dropped, not delivered.
  if job[1] then
    local token = ARGV[tokens_at + #out + 1]
    local deliveries = tonumber(job[2]) + 1
    redis.call('HSET', key, 'state', 'l', 'tok', token, 'exp', expires, 'dlv', deliveries)
    scored[#scored + 1] = expires
    scored[#scored + 1] = id
    out[#out + 1] = {id, deliveries, job[1], token}
  end
end
for tenant, n in pairs(taken) do
  local set = ready_of(tenant)
  redis.call('ZREMRANGEBYRANK', set, 0, n - 1)
  if redis.call('EXISTS', set) == 0 then
    redis.call('SREM', tenants, tenant)
  end
  -- Counts move only when tenants shared the reserve.
  if #active > 1 then
    redis.call('HSET', turns, tenant, last_turn[tenant] + 1)
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
