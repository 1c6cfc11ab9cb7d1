--[[ quotaflow scope script, part 3 of 5: bucket arithmetic (port of quotaflow/scheduler/buckets.py).

A bucket is a table in ST.b[name] with a kind t:
  "w" rolling window (WindowBucket): cap, per, w (slot width), fl (in flight), lg (logged),
      fs (front slot of the log or false), zl (an upper bound of the newest slot in Z, -INF
      if none), ts/ta (the tail: the newest slot and its amount when the fast path keeps it
      out of Z; -INF/0 otherwise, and always so inside the full path); the log itself lives
      in KEYS[7] (Z)
  "c" calendar (CalendarBucket): cap, fl, cn (counted), ws/we (window start/end)
  "g" GCRA (GcraBucket): cap, i (interval), bu (burst), tat
  "x" concurrency (ConcurrencyBucket): cap, fl, r (running)
Every kind has pu (paused until), ff (fail fast) and sig (reset rule signature).
Units: seconds and integer amounts; "now" is the call's single clock reading.
]]
local B = {}

local function wlo(name) return '[' .. name .. '\0' end
local function whi(name) return '(' .. name .. '\1' end
local function wmember(name, slot, amount)
  return name .. '\0' .. string.format('%020d', slot) .. '\0' .. string.format('%d', amount)
end
local function wparse(m)
  local a = string.find(m, '\0', 1, true)
  return tonumber(string.sub(m, a + 1, a + 20)), tonumber(string.sub(m, a + 22))
end

local LOGC = {}  -- per call: name -> {entries = {{slot, amount}...}, done = bool}

local function returns(b, slot) return (slot + 1) * b.w + b.per end

function B.paused(b, t)
  if t >= b.pu then return t end
  return b.pu
end

function B.slot(b, t) return math.floor(t / b.w + EPS) end

