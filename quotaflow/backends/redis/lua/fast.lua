--[[ quotaflow scope script, part 1 of 5: the fast path (see the prelude for KEYS, ARGV, reply).

It runs first and, for "submit" and "flush", answers the uncontended case before any of the
full path's functions are created or the scope's state is decoded: nobody waits, nothing is
paused, no lease has expired, no calendar window has ended, and every limit named has room.
It then makes exactly the decision of the full path, which is the reference; anything else
falls through to the full path with nothing written. It sets no TTL: the full path gives every
key its TTL and keeps L and E from emptying (a sentinel member ""), so their TTLs persist, and
the fast path runs only before tdue, half a TTL after the full path last ran.

What it reads: the header field "h" of S, {nq, emin, tdue, kttl, nl, gen} packed as doubles, where
nl is an upper bound of the leases in L (0: a lease id is in L only if it is in S; the fast path
lowers it by the leases it takes out of L), emin is a lower bound of the earliest lease expiry
(in E and of the leases kept in S, see below) and tdue is when the full path must next refresh
every key's TTL, gen the state's generation (a caller that names another one falls through);
and per limit the field "b:<name>", that limit's changing numbers packed as doubles:
  k = 1 rolling window: cap, pu, fl, lg, fs, ts, ta, zl, w, per
  k = 2 calendar:       cap, pu, fl, cn, ws, we
  k = 3 other kinds (never fast)
"Fits" uses the window's logged total lg without dropping expired slots first: amounts only
come back over time, so a stale lg over-counts and a fit found with it is a fit (lower bound
of free room). Settled amounts of the newest slot accumulate in the tail (ts, ta) instead of
the log Z; a settle into an older slot (another process's settle reached a newer one first)
changes that slot's entry in Z as the full path does (WindowBucket._add), and one into the
newest slot of Z while there is no tail (the full path moved it into Z on load) takes that
entry back as the tail. A settle that adds a slot while the log's front has come back drops
the entries that are back, as the full path does (WindowBucket._expire), so Z stays bounded
when slots are narrow (a compressed minute) and the call still needs no full path; a tail
that is back itself is dropped rather than moved into Z.

Leases it grants are fields "l:<id>" of S: the byte \1, the expiry as a double, then the cost
exactly as the request sent it (ARGV[3]), so a grant and the settle riding on it write S alone
(one HDEL, one HSET) and nothing is encoded but the expiry. Their expiries count in emin, so
the full path runs when the earliest is due; on load it moves every such lease into L and E,
where the full path keeps leases (heartbeats, expiry, cancel), before anything reads them. A
settle finds its lease in S or L. A lease in S of another layout (no leading \1) falls through.

Cost per call matters here (every uncontended acquire pays it, in Redis's one thread, and
the script is most of Redis's work per acquire): the arguments are laid out so that a few
anchored matches take them apart, records are arrays filled by one struct.unpack, the lease
is written as it came, the helpers are no closures over fast()'s locals (each captured local
is an allocation per call), and nothing before fast() returns builds more than it needs.
]]
-- effects replication (TIME before writes): the default since Redis 5, the only mode in 7
if not redis.REDIS_VERSION_NUM and redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local now  -- the call's one clock reading (the fast path's, kept if it falls through)

-- The helpers of fast() take everything as arguments: a closure over fast()'s locals would
-- allocate an upvalue per captured local on every call.

