-- ARGV[3..]: pairs of id and token. Removes each job whose lease is held.
-- Returns one 1 (acked) or 0 (lease lost) per pair.
local now = now_us()
local out = {}
local ids = {}
local keys = {}
local seen = {}
for i = 3, #ARGV - 1, 2 do
  local id = ARGV[i]
  local key = jobprefix .. id
  -- The same lease twice in one call: the second finds it gone, as a second ack would.
  if not seen[id] and holds(key, ARGV[i + 1], now) then
    seen[id] = true
    ids[#ids + 1] = id
    keys[#keys + 1] = key
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #ids > 0 then
  redis.call('ZREM', leased, unpack(ids))
  redis.call('DEL', unpack(keys))
end
return out
