-- ARGV[3]: id. Removes the job whatever its state; returns 1 if there was one.
local id = ARGV[3]
local key = jobprefix .. id
local state = redis.call('HGET', key, 'state')
if not state then
  return 0
end
unindex(id, key, state)
redis.call('DEL', key)
return 1
