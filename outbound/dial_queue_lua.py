"""The Lua scripts of the dial queue (outbound/dial_queue.py), one per step.

Every script gets the same KEYS (`_Common.keys` there) and starts with PRELUDE; each is
atomic in Redis, which is what keeps two dialer workers from leasing the same record.
Numbers that must stay exact (ordered scores) travel as strings and are never formatted by
Lua; clock() is the Redis server's time unless the caller passes one (tests).
"""

PRELUDE = """
local READY, TOP, LATER, META = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local SEQ, EXP, RECL, OWNER = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local FLAG, JOURNAL, NEW_READY, NEW_META = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local function clock(arg)
  if arg == nil or arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tonumber(arg)
end
-- While a rebuild runs, remember what changed: its swap keeps the live state of those.
local function touch(m)
  if redis.call('EXISTS', FLAG) == 1 then
    redis.call('SADD', JOURNAL, m)
    redis.call('PEXPIRE', JOURNAL, redis.call('PTTL', FLAG))
  end
end
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', LATER, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    redis.call('ZADD', READY, redis.call('HGET', META, m) or '0', m)
    redis.call('ZREM', LATER, m)
  end
end
local function to_top(m) redis.call('ZADD', TOP, redis.call('INCR', SEQ), m) end
local function section(m)
  if redis.call('HEXISTS', OWNER, m) == 1 then return 'leased' end
  if redis.call('ZSCORE', TOP, m) then return 'top' end
  if redis.call('ZSCORE', READY, m) then return 'queued' end
  if redis.call('ZSCORE', LATER, m) then return 'later' end
  return 'absent'
end
local function check(m, owner)
  local o = redis.call('HGET', OWNER, m)
  if o == owner then return 'ok' end
  if o then return 'other' end
  return section(m)
end
local function unlease(m) redis.call('HDEL', OWNER, m); redis.call('ZREM', EXP, m) end
"""