-- a limit's record (field "b:<name>") as an array of its doubles: [1] the kind, [2] cap,
-- [3] pu, [4] fl, then window: [5] lg, [6] fs, [7] ts, [8] ta, [9] zl, [10] w, [11] per;
-- calendar: [5] cn, [6] ws, [7] we (one more value, struct's end position, follows: unused);
-- {3} for other kinds (never fast); false if the scope has no such limit
local function fast_rec(raw)
  if not raw then return false end
  local n = #raw
  if n == 88 then return {struct.unpack('<ddddddddddd', raw)} end
  if n == 56 then return {struct.unpack('<ddddddd', raw)} end
  return {3}
end

-- the entry of limit name's slot in the log Z as this call leaves it (Z: key -> entry, written
-- once decided): {member to remove (read from Z) or false, amount to write or false, key};
-- zl bounds the slots Z may hold (a slot above it has no member: nothing to read)
local function fast_log(Z, name, slot, zl)
  local key = name .. '\0' .. string.format('%020d', slot)
  local e = Z[key]
  if e == nil then
    local m, held = false, false
    if slot <= zl then
      m = redis.call('ZRANGEBYLEX', KEYS[7], '[' .. key .. '\0', '(' .. key .. '\1',
                     'LIMIT', 0, 1)[1] or false
      if m then held = tonumber(string.sub(m, #key + 2)) end
    end
    e = {m, held, key}
    Z[key] = e
  end
  return e
end

-- WindowBucket._expire on the record r of limit name (its front slot fs, r[6], is back): the
-- back entries at the front of the log Z go (removals in Z, see fast_log), lg drops by their
-- amounts and fs becomes the oldest slot left, in Z, in the call's changes to Z or the tail
-- (-INF if none); false if more than 64 are back (the full path drops them)
local function fast_expire(Z, name, r, now)
  local EPS, w, per = 1e-9, r[10], r[11]
  local key0 = name .. '\0'
  local n0 = #key0
  local fs = math.huge
  for off = 0, 63, 16 do
    local ms = redis.call('ZRANGEBYLEX', KEYS[7], '[' .. key0, '(' .. name .. '\1',
                          'LIMIT', off, 16)
    for i = 1, #ms do
      local m = ms[i]
      local slot = tonumber(string.sub(m, n0 + 1, n0 + 20))
      if (slot + 1) * w + per > now + EPS then
        fs = slot
        break
      end
      local key = string.sub(m, 1, n0 + 20)
      Z[key] = {m, false, key}  -- a back slot: never written by this call (_add skips it)
      r[5] = r[5] - tonumber(string.sub(m, n0 + 22))
    end
    if fs ~= math.huge or #ms < 16 then break end
    if off + 16 > 63 then return false end
  end
  for key, e in pairs(Z) do
    if e[2] and string.sub(key, 1, n0) == key0 then
      local slot = tonumber(string.sub(key, n0 + 1))
      if slot < fs then fs = slot end
    end
  end
  if r[7] ~= -math.huge and r[7] < fs then fs = r[7] end
  if fs == math.huge then fs = -math.huge end
  r[6] = fs
  return true
end

-- Bucket.settle on the record of limit name (read into R on first use; kinds 1 and 2) at time
-- now; false: the full path must; else true and Z, the call's changes to the log (see
-- fast_log; made on first use): the tail moved into it (a new slot), a slot older than the
-- tail (WindowBucket._add), or the newest slot of the log taken back as the tail (no tail)
local function fast_settle(R, KS, name, amount, real, at, now, Z)
  local EPS, INF = 1e-9, math.huge
  local r = R[name]
  if r == nil then
    r = fast_rec(redis.call('HGET', KS, 'b:' .. name))
    R[name] = r
  end
  if not r then return true, Z end
  local k = r[1]
  if k == 1 then
    r[4] = math.max(0, r[4] - amount)
    local w, per = r[10], r[11]
    local slot = math.floor(at / w + EPS)
    if real ~= 0 and (slot + 1) * w + per > now + EPS then
      local ts = r[7]
      if slot == ts then
        local applied = math.max(real, -r[8])
        r[8] = r[8] + applied
        r[5] = r[5] + applied
      elseif slot > ts and slot > r[9] then
        if real > 0 then
          if ts ~= -INF then
            Z = Z or {}
            if (ts + 1) * w + per <= now + EPS then
              r[5] = r[5] - r[8]  -- the tail is back: no entry
            else
              fast_log(Z, name, ts, r[9])[2] = r[8]  -- the tail into Z
              r[9] = ts
            end
            r[7], r[8], r[5] = slot, real, r[5] + real
            -- the front is back: dropped, as the full path would (so Z stays bounded)
            if (r[6] + 1) * w + per <= now + EPS and not fast_expire(Z, name, r, now) then
              return false
            end
            return true, Z
          end
          r[7], r[8], r[5] = slot, real, r[5] + real
          if r[6] == -INF then r[6] = slot end
        end
      else
        Z = Z or {}
        local e = fast_log(Z, name, slot, r[9])
        if ts == -INF and slot >= r[9] then
          -- no tail (the full path moved it into Z): the log's newest slot becomes the tail
          -- again, so that the settles after this one in the slot stay out of Z
          if e[1] or real > 0 then
            local held = e[2] or 0
            local applied = math.max(real, -held)
            e[2] = false
            r[7], r[8], r[5] = slot, held + applied, r[5] + applied
            if r[6] == -INF then r[6] = slot end
          end
        elseif e[2] then
          local applied = math.max(real, -e[2])
          e[2] = e[2] + applied
          r[5] = r[5] + applied
        elseif real > 0 then
          e[2] = real
          r[5] = r[5] + real
          if r[9] < slot then r[9] = slot end
          if r[6] ~= -INF and (r[6] + 1) * w + per <= now + EPS then
            if not fast_expire(Z, name, r, now) then return false end
          elseif r[6] == -INF or slot < r[6] then
            r[6] = slot
          end
        end
      end
    end
  elseif k == 2 then
    if now >= r[7] then return false end
    r[4] = math.max(0, r[4] - amount)
    if at >= r[6] then
      r[5] = math.max(0, r[5] + amount)
      if real ~= amount then r[5] = math.max(0, r[5] + real - amount) end
    end
  else
    return false
  end
  return true, Z
end

-- fast() reads KEYS[1] and the library functions it uses often into locals (a global costs a
-- lookup on every use). Its tables are made at the size the usual call needs (a table that
-- grows is reallocated at sizes 1, 2, 4, ...), which is why lengths are counted, not taken
-- with # (a slot made ahead holds false).
local function fast()
  local KS, call, match, num = KEYS[1], redis.call, string.match, tonumber
  local argv = ARGV
  -- the op, the clock override, the ttl and (the last field) the caller's generation
  local op, ov, ttl, cg = match(argv[1], '^(%l+)\31([^\31]*)\31([^\31]*)\31.*\31([^\31]*)$')
  local submit = op == 'submit'
  if not submit and op ~= 'flush' then return nil end
  -- one HMGET reads what the call needs: the header, the records of the limits the request
  -- names, the field its own lease would take and the leases it settles
  local fields, nf = {'h', false, false, false}, 1
  local id, cost, req, nr
  if submit then
    id, cost, nr = match(argv[2], '^[^\31]*'), argv[3] or '', 0
    local name1, amount1 = match(cost, '^([^\31]*)\31([^\31]*)\31$')  -- the usual: one
    if name1 then
      amount1 = num(amount1)
      if amount1 > 0 then
        req, nr, nf = {name1, amount1}, 2, 2
        fields[2] = 'b:' .. name1
      else
        req = {}
      end
    else
      req = {}
      for name, amount in string.gmatch(cost, '([^\31]*)\31([^\31]*)\31') do
        amount = num(amount)
        if amount > 0 then  -- the client sends none other; a zero amount is no part of a cost
          req[nr + 1], req[nr + 2], nr = name, amount, nr + 2
          nf = nf + 1
          fields[nf] = 'b:' .. name
        end
      end
    end
    nf = nf + 1
    fields[nf] = 'l:' .. id
  end
  -- settles: ARGV[5..], each "id\31at\31n[\31limit\31amount]*"; S holds five values per
  -- settle (id, at's kind "r"/"a", at, n, where its pairs start), its lease is field s0 + i
  local s0, S, ns, seen = nf, nil, 0, nil
  local na = #argv
  if na > 4 then
    if na == 5 then
      S = {false, false, false, false, false}
    else
      S, seen = {}, {}  -- a settle sent twice in one call is applied once
    end
    for i = 5, na do
      local lid, kind, at, n, p = match(argv[i], '^([^\31]*)\31(.)([^\31]*)\31(%-?%d+)()')
      if not lid then return nil end
      if seen then
        if seen[lid] then lid = false else seen[lid] = true end
      end
      S[ns + 1], S[ns + 2], S[ns + 3], S[ns + 4], S[ns + 5] = lid, kind, at, num(n), p
      ns = ns + 5
      nf = nf + 1
      fields[nf] = lid and 'l:' .. lid or 'l:'
    end
  end
  local vals = call('HMGET', KS, unpack(fields, 1, nf))
  local hdr = vals[1]
  if not hdr or #hdr ~= 48 then return nil end  -- none yet, or an older layout: full path
  local nq, emin, tdue, kttl, nl, gen = struct.unpack('<dddddd', hdr)
  -- the state's generation, as the caller last saw it ("" = not known yet): another one means
  -- the state was lost and made anew; the full path tells the caller, who writes back
  if cg ~= '' and num(cg) ~= gen then return nil end
  local t
  if ov ~= '' then
    now = num(ov)
  else
    t = call('TIME')
    now = num(t[1]) + num(t[2]) / 1000000
  end
  if nq ~= 0 or now >= emin or now >= tdue then return nil end
  -- R: limit name -> record (see fast_rec). Every record read is written back (one that did
  -- not change, as it was): a grant or a settle changes nearly all of them.
  local R = {}
  local Z = nil  -- the call's changes to the log Z (see fast_log)
  if submit then
    for i = 1, nr, 2 do R[req[i]] = fast_rec(vals[1 + (i + 1) / 2]) end
  end
  -- settles first, as the full path applies them before the op; a lease is a field "l:<id>"
  -- of S (granted here: "\1", its expiry as a double, its cost as sent) or an entry of L
  -- (granted by the full path or moved there by it: cmsgpack {c = {limit, amount, ...}})
  local goneh, ngh, gone = nil, 0, nil  -- settled leases: fields of S, ids in L
  for i = 1, ns, 5 do
    local lid, f = S[i], s0 + (i + 4) / 5
    local raw, c = lid and vals[f], nil  -- c: the lease's cost {limit, amount, ...}
    if raw then
      if string.byte(raw) ~= 1 then return nil end  -- an older layout: the full path moves it
      if goneh then goneh[ngh + 1] = fields[f] else goneh = {fields[f]} end
      ngh = ngh + 1
      if submit and #raw == 9 + #cost and string.find(raw, cost, 10, true) == 10 then
        c = req  -- the usual shape: settled as it is asked again, already parsed
      else
        c = {}
        for name, amount in string.gmatch(string.sub(raw, 10), '([^\31]*)\31([^\31]*)\31') do
          amount = num(amount)
          if amount > 0 then
            c[#c + 1] = name
            c[#c + 1] = amount
          end
        end
      end
    elseif lid then
      raw = call('HGET', KEYS[5], lid)
      if raw then
        gone = gone or {}
        gone[#gone + 1] = lid
        c = cmsgpack.unpack(raw).c
      end
    end
    if c then
      local at = num(S[i + 2])
      if S[i + 1] == 'r' then at = now + at end
      local actual = nil  -- n <= 0: every amount as granted
      if S[i + 3] > 0 then
        actual = {}
        for name, amount in string.gmatch(string.sub(argv[4 + (i + 4) / 5], S[i + 4]),
                                          '\31([^\31]*)\31([^\31]*)') do
          actual[name] = num(amount)
        end
      end
      for j = 1, #c, 2 do
        local name, amount = c[j], c[j + 1]
        local real = amount
        if actual and actual[name] ~= nil then real = actual[name] end
        local ok
        ok, Z = fast_settle(R, KS, name, amount, real, at, now, Z)
        if not ok then return nil end
      end
      if actual then  -- usage that was not estimated (0 reserved) still counts
        for name, real in pairs(actual) do
          if real > 0 then
            local held = false
            for j = 1, #c, 2 do
              if c[j] == name then held = true end
            end
            if not held then
              local ok
              ok, Z = fast_settle(R, KS, name, 0, real, at, now, Z)
              if not ok then return nil end
            end
          end
        end
      end
    end
  end
  local reply = 'K'
  local hs, nh = {false, false, false, false}, 0  -- HSET's fields and values
  local hemin, hdirty = emin, false  -- the header's earliest expiry; the header changed
  if submit then
    for i = 1, nr, 2 do
      local r = R[req[i]]
      if r then
        local k, amount = r[1], req[i + 1]
        if k == 1 then
          if r[3] > now or r[5] + r[4] + amount > r[2] then return nil end
        elseif k == 2 then
          if now >= r[7] or r[3] > now or r[5] + r[4] + amount > r[2] then return nil end
        else
          return nil
        end
      end
    end
    reply = 'G'
    -- a retry of a granted submit (its reply was lost) takes nothing more
    -- (a lease settled by this very call is gone)
    local settled = false
    for i = 1, ns, 5 do
      if S[i] == id then settled = true end
    end
    local held = not settled
      and (vals[s0] or (nl > 0 and call('HEXISTS', KEYS[5], id) == 1))
    if not held then
      for i = 1, nr, 2 do
        local r = R[req[i]]
        if r then r[4] = r[4] + req[i + 1] end
      end
      local exp = now + num(ttl)
      hs[1] = fields[s0]  -- "l:<id>"
      hs[2] = '\1' .. struct.pack('<d', exp) .. cost
      nh = 2
      if exp < emin then hemin, hdirty = exp, true end
    end
  end
  -- decided: write
  if goneh then call('HDEL', KS, unpack(goneh, 1, ngh)) end
  if gone then
    -- L: what was removed no longer counts in the header's bound of its leases (so the
    -- grants that follow need not ask L whether they were granted before)
    local removed = redis.call('HDEL', KEYS[5], unpack(gone))
    redis.call('ZREM', KEYS[6], unpack(gone))  -- E
    if removed > 0 then nl, hdirty = math.max(0, nl - removed), true end
  end
  if Z then
    local zrem, nrem, zadd, nz = {}, 0, {}, 0
    for _, e in pairs(Z) do
      if e[1] then zrem[nrem + 1], nrem = e[1], nrem + 1 end
      if e[2] then
        zadd[nz + 1], zadd[nz + 2], nz = 0, e[3] .. '\0' .. string.format('%d', e[2]), nz + 2
      end
    end
    if nrem > 0 then redis.call('ZREM', KEYS[7], unpack(zrem, 1, nrem)) end
    if nz > 0 then
      redis.call('ZADD', KEYS[7], unpack(zadd, 1, nz))
      redis.call('PEXPIRE', KEYS[7], math.floor(kttl * 1000))
    end
  end
  for name, r in pairs(R) do
    if r then
      hs[nh + 1] = 'b:' .. name
      if r[1] == 1 then
        hs[nh + 2] = struct.pack('<ddddddddddd', unpack(r, 1, 11))
      else  -- 2: a record of another kind made the call fall through before
        hs[nh + 2] = struct.pack('<ddddddd', unpack(r, 1, 7))
      end
      nh = nh + 2
    end
  end
  if hdirty then
    hs[nh + 1] = 'h'
    hs[nh + 2] = struct.pack('<dddddd', nq, hemin, tdue, kttl, nl, gen)
    nh = nh + 2
  end
  if nh > 0 then call('HSET', KS, unpack(hs, 1, nh)) end
  -- Redis time as "<seconds>.<6 digits>" (exact: %.17g of the override)
  if t then
    local us = t[2]
    if #us < 6 then us = string.sub('00000' .. us, -6) end
    return reply .. t[1] .. '.' .. us
  end
  return reply .. string.format('%.17g', now)
end

do
  local r = fast()
  if r then return r end
end

local INF = math.huge
local EPS = 1e-9
local KS, KQ, KW, KT, KL, KE, KZ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
