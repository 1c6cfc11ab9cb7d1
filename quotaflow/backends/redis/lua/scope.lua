--[[ quotaflow scope script, part 5 of 5: the rules of one scope (port of quotaflow/scheduler/scope.py)
and the entry point. See the prelude for KEYS, ARGV and the reply.

Beyond the reference, every call first drops expired tickets (their process stopped
refreshing them) and anchors expired leases at their expiry (a process died holding them: the
amounts come back one period later, never later than that).
]]
local DEC = {}  -- decisions taken in this call, in order

local function dec(id, outcome, at, dim, reason, req, lim)
  return {id = id, o = outcome, at = at, dim = dim or '', rs = reason or '', rq = req or 0,
          lm = lim or 0}
end

-- ScopeState._fit: {at, strict, dim, ref, req, lim}
local function fit(cost)
  local at, strict, dim = now, now, ''
  for i = 1, #cost, 2 do
    local name, amount = cost[i], cost[i + 1]
    local b = ST.b[name]
    if amount > 0 and b then
      if amount > b.cap then
        return {at = INF, strict = INF, dim = name, ref = 'cannot_fit', req = amount, lim = b.cap}
      end
      local t = B.earliest(b, name, amount, false)
      if t > now and b.ff and B.exhausted(b, name, amount) then
        return {at = t, strict = t, dim = name, ref = 'exhausted', req = amount, lim = b.cap}
      end
      if t > at then at, dim = t, name end
      strict = math.max(strict, B.earliest(b, name, amount, true))
    end
  end
  return {at = at, strict = strict, dim = dim}
end

local function refused(id, f, reason)
  local at = f.at
  if at == INF then at = nil end
  return dec(id, 'refused', at, f.dim, reason or f.ref, f.req, f.lim)
end

local function take(cost)
  for i = 1, #cost, 2 do
    local b = ST.b[cost[i]]
    if b and cost[i + 1] > 0 then B.take(b, cost[i + 1]) end
  end
end

local function untake(cost)
  for i = 1, #cost, 2 do
    local b = ST.b[cost[i]]
    if b and cost[i + 1] > 0 then B.release(b, cost[i + 1]) end
  end
end

local function lease_put(id, cost, owner)
  redis.call('HSET', KL, id, cmsgpack.pack({c = cost, o = owner}))
  redis.call('ZADD', KE, f17(now + TTL), id)
  touch(KL); touch(KE)
end

local function lease_pop(id)
  local raw = redis.call('HGET', KL, id)
  if not raw then return nil end
  redis.call('HDEL', KL, id)
  redis.call('ZREM', KE, id)
  return cmsgpack.unpack(raw)
end

local function grant(w)
  take(w.c)
  lease_put(w.id, w.c, w.o)
end

local function fits_now(cost)
  for i = 1, #cost, 2 do
    local b = ST.b[cost[i]]
    if b and not B.fits_now(b, cost[i], cost[i + 1]) then return false end
  end
  return true
end

-- ScopeState._below_floors
local function below_floors(floors, cost)
  for i = 1, #floors, 2 do
    local b = ST.b[floors[i]]
    if not b then return false end
    local want = 0
    for j = 1, #cost, 2 do
      if cost[j] == floors[i] then want = cost[j + 1] end
    end
    if B.level(b, floors[i])[2] + want > floors[i + 1] then return false end
  end
  return true
end

