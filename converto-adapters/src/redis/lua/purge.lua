-- Deletes every job in every state, and the sequence. Returns how many jobs there were.
local n = 0
local sets = {ready}
for _, tenant in ipairs(redis.call('SMEMBERS', tenants)) do
  sets[#sets + 1] = ready_of(tenant)
end
for _, set in ipairs(sets) do
  for _, member in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    redis.call('DEL', jobprefix .. string.sub(member, ID_AT))
    n = n + 1
  end
  redis.call('DEL', set)
end
for _, set in ipairs({delayed, leased}) do
  for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    redis.call('DEL', jobprefix .. id)
    n = n + 1
  end
end
for _, id in ipairs(redis.call('SMEMBERS', dead)) do
  redis.call('DEL', jobprefix .. id)
  n = n + 1
end
redis.call('DEL', delayed, leased, dead, seqkey, tenants, turns)
return n
