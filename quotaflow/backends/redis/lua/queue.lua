--[[ quotaflow scope script, part 3 of 4: the waiting line (port of quotaflow/scheduler/queue.py).

Order: key = arrival - priority * aging (strict priority: -priority * 1e18 + arrival), ties by
arrival sequence; within one level keys never decrease (a later arrival takes the level's last
key if its own is smaller). Q's score is the key and its member starts with the sequence
(15 digits), so ZRANGE gives the (key, seq) order. ST.lv[<priority>] = {k = last key,
n = live waiters}: a level is forgotten when head() finds it empty, or when the line empties.
Waiter fields: id, m (Q member), c (cost: {name, amount, ...} in request order), p (priority),
a (arrival), s (seq), d (deadline or false), o (owner), k (key).
]]
local Qu = {}
local WC = {}   -- per call: id -> waiter table, or false if known absent
local OWN = {}  -- per call: id -> owner, for routing decisions

local function idof(member) return string.sub(member, 17) end

function Qu.get(id)
  local w = WC[id]
  if w ~= nil then return w or nil end
  local raw = redis.call('HGET', KW, id)
  if raw then
    w = cmsgpack.unpack(raw)
    OWN[id] = w.o
  else
    w = false
  end
  WC[id] = w
  return w or nil
end

function Qu.push(id, cost, prio, arrival, deadline, owner)
  ST.seq = ST.seq + 1
  local key
  if ST.aging == false then
    key = -prio * 1e18 + arrival
  else
    key = arrival - prio * ST.aging
  end
  local lk = tostring(prio)
  local lv = ST.lv[lk]
  if lv then
    if lv.k > key then key = lv.k end
    lv.k = key
    lv.n = lv.n + 1
  else
    ST.lv[lk] = {k = key, n = 1}
  end
  local member = string.format('%015d', ST.seq) .. ':' .. id
  local w = {id = id, m = member, c = cost, p = prio, a = arrival, s = ST.seq,
             d = deadline or false, o = owner, k = key}
  redis.call('ZADD', KQ, f17(key), member)
  redis.call('HSET', KW, id, cmsgpack.pack(w))
  redis.call('ZADD', KT, f17(now + TTL), id)
  touch(KQ); touch(KW); touch(KT)
  ST.nq = ST.nq + 1
  WC[id] = w
  OWN[id] = owner
  return w
end

function Qu.remove(id)
  local w = Qu.get(id)
  if not w then return nil end
  redis.call('ZREM', KQ, w.m)
  redis.call('HDEL', KW, id)
  redis.call('ZREM', KT, id)
  WC[id] = false
  local lv = ST.lv[tostring(w.p)]
  if lv then lv.n = lv.n - 1 end
  ST.nq = ST.nq - 1
  if ST.nq <= 0 then
    ST.nq = 0
    ST.lv = {}
  end
  return w
end

function Qu.head()
  for k, lv in pairs(ST.lv) do
    if lv.n <= 0 then ST.lv[k] = nil end
  end
  local r = redis.call('ZRANGE', KQ, 0, 0)
  if #r == 0 then return nil end
  return Qu.get(idof(r[1]))
end

-- the waiters at places first..last (0-based) of the line
function Qu.range(first, last)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', KQ, first, last)) do
    out[#out + 1] = Qu.get(idof(m))
  end
  return out
end
