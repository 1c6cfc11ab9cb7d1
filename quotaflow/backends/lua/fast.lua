--[[ quotaflow scope script, part 1 of 5: the fast path (see the prelude for KEYS, ARGV, reply).

It runs first and, for "submit" and "flush", answers the uncontended case before any of the
full path's functions are created or the scope's state is decoded: nobody waits, nothing is
paused, no lease has expired, no calendar window has ended, and every limit named has room.
It then makes exactly the decision of the full path, which is the reference; anything else
falls through to the full path with nothing written. It sets no TTL: the full path gives every
key its TTL and keeps L and E from emptying (a sentinel member ""), so their TTLs persist, and
the fast path runs only before tdue, half a TTL after the full path last ran.

What it reads: the header field "h" of S, {nq, emin, tdue, kttl} packed as doubles, where
emin is a lower bound of the earliest lease expiry in E and tdue is when the full path must
next refresh every key's TTL; and per limit the field "b:<name>", that limit's changing
numbers packed as doubles:
  k = 1 rolling window: cap, pu, fl, lg, fs, ts, ta, zl, w, per
  k = 2 calendar:       cap, pu, fl, cn, ws, we
  k = 3 other kinds (never fast)
"Fits" uses the window's logged total lg without dropping expired slots first: amounts only
come back over time, so a stale lg over-counts and a fit found with it is a fit (lower bound
of free room). Settled amounts of the newest slot accumulate in the tail (ts, ta) instead of
the log Z; a settle into an older slot, or a new slot while the log's front has expired, falls
through (the full path moves the tail into Z on load, so Z stays bounded: slots + 1 entries).
]]
if redis.replicate_commands then pcall(redis.replicate_commands) end

local INF = math.huge
local EPS = 1e-9
local KS, KQ, KW, KT, KL, KE, KZ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now  -- the call's one clock reading (the fast path's, kept if it falls through)
local SETTLES = ARGV[3] or ''

