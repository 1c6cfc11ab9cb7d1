--[[ quotaflow scope script, part 1 of 5: the fast path (see the prelude for KEYS, ARGV, reply).

It runs first and, for "submit" and "flush", answers the uncontended case before any of the
full path's functions are created or the scope's state is decoded: nobody waits, nothing is
paused, no lease has expired, no calendar window has ended, and every limit named has room.
It then makes exactly the decision of the full path, which is the reference; anything else
falls through to the full path with nothing written. It sets no TTL: the full path gives every
key its TTL and keeps L and E from emptying (a sentinel member ""), so their TTLs persist, and
the fast path runs only before tdue, half a TTL after the full path last ran.

What it reads: the header field "h" of S, {nq, emin, tdue, kttl, nl} packed as doubles, where
nl is an upper bound of the leases in L (0: a lease id is in L only if it is in S), emin is a
lower bound of the earliest lease expiry (in E and of the leases kept in S, see below) and
tdue is when the full path must next refresh every key's TTL; and per limit the field
"b:<name>", that limit's changing numbers packed as doubles:
  k = 1 rolling window: cap, pu, fl, lg, fs, ts, ta, zl, w, per
  k = 2 calendar:       cap, pu, fl, cn, ws, we
  k = 3 other kinds (never fast)
"Fits" uses the window's logged total lg without dropping expired slots first: amounts only
come back over time, so a stale lg over-counts and a fit found with it is a fit (lower bound
of free room). Settled amounts of the newest slot accumulate in the tail (ts, ta) instead of
the log Z; a settle into an older slot, or a new slot while the log's front has expired, falls
through (the full path moves the tail into Z on load, so Z stays bounded: slots + 1 entries).

Leases it grants are fields "l:<id>" of S, cmsgpack {c, o, e} (cost, owner, expiry), so a
grant and the settle riding on it write S alone (one HDEL, one HSET). Their expiries count in
emin, so the full path runs when the earliest is due; on load it moves every such lease into L
and E, where the full path keeps leases (heartbeats, expiry, cancel), before anything reads
them. A settle finds its lease in S or L.
]]
-- effects replication (TIME before writes): the default since Redis 5, the only mode in 7
if not redis.REDIS_VERSION_NUM and redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local INF = math.huge
local EPS = 1e-9
local KS, KQ, KW, KT, KL, KE, KZ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now  -- the call's one clock reading (the fast path's, kept if it falls through)
local SETTLES = ARGV[3] or ''

local function fast()
  local op, ov, owner, ttl = string.match(ARGV[1], '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)')
  if op ~= 'submit' and op ~= 'flush' then return nil end
  -- one HMGET reads what the call needs: the header, the records of the limits the request
  -- names, the leases it settles and the field its own lease would take
  local fields, want = {'h'}, {}
  local id, req
  if op == 'submit' then
    -- id, priority, deadline, nowait, then n, n pairs (limit, amount), m, floors
    local rest
    id, rest = string.match(ARGV[2], '^([^\31]*)\31[^\31]*\31[^\31]*\31[^\31]*\31(.*)$')
    local it = string.gmatch(rest, '[^\31]+')
    req = {}
    for _ = 1, tonumber(it()) do
      local name, amount = it(), tonumber(it())
      if amount > 0 then
        req[#req + 1] = name
        req[#req + 1] = amount
        local f = 'b:' .. name
        if not want[f] then
          want[f] = true
          fields[#fields + 1] = f
        end
      end
    end
    fields[#fields + 1] = 'l:' .. id
  end
  local S, seen = {}, {}
  for s in string.gmatch(SETTLES, '[^\30]+') do
    local f = {}
    for x in string.gmatch(s, '[^\31]+') do f[#f + 1] = x end
    if not seen[f[1]] then
      seen[f[1]] = true
      S[#S + 1] = f
      fields[#fields + 1] = 'l:' .. f[1]
    end
  end
  local vals = redis.call('HMGET', KS, unpack(fields))
  local hdr = vals[1]
  if not hdr then return nil end
  local got = {}
  for i = 2, #fields do got[fields[i]] = vals[i] end
  if #hdr ~= 40 then return nil end  -- an older layout: the full path rewrites it
  local nq, emin, tdue, kttl, nl = struct.unpack('<ddddd', hdr)
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
      local raw = got['b:' .. name]
      if raw == nil then raw = redis.call('HGET', KS, 'b:' .. name) end
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
  local zadd, gone, goneh = {}, {}, {}
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
  -- settles first, as the full path applies them before the op; a lease is a field "l:<id>"
  -- of S (granted here) or an entry of L (granted by the full path, or moved there by it)
  for _, f in ipairs(S) do
    local lid = f[1]
    local raw = got['l:' .. lid]
    if raw then
      goneh[#goneh + 1] = 'l:' .. lid
    else
      raw = redis.call('HGET', KL, lid)
      if raw then gone[#gone + 1] = lid end
    end
    if raw then
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
  local reply = 'K'
  local hs = {}
  if op == 'submit' then
    for i = 1, #req, 2 do
      local r = rec(req[i])
      if r then
        local amount = req[i + 1]
        if r.k == 1 then
          if r.pu > now or r.lg + r.fl + amount > r.cap then return nil end
        elseif r.k == 2 then
          if now >= r.we or r.pu > now or r.cn + r.fl + amount > r.cap then return nil end
        else
          return nil
        end
      end
    end
    reply = 'G'
    -- a retry of a granted submit (its reply was lost) takes nothing more
    -- (a lease settled by this very call is gone)
    local held = not seen[id]
      and (got['l:' .. id] or (nl > 0 and redis.call('HEXISTS', KL, id) == 1))
    if not held then
      for i = 1, #req, 2 do
        local r = R[req[i]]
        if r then
          r.fl = r.fl + req[i + 1]
          dirty[req[i]] = r
        end
      end
      local exp = now + tonumber(ttl)
      hs[1] = 'l:' .. id
      hs[2] = cmsgpack.pack({c = req, o = owner, e = exp})
      if exp < emin then
        hs[3] = 'h'
        hs[4] = struct.pack('<ddddd', nq, exp, tdue, kttl, nl)
      end
    end
  end
  -- decided: write
  if #goneh > 0 then redis.call('HDEL', KS, unpack(goneh)) end
  if #gone > 0 then
    redis.call('HDEL', KL, unpack(gone))
    redis.call('ZREM', KE, unpack(gone))
  end
  if #zadd > 0 then
    redis.call('ZADD', KZ, unpack(zadd))
    redis.call('PEXPIRE', KZ, math.floor(kttl * 1000))
  end
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