LUA = {
    "push": """
local now = clock(ARGV[1])
local out = {}
for i = 2, #ARGV, 3 do
  local m, score, due = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  touch(m)
  redis.call('HSET', META, m, score)
  local st = section(m)
  if st ~= 'leased' and st ~= 'top' then
    if due <= now then
      redis.call('ZREM', LATER, m); redis.call('ZADD', READY, score, m); st = 'queued'
    else
      redis.call('ZREM', READY, m); redis.call('ZADD', LATER, due, m); st = 'later'
    end
  end
  out[#out + 1] = st
end
return out
""",
    "push_top": """
local m = ARGV[1]
local st = section(m)
if st == 'leased' or st == 'top' then return st end
touch(m)
redis.call('ZREM', READY, m); redis.call('ZREM', LATER, m)
to_top(m)
return st
""",
    "lease": """
local now = clock(ARGV[3])
local m
local t = redis.call('ZPOPMIN', TOP)
if #t > 0 then m = t[1] else
  promote(now)
  local r = redis.call('ZPOPMIN', READY)
  if #r > 0 then m = r[1] end
end
if not m then return false end
redis.call('HSET', OWNER, m, ARGV[1])
redis.call('ZADD', EXP, now + tonumber(ARGV[2]), m)
return m
""",
    "renew": """
local st = check(ARGV[1], ARGV[2])
if st ~= 'ok' then return {st, ''} end
local exp = clock(ARGV[4]) + tonumber(ARGV[3])
redis.call('ZADD', EXP, exp, ARGV[1])
return {st, string.format('%.6f', exp)}
""",
    "settle": """
local m = ARGV[1]
local st = check(m, ARGV[2])
if st == 'ok' then
  unlease(m); redis.call('HDEL', META, m); redis.call('HDEL', RECL, m); touch(m)
end
return st
""",
    "release": """
local m = ARGV[1]
local st = check(m, ARGV[2])
if st ~= 'ok' then return st end
unlease(m); touch(m)
local score = redis.call('HGET', META, m)
if ARGV[3] == '1' or not score then to_top(m) else redis.call('ZADD', READY, score, m) end
return st
""",
    "reclaim": """
local now = clock(ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', EXP, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(gone) do
  unlease(m); to_top(m); redis.call('HINCRBY', RECL, m, 1); touch(m)
end
return gone
""",
    "remove": """
local m = ARGV[1]
local st = section(m)
redis.call('ZREM', READY, m); redis.call('ZREM', TOP, m); redis.call('ZREM', LATER, m)
unlease(m); redis.call('HDEL', META, m); redis.call('HDEL', RECL, m)
touch(m)
return st
""",
    "peek": """
promote(clock(ARGV[1]))
local n = tonumber(ARGV[2])
if n == 0 then return {{}, {}} end
local top = redis.call('ZRANGE', TOP, 0, n - 1)
local rest = {}
if #top < n then rest = redis.call('ZRANGE', READY, 0, n - #top - 1, 'WITHSCORES') end
return {top, rest}
""",
    "locate": """
local m = ARGV[2]
promote(clock(ARGV[1]))
local st = section(m)
local pos = -1
if st == 'top' then pos = redis.call('ZRANK', TOP, m)
elseif st == 'queued' then pos = redis.call('ZCARD', TOP) + redis.call('ZRANK', READY, m) end
return {st, pos, redis.call('HGET', OWNER, m) or '', redis.call('ZSCORE', EXP, m) or '',
        redis.call('HGET', RECL, m) or '0', redis.call('ZSCORE', LATER, m) or ''}
""",
    "depth": """
local now = clock(ARGV[1])
local later = redis.call('ZCOUNT', LATER, '(' .. string.format('%.6f', now), '+inf')
return {redis.call('ZCARD', TOP), redis.call('ZCARD', READY) + redis.call('ZCARD', LATER) - later,
        later, redis.call('HLEN', OWNER)}
""",
    "swap": """
if redis.call('GET', FLAG) ~= ARGV[1] then return {-1} end
local function keep_meta(m)
  if redis.call('HEXISTS', NEW_META, m) == 0 then
    local s = redis.call('HGET', META, m)
    if s then redis.call('HSET', NEW_META, m, s) end
  end
end
for _, m in ipairs(redis.call('HKEYS', OWNER)) do redis.call('ZREM', NEW_READY, m); keep_meta(m) end
local journaled, later = {}, {}
for _, m in ipairs(redis.call('SMEMBERS', JOURNAL)) do
  journaled[m] = true
  local s = redis.call('ZSCORE', READY, m)
  if s then redis.call('ZADD', NEW_READY, s, m) else redis.call('ZREM', NEW_READY, m) end
  local d = redis.call('ZSCORE', LATER, m)
  if d then later[#later + 1] = d; later[#later + 1] = m end
  local live = redis.call('HGET', META, m)
  if live then redis.call('HSET', NEW_META, m, live) else redis.call('HDEL', NEW_META, m) end
end
local dropped = 0
for _, m in ipairs(redis.call('ZRANGE', TOP, 0, -1)) do
  if journaled[m] or redis.call('ZSCORE', NEW_READY, m) then
    redis.call('ZREM', NEW_READY, m); keep_meta(m)
  else
    redis.call('ZREM', TOP, m); redis.call('HDEL', RECL, m); dropped = dropped + 1
  end
end
redis.call('DEL', LATER)
for i = 1, #later, 2 do redis.call('ZADD', LATER, later[i], later[i + 1]) end
for _, pair in ipairs({{NEW_READY, READY}, {NEW_META, META}}) do
  if redis.call('EXISTS', pair[1]) == 1 then
    redis.call('RENAME', pair[1], pair[2]); redis.call('PERSIST', pair[2])
  else redis.call('DEL', pair[2]) end
end
redis.call('DEL', FLAG, JOURNAL)
return {redis.call('ZCARD', READY), redis.call('ZCARD', TOP), dropped,
        redis.call('HLEN', OWNER), redis.call('ZCARD', LATER)}
""",
}
