-- ARGV[3]: id, ARGV[4]: priority, ARGV[5]: not-before (µs), ARGV[6]: deliveries already made,
-- ARGV[7]: tenant.
-- Returns 1 if the job was added, 0 if one exists for the id in any state.
local id = ARGV[3]
local key = jobprefix .. id
if redis.call('EXISTS', key) == 1 then
  return 0
end
local fields = {'prio', ARGV[4], 'dlv', ARGV[6], 'ten', ARGV[7]}
if place(id, key, tonumber(ARGV[4]), tonumber(ARGV[5]), now_us(), fields, ARGV[7]) then
  redis.call('PUBLISH', wake, '')
end
return 1