-- ScopeState._serve_floors: an agent below its floor is served before the line, if its oldest
-- request fits. ST.fl[key] = {{id, floors}, ...} per agent; ST.flk = keys in insertion order.
local function serve_floors(out)
  local keep = {}
  for _, key in ipairs(ST.flk) do
    local line = ST.fl[key]
    local i = 1
    while line[i] do
      local w = Qu.get(line[i][1])
      if w then
        if not below_floors(line[i][2], w.c) or not fits_now(w.c) then break end
        Qu.remove(w.id)
        grant(w)
        out[#out + 1] = dec(w.id, 'granted', now)
      end
      i = i + 1
    end
    local rest = {}
    for j = i, #line do rest[#rest + 1] = line[j] end
    if #rest == 0 then
      ST.fl[key] = nil
    else
      ST.fl[key] = rest
      keep[#keep + 1] = key
    end
  end
  ST.flk = keep
end

-- conservative backfilling within depth: a waiter may start now only if it fits now and no
-- waiter ahead of it (the head included) would start later for it
local function backfill(head, hf, out)
  if ST.depth <= 0 then return end
  local ahead = {{head, hf.at}}
  for _, cand in ipairs(Qu.range(1, ST.depth)) do
    local f = fit(cand.c)
    if f.ref then
      Qu.remove(cand.id)
      out[#out + 1] = refused(cand.id, f)
    elseif f.at > now then
      ahead[#ahead + 1] = {cand, f.at}
    else
      take(cand.c)
      local ok = true
      for _, a in ipairs(ahead) do
        -- a waiter ahead with no computed start (blocked on a concurrency limit) is never
        -- passed: nothing says the passer would not delay it
        if a[2] == INF or fit(a[1].c).strict > a[2] + 1e-9 then
          ok = false
          break
        end
      end
      if ok then
        Qu.remove(cand.id)
        lease_put(cand.id, cand.c, cand.o)
        out[#out + 1] = dec(cand.id, 'granted', now)
      else
        untake(cand.c)
        ahead[#ahead + 1] = {cand, now}
      end
    end
  end
end

local function dispatch(out)
  local head, hf
  if #ST.flk > 0 then serve_floors(out) end
  while true do
    head = Qu.head()
    if not head then
      ST.hid, ST.hat = false, false
      return out
    end
    hf = fit(head.c)
    if hf.ref then
      Qu.remove(head.id)
      out[#out + 1] = refused(head.id, hf)
    elseif hf.at <= now then
      Qu.remove(head.id)
      grant(head)
      out[#out + 1] = dec(head.id, 'granted', now)
    elseif head.d and head.d < hf.at and hf.at < INF then
      Qu.remove(head.id)
      out[#out + 1] = refused(head.id, hf, 'timeout')
    else
      break
    end
  end
  if ST.rescan then
    ST.rescan = false
    backfill(head, hf, out)
  end
  if ST.hid ~= head.id or ST.hat ~= hf.at then
    if ST.hid and ST.hid ~= head.id and Qu.get(ST.hid) then
      out[#out + 1] = dec(ST.hid, 'waiting', nil)  -- displaced: drop its timer
    end
    ST.hid, ST.hat = head.id, hf.at
    local at = hf.at
    if at == INF then at = nil end
    out[#out + 1] = dec(head.id, 'waiting', at, hf.dim)
  end
  return out
end

local function settle_lease(lease, actual, at)
  local c = lease.c
  for i = 1, #c, 2 do
    local name, amount = c[i], c[i + 1]
    local b = ST.b[name]
    if b then
      local real = amount
      if actual and actual[name] ~= nil then real = actual[name] end
      B.settle(b, name, amount, real, at)
      if real < amount or b.t == 'x' then ST.rescan = true end
    end
  end
  if actual then  -- usage that was not estimated (0 reserved) still counts
    local held = {}
    for i = 1, #c, 2 do held[c[i]] = true end
    for name, real in pairs(actual) do
      local b = ST.b[name]
      if real > 0 and not held[name] and b then B.settle(b, name, 0, real, at) end
    end
  end
end

-- drop tickets and anchor leases whose owners stopped refreshing them
local function purge()
  local changed = false
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KT, '-inf', f17(now), 'LIMIT', 0, 256)) do
    if Qu.remove(id) then
      if ST.hid == id then ST.hid, ST.hat = false, false end
      ST.rescan = true
      changed = true
    else
      redis.call('ZREM', KT, id)
    end
  end
  -- a lease's expiry is its owner's last sign of life + the owner's TTL (>= ST.mttl); the
  -- owner sends a call only within half its TTL of a sign of life (later it asks again), so
  -- the server counted every call of the lease by expiry - mttl / 2: anchored there, its
  -- amounts come back one period later
  local back = (ST.mttl or TTL) / 2
  local r = redis.call('ZRANGEBYSCORE', KE, '-inf', f17(now), 'WITHSCORES', 'LIMIT', 0, 256)
  for i = 1, #r, 2 do
    local lease = lease_pop(r[i])
    if lease then settle_lease(lease, nil, math.min(tonumber(r[i + 1]) - back, now)) end
    changed = true
  end
  return changed
end

local function pairs_from(first, n)  -- {name, amount, ...} from A[first..]
  local out = {}
  for i = first, first + 2 * n - 1, 2 do
    out[#out + 1] = A[i]
    out[#out + 1] = tonumber(A[i + 1])
  end
  return out
end

-- "<limit>\31<amount>\31..." -> {limit, amount, ...}, amounts > 0 only
local function parse_cost(text)
  local cost = {}
  for name, amount in string.gmatch(text, '([^\31]*)\31([^\31]*)\31') do
    amount = tonumber(amount)
    if amount > 0 then
      cost[#cost + 1] = name
      cost[#cost + 1] = amount
    end
  end
  return cost
end

local OPS = {}

function OPS.submit()
  -- A: id, priority, deadline, nowait, m, m pairs (limit, floor); the cost is ARGV[3]
  local id, prio, deadline, nowait = A[1], tonumber(A[2]), tm(A[3]), A[4] == '1'
  local floors = pairs_from(6, tonumber(A[5]))
  local cost = parse_cost(ARGV[3] or '')
  if Qu.get(id) then  -- a retry of a submit whose reply was lost
    local at = nil
    if ST.hid == id and ST.hat ~= INF then at = ST.hat end
    return dec(id, 'waiting', at)
  end
  if redis.call('HEXISTS', KL, id) == 1 then  -- granted before: a lost reply, or a re-check
    redis.call('ZADD', KE, 'XX', f17(now + TTL), id)
    return dec(id, 'granted', now)
  end
  if ST.nq == 0 and fits_now(cost) then  -- the fast path: nobody waits and all fit
    take(cost)
    lease_put(id, cost, OWNER)
    return dec(id, 'granted', now)
  end
  local f = fit(cost)
  if f.ref then return refused(id, f) end
  if deadline and deadline < f.at and f.at < INF then return refused(id, f, 'timeout') end
  Qu.push(id, cost, prio, now, deadline, OWNER)
  if #floors > 0 then
    local names = {}
    for i = 1, #floors, 2 do names[#names + 1] = floors[i] end
    table.sort(names)
    local key = table.concat(names, '\0')
    local line = ST.fl[key]
    if not line then
      line = {}
      ST.fl[key] = line
      ST.flk[#ST.flk + 1] = key
    end
    line[#line + 1] = {id, floors}
  end
  ST.rescan = true
  local out = dispatch({})
  local mine
  for _, d in ipairs(out) do
    if d.id == id and not mine then mine = d else DEC[#DEC + 1] = d end
  end
  if not mine then mine = dec(id, 'waiting', nil, f.dim) end
  if mine.o == 'waiting' and nowait then
    Qu.remove(id)
    local at = mine.at
    if at == nil and f.at > now then at = f.at end
    ST.rescan = true  -- its scan may have blocked others behind it
    if ST.hid == id then
      ST.hid, ST.hat = false, false
      dispatch(DEC)
    end
    return dec(id, 'refused', at, mine.dim, 'nowait')
  end
  return mine
end

function OPS.dispatch()
  ST.rescan = true  -- a timer fired: room may have returned
  dispatch(DEC)
end

function OPS.cancel()
  local id = A[1]
  if redis.call('HEXISTS', KL, id) == 1 then  -- granted before: a lost reply, or a re-check
    redis.call('ZADD', KE, 'XX', f17(now + TTL), id)
    return dec(id, 'granted', now)
  end
  if not Qu.remove(id) then return nil end
  if ST.hid == id then ST.hid, ST.hat = false, false end
  ST.rescan = true
  dispatch(DEC)
  return nil
end

-- one settle of ARGV[5..]: fields id, at, n, n pairs (limit, real amount)
local function settle_one(f)
  local lease = lease_pop(f[1])
  if not lease then return end
  local actual = nil
  local n = tonumber(f[3])
  if n >= 0 then
    actual = {}
    for i = 4, 3 + 2 * n, 2 do actual[f[i]] = tonumber(f[i + 1]) end
  end
  settle_lease(lease, actual, tm(f[2]))
  if ST.nq > 0 then dispatch(DEC) end
end

function OPS.flush() end  -- the settles of ARGV[5..] are applied before every op

function OPS.release()
  local lease = lease_pop(A[1])
  if not lease then return nil end
  untake(lease.c)
  ST.rescan = true
  if ST.nq > 0 then dispatch(DEC) end
end

function OPS.pause()
  local b = ST.b[A[1]]
  if not b then return nil, 'nolimit' end
  B.pause(b, tm(A[2]))
  ST.rescan = true
  ST.hid, ST.hat = false, false
  dispatch(DEC)
end

function OPS.exhaust()
  local b = ST.b[A[1]]
  if not b then return nil, 'nolimit' end
  local resets = nil
  if b.t == 'c' then
    B.pause(b, b.we)
    resets = f17(b.we)
  end
  ST.rescan = true
  ST.hid, ST.hat = false, false
  dispatch(DEC)
  return resets
end

function OPS.status()
  local out = {}
  for _, name in ipairs(ST.names) do
    local lv = B.level(ST.b[name], name)
    table.insert(lv, 1, name)
    out[#out + 1] = lv
  end
  return out
end

function OPS.waiting() return ST.nq end

-- refresh this owner's tickets and leases; report what became of each
function OPS.beat()
  local nt = tonumber(A[1])
  local out = {}
  for i = 2, nt + 1 do
    local id = A[i]
    if Qu.get(id) then
      redis.call('ZADD', KT, 'XX', f17(now + TTL), id)
      if ST.hid == id then out[#out + 1] = {id, 'h', f17(ST.hat)} else out[#out + 1] = {id, 'q', ''} end
    elseif redis.call('HEXISTS', KL, id) == 1 then
      out[#out + 1] = {id, 'g', ''}
    else
      out[#out + 1] = {id, 'x', ''}
    end
  end
  for i = nt + 2, #A do
    if redis.call('ZADD', KE, 'XX', 'CH', f17(now + TTL), A[i]) == 0
        and redis.call('HEXISTS', KL, A[i]) == 0 then
      out[#out + 1] = {A[i], 'x', ''}
    end
  end
  ST.rescan = true  -- time passed, like a timer
  dispatch(DEC)
  return out
end

-- a caller whose state was lost writes back what it holds and what it spent (see the prelude):
-- A: n, then per lease: id, k, k pairs (limit, amount); ARGV[3]: one line per spend,
-- "at\31k[\31limit\31amount]*" (at encoded as in settles)
function OPS.restore()
  local n, i = tonumber(A[1]) or 0, 2
  for _ = 1, n do
    local id, k = A[i], tonumber(A[i + 1])
    local cost = {}
    for j = i + 2, i + 1 + 2 * k, 2 do
      cost[#cost + 1] = A[j]
      cost[#cost + 1] = tonumber(A[j + 1])
    end
    i = i + 2 + 2 * k
    if redis.call('HEXISTS', KL, id) == 0 then
      take(cost)
      lease_put(id, cost, OWNER)
    end
  end
  for line in string.gmatch(ARGV[3] or '', '[^\n]+') do
    local f = {}
    for x in string.gmatch(line, '[^\31]+') do f[#f + 1] = x end
    local actual = {}
    for j = 2, #f - 1, 2 do actual[f[j]] = tonumber(f[j + 1]) end
    settle_lease({c = {}}, actual, math.min(tm(f[1]), now))
  end
  ST.rescan = true
  if ST.nq > 0 then dispatch(DEC) end
end

local function configure()
  -- A: aging ("" = strict), depth, n, then n specs of 6: name kind amount period param ff
  -- after the specs: grace ("" or seconds): the caller's state was lost, and a new one holds
  -- every limit for grace seconds so that every live process writes back first
  local n = tonumber(A[3])
  local fresh = ST == nil
  if fresh then
    redis.call('DEL', KS, KQ, KW, KT, KL, KE, KZ)
    ST = {v = 1, names = {}, b = {}, aging = num(A[1]) or false, depth = tonumber(A[2]),
          hid = false, hat = false, seq = 0, nq = 0, lv = {}, fl = {}, flk = {}, kttl = 60,
          gen = math.floor(now * 1000000), mttl = TTL}
  end
  ST.mttl = math.min(ST.mttl or TTL, TTL)
  local grace = num(A[4 + 6 * n])
  ST.rescan = true
  local kttl = math.max(60, 4 * TTL)
  local made = {}
  for i = 4, 3 + 6 * n, 6 do
    local name, kind, amount, period = A[i], A[i + 1], tonumber(A[i + 2]), num(A[i + 3])
    local param, ff = A[i + 4], A[i + 5] == '1'
    local sig = kind .. ':' .. f17(period) .. ':' .. param
    local old = ST.b[name]
    if old and old.sig == sig then
      if old.t == 'g' then B.set_rate(old, amount) else old.cap = amount end
      old.ff = ff
    else
      if kind == 'c' and not calwin(name) then return 'cal' end
      made[#made + 1] = {name, kind, amount, period, param, ff}
    end
    kttl = math.max(kttl, 2 * period)
    local c = CALW[name]
    if c then for _, w in ipairs(c) do kttl = math.max(kttl, 2 * (w[2] - w[1])) end end
  end
  for _, m in ipairs(made) do
    if not ST.b[m[1]] then ST.names[#ST.names + 1] = m[1] end
    ST.b[m[1]] = B.make(m[1], m[2], m[3], m[4], m[5], m[6])
  end
  ST.kttl = math.max(ST.kttl, kttl)
  if fresh and grace and grace > 0 then
    for _, name in ipairs(ST.names) do B.pause(ST.b[name], now + grace) end
  end
  if not fresh then dispatch(DEC) end
  return nil
end

-- entry point ------------------------------------------------------------------------------
local W_FIELDS = '<ddddddddddd'
local C_FIELDS = '<ddddddd'

local function load()
  local raw = redis.call('HGETALL', KS)
  local h, fast = {}, {}
  for i = 1, #raw, 2 do
    if string.sub(raw[i], 1, 2) == 'l:' then fast[#fast + 1] = i else h[raw[i]] = raw[i + 1] end
  end
  if not h.s then return end
  -- the sentinels of L, E and Z vanished (evicted): the state is lost as a whole, and made
  -- anew like after a restart
  if redis.call('HEXISTS', KL, '') == 0 or not redis.call('ZSCORE', KE, '')
      or not redis.call('ZSCORE', KZ, '') then
    redis.call('DEL', KS, KQ, KW, KT, KL, KE, KZ)
    return
  end
  -- leases the fast path granted (fields "l:<id>" of S) move to L and E, in batches
  for j = 1, #fast, 256 do
    local hl, exps, gone = {}, {}, {}
    for k = j, math.min(#fast, j + 255) do
      local i = fast[k]
      local id, v = string.sub(raw[i], 3), raw[i + 1]
      local e
      if string.byte(v) == 1 then  -- "\1", expiry (double), cost as sent: see fast.lua
        e = struct.unpack('<d', v, 2)
        v = cmsgpack.pack({c = parse_cost(string.sub(v, 10))})
      else  -- an older layout: cmsgpack {c, o, e}
        e = cmsgpack.unpack(v).e
      end
      hl[#hl + 1] = id
      hl[#hl + 1] = v
      exps[#exps + 1] = f17(e)
      exps[#exps + 1] = id
      gone[#gone + 1] = raw[i]
    end
    redis.call('HSET', KL, unpack(hl))
    redis.call('ZADD', KE, unpack(exps))
    redis.call('HDEL', KS, unpack(gone))
    touch(KL); touch(KE)
  end
  ST = cmsgpack.unpack(h.s)
  ST.fl, ST.flk = ST.fl or {}, ST.flk or {}
  for _, name in ipairs(ST.names) do  -- the fast path's numbers override those in "s"
    local b, r = ST.b[name], h['b:' .. name]
    if b and r then
      local k = struct.unpack('<d', r)
      if k == 1 then
        local _, cap, pu, fl, lg, fs, ts, ta, zl = struct.unpack(W_FIELDS, r)
        b.cap, b.pu, b.fl, b.lg, b.ts, b.ta, b.zl = cap, pu, fl, lg, ts, ta, zl
        if fs == -INF then b.fs = false else b.fs = fs end
      elseif k == 2 then
        local _, cap, pu, fl, cn, ws, we = struct.unpack(C_FIELDS, r)
        b.cap, b.pu, b.fl, b.cn, b.ws, b.we = cap, pu, fl, cn, ws, we
      end
    end
  end
end

local function record(b)
  if b.t == 'w' then
    return struct.pack(W_FIELDS, 1, b.cap, b.pu, b.fl, b.lg, b.fs or -INF, b.ts, b.ta, b.zl,
                       b.w, b.per)
  elseif b.t == 'c' then
    return struct.pack(C_FIELDS, 2, b.cap, b.pu, b.fl, b.cn, b.ws, b.we)
  end
  return struct.pack('<d', 3)
end

local function save()
  local px = math.floor(ST.kttl * 1000)
  local hs = {'s', cmsgpack.pack(ST)}
  for _, name in ipairs(ST.names) do
    if ST.b[name] then
      hs[#hs + 1] = 'b:' .. name
      hs[#hs + 1] = record(ST.b[name])
    end
  end
  -- sentinels keep L and E from emptying (and losing the TTL set below) between full calls
  redis.call('HSETNX', KL, '', '')
  redis.call('ZADD', KE, 'NX', 'inf', '')
  redis.call('ZADD', KZ, 'NX', 0, '')
  local e = redis.call('ZRANGE', KE, 0, 0, 'WITHSCORES')
  local emin = tonumber(e[2]) or INF
  hs[#hs + 1] = 'h'
  local nl = redis.call('HLEN', KL) - 1  -- the sentinel is no lease
  hs[#hs + 1] = struct.pack('<dddddd', ST.nq, emin, now + ST.kttl / 2, ST.kttl, nl, ST.gen or 0)
  redis.call('HSET', KS, unpack(hs))
  -- every key, every time: the fast path refreshes only what it writes, and only until tdue
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, px) end
end

load()
if OP ~= 'configure' and not ST then return {'noconf', f17(now), '', {}} end
if ST then
  for _, name in ipairs(ST.names) do
    if not B.roll(ST.b[name], name) then
      save()  -- load() may have moved the hash's leases into L: the header must say so
      return {'cal', f17(now), '', {}}
    end
  end
  for _, name in ipairs(ST.names) do
    local b = ST.b[name]
    if b and b.t == 'w' then
      if b.zl == nil then b.zl, b.ts, b.ta = -INF, -INF, 0 end
      B.untail(b, name)
    end
  end
end

local loaded = ST ~= nil  -- then the tails are in Z: an early return must save the numbers too
local result, status
if ST and not ST.gen then ST.gen = math.floor(now * 1000000) end
if OP == 'configure' then
  status = configure()
  if status then
    if loaded then save() end
    return {status, f17(now), '', {}}
  end
  result = f17(ST.gen)
elseif GEN ~= '' and num(GEN) ~= ST.gen then
  save()
  return {'gen', f17(now), f17(ST.gen), {}}
else
  local fn = OPS[OP]
  if not fn then
    if loaded then save() end
    return redis.error_reply('quotaflow: unknown op ' .. tostring(OP))
  end
  local changed = purge()
  for i = 5, #ARGV do
    local f = {}
    for x in string.gmatch(ARGV[i], '[^\31]+') do f[#f + 1] = x end
    settle_one(f)
  end
  result, status = fn()
  if changed and (OP == 'status' or OP == 'waiting') then dispatch(DEC) end
end

save()

local function enc(d) return {d.id, d.o, f17(d.at), d.dim, d.rs, d.rq, d.lm} end
local mine, remote = {}, {}
for _, d in ipairs(DEC) do
  local o = OWN[d.id] or OWNER
  if o == OWNER then
    mine[#mine + 1] = enc(d)
  else
    local lines = remote[o]
    if not lines then
      lines = {f17(now) .. '\t' .. SCOPE}
      remote[o] = lines
    end
    lines[#lines + 1] = table.concat({d.id, d.o, f17(d.at), d.dim, d.rs, d.rq, d.lm}, '\t')
  end
end
for o, lines in pairs(remote) do redis.call('PUBLISH', CHAN .. o, table.concat(lines, '\n')) end

if type(result) == 'table' and result.o then result = enc(result) end
if result == nil then result = '' end
return {status or 'ok', f17(now), result, mine, ST.nq}
