-- Deletes every job in every state, and the sequence. Returns how many jobs there were.
local n = 0
for _, member in ipairs(redis.call('ZRANGE', ready, 0, -1)) do
  redis.call('DEL', jobprefix .. string.sub(member, ID_AT))
  n = n + 1
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
redis.call('DEL', ready, delayed, leased, dead, seqkey)
return n