local function fast()
  local op, ov, owner, ttl = string.match(ARGV[1], '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)')
  if op ~= 'submit' and op ~= 'flush' then return nil end
  local hdr = redis.call('HGET', KS, 'h')
  if not hdr then return nil end
  local nq, emin, tdue, kttl = struct.unpack('<dddd', hdr)
  if ov ~= '' then
    now = tonumber(ov)
  else
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  if nq ~= 0 or now >= emin or now >= tdue then return nil end
  local R, dirty = {}, {}
  local function rec(name)
    local r = R[name]
    if r == nil then
      r = false
      local raw = redis.call('HGET', KS, 'b:' .. name)
      if raw then
        local k = struct.unpack('<d', raw)
        if k == 1 then
          local _, cap, pu, fl, lg, fs, ts, ta, zl, w, per =
            struct.unpack('<ddddddddddd', raw)
          r = {k = 1, cap = cap, pu = pu, fl = fl, lg = lg, fs = fs, ts = ts, ta = ta,
               zl = zl, w = w, per = per}
        elseif k == 2 then
          local _, cap, pu, fl, cn, ws, we = struct.unpack('<ddddddd', raw)
          r = {k = 2, cap = cap, pu = pu, fl = fl, cn = cn, ws = ws, we = we}
        else
          r = {k = 3}
        end
      end
      R[name] = r
    end
    return r
  end
  local zadd, gone, seen = {}, {}, {}
  -- Bucket.settle on a record (kinds 1 and 2); false: the full path must do it
  local function settle(name, amount, real, at)
    local r = rec(name)
    if not r then return true end
    if r.k == 3 then return false end
    if r.k == 1 then
      r.fl = math.max(0, r.fl - amount)
      local slot = math.floor(at / r.w + EPS)
      if real ~= 0 and (slot + 1) * r.w + r.per > now + EPS then
        if slot == r.ts then
          local applied = math.max(real, -r.ta)
          r.ta = r.ta + applied
          r.lg = r.lg + applied
        elseif slot > r.ts and slot > r.zl then
          if real > 0 then
            if r.ts ~= -INF then
              if (r.fs + 1) * r.w + r.per <= now + EPS then return false end
              zadd[#zadd + 1] = 0
              zadd[#zadd + 1] = name .. '\0' .. string.format('%020d', r.ts) .. '\0'
                .. string.format('%d', r.ta)
              r.zl = r.ts
            end
            r.ts, r.ta, r.lg = slot, real, r.lg + real
            if r.fs == -INF then r.fs = slot end
          end
        else
          return false  -- an older slot: the log in Z
        end
      end
    else
      if now >= r.we then return false end
      r.fl = math.max(0, r.fl - amount)
      if at >= r.ws then
        r.cn = math.max(0, r.cn + amount)
        if real ~= amount then r.cn = math.max(0, r.cn + real - amount) end
      end
    end
    dirty[name] = r
    return true
  end
  -- settles first, as the full path applies them before the op
  for s in string.gmatch(SETTLES, '[^\30]+') do
    local f = {}
    for x in string.gmatch(s, '[^\31]+') do f[#f + 1] = x end
    local id = f[1]
    if not seen[id] then
      seen[id] = true
      local raw = redis.call('HGET', KL, id)
      if raw then
        gone[#gone + 1] = id
        local at = tonumber(string.sub(f[2], 2))
        if string.sub(f[2], 1, 1) == 'r' then at = now + at end
        local actual = nil
        if f[3] ~= '-1' then
          actual = {}
          for i = 4, #f, 2 do actual[f[i]] = tonumber(f[i + 1]) end
        end
        local c = cmsgpack.unpack(raw).c
        local held = {}
        for i = 1, #c, 2 do
          local name, amount = c[i], c[i + 1]
          held[name] = true
          local real = amount
          if actual and actual[name] ~= nil then real = actual[name] end
          if not settle(name, amount, real, at) then return nil end
        end
        if actual then  -- usage that was not estimated (0 reserved) still counts
          for name, real in pairs(actual) do
            if real > 0 and not held[name] and not settle(name, 0, real, at) then
              return nil
            end
          end
        end
      end
    end
  end
  local reply = 'K'
  local lease, id, cost
  if op == 'submit' then
    -- id, priority, deadline, nowait, then n, n pairs (limit, amount), m, floors
    local rest
    id, rest = string.match(ARGV[2], '^([^\31]*)\31[^\31]*\31[^\31]*\31[^\31]*\31(.*)$')
    local it = string.gmatch(rest, '[^\31]+')
    local n = tonumber(it())
    cost = {}
    for _ = 1, n do
      local name, amount = it(), tonumber(it())
      if amount > 0 then
        local r = rec(name)
        if r then
          if r.k == 1 then
            if r.pu > now or r.lg + r.fl + amount > r.cap then return nil end
          elseif r.k == 2 then
            if now >= r.we or r.pu > now or r.cn + r.fl + amount > r.cap then return nil end
          else
            return nil
          end
        end
        cost[#cost + 1] = name
        cost[#cost + 1] = amount
      end
    end
    reply = 'G'
    lease = cmsgpack.pack({c = cost, o = owner})
  end
  -- decided: write
  local px = math.floor(kttl * 1000)
  if #gone > 0 then
    redis.call('HDEL', KL, unpack(gone))
    redis.call('ZREM', KE, unpack(gone))
  end
  if lease and redis.call('HSETNX', KL, id, lease) == 1 then
    for i = 1, #cost, 2 do
      local r = R[cost[i]]
      if r then
        r.fl = r.fl + cost[i + 1]
        dirty[cost[i]] = r
      end
    end
    local exp = now + tonumber(ttl)
    redis.call('ZADD', KE, string.format('%.17g', exp), id)
    if exp < emin then
      redis.call('HSET', KS, 'h', struct.pack('<dddd', nq, exp, tdue, kttl))
    end
  end
  if #zadd > 0 then
    redis.call('ZADD', KZ, unpack(zadd))
    redis.call('PEXPIRE', KZ, px)
  end
  local hs = {}
  for name, r in pairs(dirty) do
    hs[#hs + 1] = 'b:' .. name
    if r.k == 1 then
      hs[#hs + 1] = struct.pack('<ddddddddddd', 1, r.cap, r.pu, r.fl, r.lg, r.fs, r.ts, r.ta,
                                r.zl, r.w, r.per)
    else
      hs[#hs + 1] = struct.pack('<ddddddd', 2, r.cap, r.pu, r.fl, r.cn, r.ws, r.we)
    end
  end
  if #hs > 0 then redis.call('HSET', KS, unpack(hs)) end
  return reply .. string.format('%.17g', now)
end

do
  local r = fast()
  if r then return r end
end
