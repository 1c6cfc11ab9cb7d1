--[[ quotaflow scope script, part 1 of 4: prelude (arguments, clock, number codec).

The four parts (prelude, buckets, queue, scope) are concatenated into ONE script, loaded once
and called by SHA. Together they port quotaflow/_scope.py, quotaflow/_queue.py and
quotaflow/buckets.py: change one side, change the other (tests/redis/test_differential.py).

Units: times are seconds (floats, exchanged as "%.17g" strings so no bit is lost; "inf"/"-inf"
for infinities), amounts are integers.

KEYS (all carry the scope's hash tag, so one script call touches one Redis Cluster slot):
  1 S  string  cmsgpack blob: limits, bucket scalars, line levels, head of the line
  2 Q  zset    the waiting line: score = order key, member = <seq, 15 digits>:<id>
  3 W  hash    id -> cmsgpack waiter {id, m, c, p, a, s, d, o, k}
  4 T  zset    id -> ticket expiry (a waiter whose process stops refreshing it is dropped)
  5 L  hash    id -> cmsgpack lease {c, o}
  6 E  zset    id -> lease expiry (an unsettled lease of a dead process is anchored then)
  7 Z  zset    rolling-window slot logs, all scores 0: member = <limit>\0<slot, 20 digits>\0<n>

ARGV: ONE string, the fields below joined by the byte \31:
  1 op ("configure", "submit", "dispatch", "cancel", "settle", "release", "pause",
    "exhaust", "status", "waiting", "beat")
  2 now override: "" in production (the clock is Redis TIME); tests pass a time to drive
    the script and the Python reference in lockstep
  3 owner: the calling process's id (decisions for its tickets come back in the reply;
    decisions for other owners' tickets are PUBLISHed on <channel prefix><owner>)
  4 ticket and lease time to live (s)
  5 calendar windows: lines "<limit>\t<start>\t<end>[\t<start>\t<end>]"; the client computes
    the windows (e.g. Pacific days) around its estimate of Redis time; the script picks the
    one holding TIME ("cal" reply if none does, and the client retries)
  6 channel prefix, 7 scope name (in published messages), 8.. the op's arguments
  Times in op arguments are "a<abs>" (absolute, Redis time) or "r<rel>" (relative to now).

Reply: {status, now, result, decisions}
  status "ok" | "noconf" (scope unknown: configure, then retry) | "cal" | "nolimit"
  decisions: {id, outcome, at, dimension, reason, requested, limit} about the caller's tickets
]]
if redis.replicate_commands then pcall(redis.replicate_commands) end

local INF = math.huge
local EPS = 1e-9
local KS, KQ, KW, KT, KL, KE, KZ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
-- the arguments arrive as one string, fields separated by \31 (fewer arguments to encode)
local AR = {}
do
  local s, i = ARGV[1], 1
  while true do
    local j = string.find(s, '\31', i, true)
    if not j then
      AR[#AR + 1] = string.sub(s, i)
      break
    end
    AR[#AR + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local OP, OWNER, TTL, CHAN, SCOPE = AR[1], AR[3], tonumber(AR[4]), AR[6], AR[7]

local function num(s)
  if s == nil or s == false or s == '' then return nil end
  if s == 'inf' then return INF end
  if s == '-inf' then return -INF end
  return tonumber(s)
end

local function f17(x)
  if x == nil or x == false then return '' end
  if x == INF then return 'inf' end
  if x == -INF then return '-inf' end
  return string.format('%.17g', x)
end

local now
if AR[2] ~= '' then
  now = num(AR[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- "a<abs>" | "r<rel>" | "" -> absolute time or nil
local function tm(s)
  if s == nil or s == '' then return nil end
  local v = num(string.sub(s, 2))
  if string.sub(s, 1, 1) == 'r' then return now + v end
  return v
end

local CALW = {}
for line in string.gmatch(AR[5], '[^\n]+') do
  local parts = {}
  for p in string.gmatch(line, '[^\t]+') do parts[#parts + 1] = p end
  local c = {}
  for i = 2, #parts - 1, 2 do c[#c + 1] = {num(parts[i]), num(parts[i + 1])} end
  CALW[parts[1]] = c
end

-- the calendar window [start, end) holding now, from the client's candidates
local function calwin(name)
  local c = CALW[name]
  if c then
    for _, w in ipairs(c) do
      if w[1] <= now and now < w[2] then return w[1], w[2] end
    end
  end
  return nil
end

local ST            -- the scope (decoded KS); nil if not configured
local TOUCHED = {}  -- keys written by this call: their TTL is refreshed at the end
local function touch(k) TOUCHED[k] = true end
