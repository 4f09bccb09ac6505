-- Shared by every queue script. KEYS: ready, delayed, leased, dead, seq, tenants, turns.
-- ARGV[1]: the prefix of the per-job hashes; ARGV[2]: the wake-up channel.
--
-- Each tenant's deliverable jobs are in the sorted set `ready .. ':' .. tenant`, whose scores
-- are all 0, so it orders its members lexicographically: 10 digits of inverted priority
-- (highest priority first), 16 digits of not-before in microseconds, 16 digits of enqueue
-- sequence, ':' and the id. `tenants` is the set of tenants with deliverable jobs, `turns` a
-- hash of each tenant's turn count (the fair order of `converto_core::queue`). `ready` itself
-- only holds jobs made ready before queues knew tenants: they move to the default tenant's set.
-- `delayed` is scored by not-before and `leased` by lease expiry, both in microseconds of the
-- server's clock (below 2^53, so Lua's doubles hold them exactly).
local ready, delayed, leased, dead, seqkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tenants, turns = KEYS[6], KEYS[7]
local jobprefix, wake = ARGV[1], ARGV[2]
-- The tenant of jobs stored without one.
local DEFAULT_TENANT = 'default'
-- Where the id starts in a ready member.
local ID_AT = 44
-- Due entries moved per call, so one script never blocks the server for long.
local PROMOTE_LIMIT = 1000

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The sorted set of a tenant's deliverable jobs.
local function ready_of(tenant)
  return ready .. ':' .. tenant
end

-- Adds a ready member to its tenant's set.
local function make_ready(member, tenant)
  redis.call('ZADD', ready_of(tenant), 0, member)
  redis.call('SADD', tenants, tenant)
end

-- Removes a ready member from its tenant's set (and the tenant from `tenants` once it has none).
local function unready(member, tenant)
  local set = ready_of(tenant)
  redis.call('ZREM', set, member)
  if redis.call('EXISTS', set) == 0 then
    redis.call('SREM', tenants, tenant)
  end
end

local function ready_member(priority, nb, seq, id)
  local at = nb
  if at < 0 then
    at = 0
  elseif at > 9007199254740991 then
    at = 9007199254740991
  end
  return string.format('%010d%016d%016d:%s', 2147483647 - priority, at, seq, id)
end

-- Makes the job deliverable at `nb`: ready now (in `tenant`'s set), or delayed until then, after
-- every job already placed with the same priority and not-before. `fields` are more hash fields
-- to set.
--
-- Returns whether waiting reservers must be woken. A reserver waits only after seeing `ready`
-- empty, with a timer for the earliest delayed job or lease; so only a job that makes `ready`
-- non-empty, or becomes the earliest delayed job, can be news to it. (This keeps a stream of
-- enqueues from publishing once per job.)
local function place(id, key, priority, nb, now, fields, tenant)
  local seq = redis.call('INCR', seqkey)
  local member = ready_member(priority, nb, seq, id)
  local wake_up
  if nb <= now then
    wake_up = redis.call('SCARD', tenants) == 0
    make_ready(member, tenant)
    fields[#fields + 1] = 'state'
    fields[#fields + 1] = 'r'
  else
    redis.call('ZADD', delayed, nb, id)
    wake_up = redis.call('ZRANGE', delayed, 0, 0)[1] == id
    fields[#fields + 1] = 'state'
    fields[#fields + 1] = 'd'
  end
  redis.call('HSET', key, 'nb', nb, 'seq', seq, 'rk', member, unpack(fields))
  return wake_up
end

-- A job's ready member and tenant (nil if its hash is gone).
local function ready_place(key)
  local job = redis.call('HMGET', key, 'rk', 'ten')
  return job[1], job[2] or DEFAULT_TENANT
end

-- Moves due delayed jobs and expired leases to their tenant's ready set, keeping their place in
-- the order; and jobs left in the pre-tenant `ready` set to the default tenant's.
local function promote(now)
  local old = redis.call('ZRANGE', ready, 0, PROMOTE_LIMIT - 1)
  if #old > 0 then
    for _, member in ipairs(old) do
      local _, tenant = ready_place(jobprefix .. string.sub(member, ID_AT))
      make_ready(member, tenant)
    end
    redis.call('ZREM', ready, unpack(old))
  end
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, PROMOTE_LIMIT)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed, id)
    local key = jobprefix .. id
    local member, tenant = ready_place(key)
    if member then
      make_ready(member, tenant)
      redis.call('HSET', key, 'state', 'r')
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, PROMOTE_LIMIT)
  for _, id in ipairs(expired) do
    redis.call('ZREM', leased, id)
    local key = jobprefix .. id
    local member, tenant = ready_place(key)
    if member then
      make_ready(member, tenant)
      redis.call('HSET', key, 'state', 'r')
      redis.call('HDEL', key, 'tok', 'exp')
    end
  end
end

-- Whether `token` holds a live lease on the job.
local function holds(key, token, now)
  local lease = redis.call('HMGET', key, 'state', 'tok', 'exp')
  return lease[1] == 'l' and lease[2] == token and tonumber(lease[3]) > now
end

-- Takes the job out of whichever index holds it.
local function unindex(id, key, state)
  if state == 'r' then
    local member, tenant = ready_place(key)
    unready(member, tenant)
    redis.call('ZREM', ready, member)
  elseif state == 'd' then
    redis.call('ZREM', delayed, id)
  elseif state == 'l' then
    redis.call('ZREM', leased, id)
  elseif state == 'x' then
    redis.call('SREM', dead, id)
  end
end
