-- Returns {ready, delayed, leased, dead}, after promoting what has come due.
promote(now_us())
return {
  redis.call('ZCARD', ready),
  redis.call('ZCARD', delayed),
  redis.call('ZCARD', leased),
  redis.call('SCARD', dead),
}
