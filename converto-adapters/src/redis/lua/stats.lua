-- Returns {ready, delayed, leased, dead}, after promoting what has come due.
promote(now_us())
local deliverable = redis.call('ZCARD', ready)
for _, tenant in ipairs(redis.call('SMEMBERS', tenants)) do
  deliverable = deliverable + redis.call('ZCARD', ready_of(tenant))
end
return {
  deliverable,
  redis.call('ZCARD', delayed),
  redis.call('ZCARD', leased),
  redis.call('SCARD', dead),
}