-- drop log entries whose amounts are back (WindowBucket._expire)
function B.expire(b, name)
  while b.fs and returns(b, b.fs) <= now + EPS do
    LOGC[name] = nil
    local r = redis.call('ZRANGEBYLEX', KZ, wlo(name), whi(name), 'LIMIT', 0, 64)
    local gone, nextfs = {}, false
    for _, m in ipairs(r) do
      local slot, amount = wparse(m)
      if returns(b, slot) <= now + EPS then
        gone[#gone + 1] = m
        b.lg = b.lg - amount
      else
        nextfs = slot
        break
      end
    end
    if #gone > 0 then
      redis.call('ZREM', KZ, unpack(gone))
      touch(KZ)
    end
    if nextfs or #r < 64 then
      b.fs = nextfs
    else
      local m = redis.call('ZRANGEBYLEX', KZ, wlo(name), whi(name), 'LIMIT', 0, 1)[1]
      b.fs = m and (wparse(m)) or false
    end
    if not b.fs then b.zl = -INF end
  end
end

-- the i-th log entry (1-based), loading the log lazily in chunks; nil past the end
local function wentry(name, i)
  local c = LOGC[name]
  if not c then
    c = {entries = {}, done = false}
    LOGC[name] = c
  end
  while i > #c.entries and not c.done do
    local r = redis.call('ZRANGEBYLEX', KZ, wlo(name), whi(name), 'LIMIT', #c.entries, 128)
    for _, m in ipairs(r) do
      local slot, amount = wparse(m)
      c.entries[#c.entries + 1] = {slot, amount}
    end
    if #r < 128 then c.done = true end
  end
  return c.entries[i]
end

-- WindowBucket._add
function B.add(b, name, slot, amount)
  if amount == 0 or returns(b, slot) <= now + EPS then return end
  LOGC[name] = nil
  local lo = '[' .. name .. '\0' .. string.format('%020d', slot) .. '\0'
  local hi = '(' .. name .. '\0' .. string.format('%020d', slot) .. '\1'
  local m = redis.call('ZRANGEBYLEX', KZ, lo, hi, 'LIMIT', 0, 1)[1]
  touch(KZ)
  if m then
    local _, held = wparse(m)
    local applied = math.max(amount, -held)
    redis.call('ZREM', KZ, m)
    redis.call('ZADD', KZ, 0, wmember(name, slot, held + applied))
    b.lg = b.lg + applied
    return
  end
  if amount < 0 then return end
  redis.call('ZADD', KZ, 0, wmember(name, slot, amount))
  b.lg = b.lg + amount
  if not b.fs or slot < b.fs then b.fs = slot end
  if slot > b.zl then b.zl = slot end
end

-- the fast path's tail (newest slot) back into Z, where the full path keeps the whole log
function B.untail(b, name)
  if b.ts == -INF then return end
  redis.call('ZADD', KZ, 0, wmember(name, b.ts, b.ta))
  touch(KZ)
  if b.ts > b.zl then b.zl = b.ts end
  b.ts, b.ta = -INF, 0
end

function B.clear_log(name)
  redis.call('ZREMRANGEBYLEX', KZ, wlo(name), whi(name))
  LOGC[name] = nil
end

-- Bucket.earliest: the earliest time >= now at which amount more fits (INF: not by time)
function B.earliest(b, name, amount, strict)
  local t = b.t
  if t == 'w' then
    B.expire(b, name)
    local need = b.lg + b.fl + amount - b.cap
    if need <= 0 then return B.paused(b, now) end
    local i = 1
    while true do
      local e = wentry(name, i)
      if not e then break end
      need = need - e[2]
      if need <= 0 then return B.paused(b, returns(b, e[1])) end
      i = i + 1
    end
    if strict or amount > b.cap then return INF end
    return B.paused(b, now + b.per)
  elseif t == 'c' then
    if b.cn + b.fl + amount <= b.cap then return B.paused(b, now) end
    if b.cn + amount > b.cap or not strict then return B.paused(b, b.we) end
    return INF
  elseif t == 'g' then
    if amount > b.bu or b.i == INF then return INF end
    local nt = math.max(b.tat, now) + amount * b.i
    return B.paused(b, math.max(now, nt - b.bu * b.i))
  end
  if b.r + b.fl + amount <= b.cap then return B.paused(b, now) end
  return INF
end

-- Bucket.fits_now: the fast path of earliest(amount) <= now
function B.fits_now(b, name, amount)
  local k = b.t
  if k == 'w' then
    B.expire(b, name)
    return b.lg + b.fl + amount <= b.cap and b.pu <= now
  elseif k == 'c' then
    return b.cn + b.fl + amount <= b.cap and b.pu <= now
  end
  return B.earliest(b, name, amount, false) <= now
end

-- Bucket.exhausted: should a fail-fast limit refuse amount now?
function B.exhausted(b, name, amount)
  if b.t == 'c' then return b.cn + amount > b.cap or b.pu >= b.we end
  return B.earliest(b, name, amount, false) > now
end

-- GcraBucket.set_rate: change the limit (amount per period), keeping the fraction in use
function B.set_rate(b, amount)
  local old_i, old_bu = b.i, b.bu
  if amount ~= 0 then b.i = b.per / amount else b.i = INF end
  if amount == 0 then b.bu = 0 else b.bu = b.fb or amount end
  b.cap = b.bu  -- the most one request can take
  if old_bu ~= 0 and amount ~= 0 and b.tat > now then
    local used = (b.tat - now) / old_i
    b.tat = now + used * b.i
  end
end

function B.take(b, amount)
  if b.t == 'g' then
    b.tat = math.max(b.tat, now) + amount * b.i
  else
    b.fl = b.fl + amount
  end
end

function B.release(b, amount)
  if b.t == 'g' then
    b.tat = b.tat - amount * b.i
  else
    b.fl = math.max(0, b.fl - amount)
  end
end

function B.adjust(b, name, t, delta)
  local k = b.t
  if k == 'w' then
    B.add(b, name, B.slot(b, t), delta)
  elseif k == 'c' then
    if t >= b.ws then b.cn = math.max(0, b.cn + delta) end
  elseif k == 'g' then
    b.tat = math.max(b.tat, now - b.bu * b.i) + delta * b.i
  else
    b.r = math.max(0, b.r + delta)
  end
end

function B.anchor(b, name, amount, t)
  if b.t == 'g' then return end
  b.fl = math.max(0, b.fl - amount)
  if b.t == 'w' then
    B.add(b, name, B.slot(b, t), amount)
  elseif b.t == 'c' then
    B.adjust(b, name, t, amount)
  else
    b.r = b.r + amount
  end
end

-- Bucket.settle: anchor an in-flight amount at t, correct it to real, end the call
function B.settle(b, name, amount, real, t)
  if b.t == 'w' then
    b.fl = math.max(0, b.fl - amount)
    if real ~= 0 then B.add(b, name, B.slot(b, t), real) end
    return
  end
  B.anchor(b, name, amount, t)
  if real ~= amount then B.adjust(b, name, t, real - amount) end
  B.finish(b, real)
end

function B.finish(b, amount)  -- Bucket.end
  if b.t == 'x' then b.r = math.max(0, b.r - amount) end
end

function B.pause(b, t) b.pu = math.max(b.pu, t) end

-- CalendarBucket._roll, applied once per call before anything reads the bucket
function B.roll(b, name)
  if b.t ~= 'c' or now < b.we then return true end
  local s, e = calwin(name)
  if not s then return false end
  b.ws, b.we, b.cn = s, e, 0
  return true
end

-- Bucket.level: {limit, used, in_flight, free, next_return, full_at, paused_until}
function B.level(b, name)
  local k = b.t
  local lim, used, fl, free, nxt, full = b.cap, 0, b.fl or 0, 0, nil, nil
  if k == 'w' then
    B.expire(b, name)
    used = b.lg + b.fl
    free = math.max(0, b.cap - used)
    if b.fs then
      nxt = returns(b, b.fs)
      if b.fl == 0 then
        local m = redis.call('ZREVRANGEBYLEX', KZ, whi(name), wlo(name), 'LIMIT', 0, 1)[1]
        full = returns(b, (wparse(m)))
      end
    elseif b.fl == 0 then
      full = now
    end
  elseif k == 'c' then
    used = b.cn + b.fl
    free = math.max(0, b.cap - used)
    if b.cn ~= 0 then nxt, full = b.we, b.we else full = now end
  elseif k == 'g' then
    if b.i == INF then return {0, 0, 0, 0, '', f17(now), ''} end
    lim, fl = b.bu, 0
    local u = math.max(0, math.ceil((b.tat - now) / b.i - EPS))
    used = math.min(u, b.bu)
    free = math.max(0, b.bu - u)
    if u ~= 0 then nxt = now + b.i end
    full = math.max(now, b.tat)
  else
    used = b.r + b.fl
    free = math.max(0, b.cap - used)
    if used == 0 then full = now end
  end
  local pu = nil
  if b.pu > now then pu = b.pu end
  return {lim, used, fl, free, f17(nxt), f17(full), f17(pu)}
end

-- a fresh bucket from a spec (make_bucket); nil if a calendar window is missing
function B.make(name, kind, amount, period, param, ff)
  local b = {t = kind, cap = amount, per = period, pu = -INF, ff = ff, fl = 0,
             sig = kind .. ':' .. f17(period) .. ':' .. param}
  if kind == 'w' then
    b.w = period / tonumber(param)
    b.lg, b.fs, b.zl, b.ts, b.ta = 0, false, -INF, -INF, 0
    B.clear_log(name)
  elseif kind == 'c' then
    local s, e = calwin(name)
    if not s then return nil end
    b.ws, b.we, b.cn = s, e, 0
  elseif kind == 'g' then
    b.fb = tonumber(param) or false
    b.i, b.bu, b.cap, b.tat = INF, 0, 0, now
    B.set_rate(b, amount)
  else
    b.r = 0
  end
  return b
end
