--[[ quotaflow scope script, part 2 of 5: prelude (arguments, clock, number codec).

The five parts (fast, prelude, buckets, queue, scope) are concatenated into ONE script, loaded
once and called by SHA. Together they port quotaflow/scheduler/scope.py, quotaflow/scheduler/queue.py and
quotaflow/scheduler/buckets.py: change one side, change the other (tests/redis/test_differential.py).

Units: times are seconds (floats, exchanged as "%.17g" strings so no bit is lost; "inf"/"-inf"
for infinities), amounts are integers.

KEYS (all carry the scope's hash tag, so one script call touches one Redis Cluster slot):
  1 H  hash    "s": cmsgpack blob of the scope (limits, line levels, head of the line);
               "h": header for the fast path; "b:<limit>": the limit's changing numbers
               (see fast.lua), which override those in "s"; "l:<id>": a lease the fast
               path granted (moved to L and E by the full path on load)
  2 Q  zset    the waiting line: score = order key, member = <seq, 15 digits>:<id>
  3 W  hash    id -> cmsgpack waiter {id, m, c, p, a, s, d, o, k}
  4 T  zset    id -> ticket expiry (a waiter whose process stops refreshing it is dropped)
  5 L  hash    id -> cmsgpack lease {c, o} (and the sentinel "" -> "", so L never empties)
  6 E  zset    id -> lease expiry (an unsettled lease of a dead process is anchored then);
               the sentinel "" at +inf
  7 Z  zset    rolling-window slot logs, all scores 0: member = <limit>\0<slot, 20 digits>\0<n>
               (the newest slot of a window may be held in its "b:" field instead: the tail)

ARGV (strings; fields within one are separated by the byte \31):
  1 header: op, now override, lease/ticket time to live (s), owner, channel prefix, scope,
    generation
    op: "configure", "submit", "dispatch", "cancel", "flush", "release", "pause", "exhaust",
        "status", "waiting", "beat", "restore"
    generation: the state's generation as the caller last saw it ("" if none yet). A state
        is made with a new generation; a caller naming another one is answered "gen" with
        nothing applied: the state it knew was lost (restart, flush, eviction, failover), and
        it writes back what it holds and spent ("restore") before it goes on
    now override: "" in production (the clock is Redis TIME); tests pass a time to drive the
        script and the Python reference in lockstep
    owner: the calling process's id (decisions for its tickets come back in the reply;
        decisions for other owners' tickets are PUBLISHed on <channel prefix><owner>)
  2 the op's arguments
  3 submit: the cost, "<limit>\31<amount>\31" per limit with an amount > 0, in request order
    (kept verbatim in the leases the fast path grants); "" for the other ops
  4 calendar windows: lines "<limit>\t<start>\t<end>[\t<start>\t<end>]"; the client computes
    the windows (e.g. Pacific days) around its estimate of Redis time; the script picks the
    one holding TIME ("cal" reply if none does, and the client retries)
  5.. settles to apply before the op, one per argument: "id\31at\31n[\31limit\31amount]*"
    (n = -1: keep the granted cost); a settle of an unknown lease is ignored
  Trailing empty arguments may be left out (up to the settles).
  Times in arguments are "a<abs>" (absolute, Redis time) or "r<rel>" (relative to now).

Reply: the fast path answers "G<now>" (granted) or "K<now>" (settles applied), now as
"<seconds>.<6 digits>" (Redis TIME; %.17g with a now override); the full path
{status, now, result, decisions, waiting}
  status "ok" | "noconf" (scope unknown: configure, then retry) | "cal" | "nolimit"
    | "gen" (result: the state's generation; restore, then retry)
  decisions: {id, outcome, at, dimension, reason, requested, limit} about the caller's tickets
  waiting: the length of the line after the call
]]
local HDR = {}
for x in string.gmatch(ARGV[1] .. '\31', '([^\31]*)\31') do HDR[#HDR + 1] = x end
local OP, TTL, OWNER, CHAN, SCOPE = HDR[1], tonumber(HDR[3]), HDR[4], HDR[5], HDR[6]
local GEN = HDR[7] or ''  -- the state's generation as the caller last saw it ("": none yet)
-- the op's arguments
local A = {}
for x in string.gmatch((ARGV[2] or '') .. '\31', '([^\31]*)\31') do A[#A + 1] = x end
if (ARGV[2] or '') == '' then A = {} end

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

if now then  -- read by the fast path
elseif HDR[2] ~= '' then
  now = num(HDR[2])
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
for line in string.gmatch(ARGV[4] or '', '[^\n]+') do
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
