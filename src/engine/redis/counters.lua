-- tollgate's rate counters on Redis: a batch of rate operations, decided and applied atomically.
--
-- A line-by-line translation of the pure rules in `src/ratelimit/algorithm.rs` (evaluate,
-- normalize, refund, most_restrictive, drained, is_idle (in store)) and `src/ratelimit/charge.rs` (apply:
-- all or nothing, the deciding limit), in integer microseconds. The Rust rules stay the
-- reference: `src/engine/redis/differential.rs` runs both on the same random inputs and
-- requires the same answers. Read the Rust first; the comments here only say what differs.
--
-- Lua numbers are doubles: integers are exact below 2^53. Every time is in microseconds (a time
-- of 2026 is about 2^50.7), every window is at most 2^50 us and every count at most 2^32
-- (`src/engine/redis/namespace.rs` refuses larger limits), so sums stay below 2^53. Products
-- that can exceed it (a sliding window's count times elapsed time) go through `muldiv`, which
-- is exact. Counters are stored in binary (a kind byte and big-endian doubles, `struct`):
-- exact, and without the cost of formatting and parsing decimals; sentinels are text ('%.0f':
-- tostring would round to 14 digits).
--
-- One source, run two ways (`script.rs` adds the last line): as a script (`EVALSHA`, ending in
-- `return main(KEYS, ARGV)`), or as a function library (`FCALL`, Redis 7, ending in
-- `redis.register_function`), whose helpers are made once at load instead of at every call.
--
-- `main(keys, args)`:
-- keys: the sentinels of the buckets and the counters the operations touch, referenced by index.
-- args[1]: the call, in binary (`struct` formats, big-endian; `script.rs` writes it):
--   header  >BdBdH  has now (0: use Redis TIME), now, drain (1: a lost bucket is drained from
--                   the time the loss is found), expiry margin (ms added to every counter's time
--                   to live: its expiry runs on Redis's clock, while a given `now` may run on
--                   another), number of limits
--   limit   >Bdd    algorithm (g, f, s), a, b (g: interval, burst; f, s: limit, period)
--   count   >H      number of operations
--   op      >BBBdH  kind (c charge, p peek, r refund, x reset; on a bucket's sentinel alone: i
--                   create it if missing, m mark the bucket drained, M replace a sentinel of
--                   another secret), recover (1: a missing sentinel is recreated, else the
--                   operation reports it lost), secret id (index into args after the first),
--                   amount, number of targets
--   target  >HHH    counter key index, sentinel key index, limit index
--   padding         6 zero bytes (an operation is read with its first target in one `unpack`;
--                   a last operation without targets reads these)
-- args[2..]: the secret ids the operations name.
-- Returns one string: per operation >BBHddd: status, allowed, deciding, remaining, reset_after,
--   retry_after (-1: none); status 0 ok, 1 a bucket's sentinel is missing, 2 a bucket belongs
--   to another secret. An operation with status 1 or 2 changed nothing.

-- The library functions the hot path calls, as upvalues (a global lookup per call costs). A
-- function library may not read them while it loads (Redis 7.0), so `main` binds them first.
local floor, max, min, huge, format, match, call, num, pack, unpack, char, concat, byte
local function bind()
  floor, max, min, huge = math.floor, math.max, math.min, math.huge
  format, match = string.format, string.match
  call, num = redis.call, tonumber
  pack, unpack, char, concat = struct.pack, struct.unpack, string.char, table.concat
  byte = string.byte
end

local POW52 = 4503599627370496

-- The call being run (`main` sets them): its keys, its time, whether lost buckets are drained,
-- the expiry margin.
local K, now, drain, margin

local function str(x) return format('%.0f', x) end

-- floor(x / c) and x mod c, for integers 0 <= x <= 2^52 and c >= 1.
local function divmod(x, c)
  local q = floor(x / c)
  local r = x - q * c
  if r < 0 then
    q = q - 1; r = r + c
  elseif r >= c then
    q = q + 1; r = r - c
  end
  return q, r
end

-- floor(a * b / c) and (a * b) mod c, exactly, for integers 0 <= a < 2^53, 0 <= b < c <= 2^51:
-- shift-and-add over the bits of a, keeping the remainder below c.
local function muldiv(a, b, c)
  if a * b <= POW52 then return divmod(a * b, c) end
  local bit = 1
  while bit * 2 <= a do bit = bit * 2 end
  local q, r = 0, 0
  while bit >= 1 do
    q = q * 2; r = r * 2
    if r >= c then q = q + 1; r = r - c end
    if a >= bit then
      a = a - bit; r = r + b
      if r >= c then q = q + 1; r = r - c end
    end
    bit = bit / 2
  end
  return q, r
end

local function align(t, p)
  local _, r = divmod(t, p)
  return t - r
end

-- States: {k='g', tat}, {k='f', w, c}, {k='s', w, p (previous), c (current)}.
local function decode(v)
  if not v then return nil end
  local n = #v
  local k = v:byte(1)
  if k == 103 and n == 9 then return {k='g', tat=unpack('>d', v, 2)} end
  if k == 102 and n == 17 then
    local w, c = unpack('>dd', v, 2)
    return {k='f', w=w, c=c}
  end
  if k == 115 and n == 25 then
    local w, p, c = unpack('>ddd', v, 2)
    return {k='s', w=w, p=p, c=c}
  end
  return nil -- not a counter (it counts as fresh)
end

local function encode(st)
  if st.k == 'g' then return pack('>Bd', 103, st.tat) end
  if st.k == 'f' then return pack('>Bdd', 102, st.w, st.c) end
  return pack('>Bddd', 115, st.w, st.p, st.c)
end

local function fresh(sp, t)
  if sp.k == 'g' then return {k='g', tat=t} end
  local w = align(t, sp.b)
  if sp.k == 'f' then return {k='f', w=w, c=0} end
  return {k='s', w=w, p=0, c=0}
end

local function drained(sp, at)
  if sp.k == 'g' then return {k='g', tat=at + sp.a * sp.b} end
  local w = align(at, sp.b)
  if sp.k == 'f' then return {k='f', w=w, c=sp.a} end
  return {k='s', w=w, p=sp.a, c=sp.a}
end

local function normalize(sp, st, t)
  if not st or st.k ~= sp.k then return fresh(sp, t), t end
  if sp.k == 'g' then return st, t end
  if t < st.w then t = st.w end
  local w = align(t, sp.b)
  if w == st.w then return st, t end
  if sp.k == 'f' then return {k='f', w=w, c=0}, t end
  if w == st.w + sp.b then return {k='s', w=w, p=st.c, c=0}, t end
  return {k='s', w=w, p=0, c=0}, t
end

-- The elapsed time within a sliding window from which previous*(P - e) + (current + cost)*P
-- fits in limit*P, or nil.
local function earliest_fit(n, P, previous, current, cost)
  local k = n - current - cost
  if k < 0 then return nil end
  if previous == 0 or k >= previous then return 0 end
  local f = muldiv(P, k, previous)
  return P - f
end

-- Returns allowed, the state to store if applied, remaining, reset after, retry after (or nil).
local function evaluate(sp, st, t, cost)
  st, t = normalize(sp, st, t)
  if sp.k == 'g' then
    local T, B = sp.a, sp.b
    local cap = T * B
    local base = max(st.tat, t)
    local charged = base + cost * T
    local allowed = charged - t <= cap
    local tat = base
    if allowed then tat = charged end
    local used = tat - t
    local left = cap - used
    if left < 0 then left = 0 end
    local remaining = divmod(left, T)
    local retry = nil
    if not allowed and cost <= B then retry = charged - t - cap end
    return allowed, {k='g', tat=tat}, remaining, used, retry
  end
  local n, P = sp.a, sp.b
  if sp.k == 'f' then
    local allowed = st.c + cost <= n
    local c = st.c
    if allowed then c = c + cost end
    local until_next = st.w + P - t
    if until_next < 0 then until_next = 0 end
    local remaining = n - c
    if remaining < 0 then remaining = 0 end
    local reset = until_next
    if c == 0 then reset = 0 end
    local retry = nil
    if not allowed and cost <= n then retry = until_next end
    return allowed, {k='f', w=st.w, c=c}, remaining, reset, retry
  end
  -- Sliding: with q = ceil(previous*(P - e)/P), the estimate fits iff current + cost + q <= n.
  local e = t - st.w
  local q = st.p
  if e > 0 then
    local r
    q, r = muldiv(st.p, P - e, P)
    if r > 0 then q = q + 1 end
  end
  local k = n - st.c - cost
  local allowed = k >= 0 and q <= k
  local c = st.c
  if allowed then c = c + cost end
  local remaining = n - c - q
  if remaining < 0 then remaining = 0 end
  local window_end = st.w + P
  local reset = 0
  if c > 0 then
    reset = window_end + P - t
  elseif st.p > 0 then
    reset = window_end - t
  end
  local retry = nil
  if not allowed and cost <= n then
    local at
    local fit = earliest_fit(n, P, st.p, st.c, cost)
    if fit then
      at = st.w + fit
    else
      at = st.w + P + (earliest_fit(n, P, st.c, 0, cost) or P)
    end
    retry = at - t
    if retry < 0 then retry = 0 end
  end
  return allowed, {k='s', w=st.w, p=st.p, c=c}, remaining, reset, retry
end

local function refund(sp, st, t, amount)
  st, t = normalize(sp, st, t)
  if sp.k == 'g' then
    local tat = st.tat - amount * sp.a
    if tat < t then tat = t end
    return {k='g', tat=tat}
  end
  if sp.k == 'f' then
    local c = st.c - amount
    if c < 0 then c = 0 end
    return {k='f', w=st.w, c=c}
  end
  local from_current = min(amount, st.c)
  local p = st.p - (amount - from_current)
  if p < 0 then p = 0 end
  return {k='s', w=st.w, p=p, c=st.c - from_current}
end

local function most_restrictive(sp, a, b, t)
  local x = normalize(sp, a, t)
  local y = normalize(sp, b, t)
  if sp.k == 'g' then return {k='g', tat=max(x.tat, y.tat)} end
  if sp.k == 'f' then return {k='f', w=x.w, c=max(x.c, y.c)} end
  return {k='s', w=x.w, p=max(x.p, y.p), c=max(x.c, y.c)}
end

local function idle_at(sp, st)
  if st.k == 'g' then return st.tat end
  if st.k == 'f' then return st.w + sp.b end
  return st.w + 2 * sp.b
end

-- The time to live of a counter idle from `idle` on: rounded up to a millisecond, at least one,
-- plus the margin; as an integer string (Redis writes a number argument with '%.17g', which
-- costs more).
local function ttl(idle)
  local ms = floor((idle - now + 999) / 1000)
  if ms < 1 then ms = 1 end
  return format('%d', ms + margin)
end

-- Stores a counter, or deletes it when it is idle (an idle counter equals a fresh one). It
-- expires when it turns idle, rounded up to a millisecond, plus the margin: expiry only collects
-- idle counters, so late is always safe.
local function store(key, sp, st)
  -- `st` is as of now (evaluated, refunded or fresh): idle needs no normalizing.
  local idle = st == nil
  if not idle then
    if st.k == 'g' then idle = st.tat <= now
    elseif st.k == 'f' then idle = st.c == 0
    else idle = st.p == 0 and st.c == 0 end
  end
  if idle then
    call('DEL', key)
    return
  end
  call('SET', key, encode(st), 'PX', ttl(idle_at(sp, st)))
end

-- What a cost-1 request would get, without charging it: allowed, remaining, reset, retry.
local function peek(sp, st, t)
  local allowed, _, _, _, retry = evaluate(sp, st, t, 1)
  local _, _, remaining, reset = evaluate(sp, st, t, 0)
  return allowed, remaining, reset, retry
end

-- Evaluation a is more restrictive than b: a denial over an allowance; among denials the longer
-- wait; among allowances the fewer remaining, then the longer reset.
local function rank(e)
  local wait = e.retry
  if wait == nil then
    if e.allowed then wait = 0 else wait = huge end
  end
  local denied = 1
  if e.allowed then denied = 0 end
  return denied, wait, -e.remaining, e.reset
end

local function more_restrictive(a, b)
  local a1, a2, a3, a4 = rank(a)
  local b1, b2, b3, b4 = rank(b)
  if a1 ~= b1 then return a1 > b1 end
  if a2 ~= b2 then return a2 > b2 end
  if a3 ~= b3 then return a3 > b3 end
  return a4 > b4
end

-- Buckets: each sentinel read once per call. Its value is '<secret id> <drained from>'; what a
-- bucket is found to be is kept per secret id (an operation of an older secret may share the
-- call).
local LOST, FOREIGN = -1, -2
local seen
local function bucket(i, id, recover)
  local buckets = seen[id]
  if not buckets then
    buckets = {}
    seen[id] = buckets
  end
  local found = buckets[i]
  if found ~= nil and not (found == LOST and recover) then return found end
  local v = call('GET', K[i])
  if not v then
    if recover then
      found = 0
      if drain then found = now end
      call('SET', K[i], id .. ' ' .. str(found))
    else
      found = LOST
    end
  else
    local owner, from = match(v, '^(%S+) (%d+)$')
    if owner == id then found = num(from) else found = FOREIGN end
  end
  buckets[i] = found
  return found
end

-- The targets of the operation being run, as three arrays (reused from one operation to the
-- next): counter key index, sentinel key index, limit.
local tkey, tbucket, tspec, tcount = {}, {}, {}, 0

-- Target i's counter, drained if its bucket was found lost (`tfrom`, set by `run`).
local tfrom = {}
local function load(i)
  local sp = tspec[i]
  local st = decode(call('GET', K[tkey[i]]))
  local from = tfrom[i]
  if from > 0 then st = most_restrictive(sp, st, drained(sp, from), now) end
  return st
end

-- Replies go into one string, 28 bytes per operation (concatenated at the end).
local replies, nreplies
local function reply(status, allowed, deciding, remaining, reset, retry)
  nreplies = nreplies + 1
  replies[nreplies] = pack('>BBHddd', status, allowed and 1 or 0, deciding, remaining or 0,
                           reset or 0, retry or -1)
end

-- The most common operation, a charge of one GCRA counter: `load`, `evaluate` and `store`
-- above, inlined for that case, without a table per step. `from` is as in `load`.
local function charge_gcra(sp, key, from, cost)
  local T = sp.a
  local cap = T * sp.b
  local v = call('GET', key)
  local tat = now
  if v and #v == 9 and byte(v, 1) == 103 then tat = unpack('>d', v, 2) end
  if from > 0 and from + cap > tat then tat = from + cap end
  local base = now
  if tat > now then base = tat end
  local charged = base + cost * T
  local allowed = charged - now <= cap
  if allowed then tat = charged else tat = base end
  local used = tat - now
  local left = cap - used
  if left < 0 then left = 0 end
  -- divmod(left, T), inlined
  local remaining = floor(left / T)
  local r = left - remaining * T
  if r < 0 then remaining = remaining - 1 elseif r >= T then remaining = remaining + 1 end
  local retry = -1
  if not allowed and cost <= sp.b then retry = charged - now - cap end
  if allowed and cost > 0 then
    if tat <= now then
      call('DEL', key)
    else
      call('PSETEX', key, ttl(tat), pack('>Bd', 103, tat))
    end
  end
  nreplies = nreplies + 1
  replies[nreplies] = pack('>BBHddd', 0, allowed and 1 or 0, 0, remaining, used, retry)
end

local function run(kind, amount, recover, id)
  if kind == 'i' then
    -- A new namespace: the bucket's sentinel, unless it has one.
    local i = tbucket[1]
    if not call('GET', K[i]) then call('SET', K[i], id .. ' 0') end
    return reply(0, false, 0)
  end
  if kind == 'm' or kind == 'M' then
    -- Mark a bucket drained from now (evidence of a loss), or replace a foreign sentinel.
    local i = tbucket[1]
    local found = bucket(i, id, false)
    if kind == 'M' or found >= 0 then
      local from = 0
      if drain then from = now elseif found > 0 then from = found end
      call('SET', K[i], id .. ' ' .. str(from))
      if not seen[id] then seen[id] = {} end
      seen[id][i] = from
    end
    return reply(0, false, 0)
  end
  for i = 1, tcount do
    local found = bucket(tbucket[i], id, recover)
    if found == LOST then return reply(1, false, 0) end
    if found == FOREIGN then return reply(2, false, 0) end
    tfrom[i] = found
  end
  local sp = tspec[1]
  if kind == 'p' then
    local allowed, remaining, reset, retry = peek(sp, load(1), now)
    return reply(0, allowed, 0, remaining, reset, retry)
  end
  if kind == 'r' then
    local refunded = refund(sp, load(1), now, amount)
    store(K[tkey[1]], sp, refunded)
    local allowed, remaining, reset, retry = peek(sp, refunded, now)
    return reply(0, allowed, 0, remaining, reset, retry)
  end
  if kind == 'x' then
    store(K[tkey[1]], sp, nil)
    local _, remaining, reset, retry = peek(sp, nil, now)
    return reply(0, true, 0, remaining, reset, retry)
  end
  if tcount == 1 and sp.k == 'g' then return charge_gcra(sp, K[tkey[1]], tfrom[1], amount) end
  if tcount == 1 then
    -- Charge of one counter: its evaluation is the decision.
    local allowed, st, remaining, reset, retry = evaluate(sp, load(1), now, amount)
    if allowed and amount > 0 then store(K[tkey[1]], sp, st) end
    return reply(0, allowed, 0, remaining, reset, retry)
  end
  -- Charge: every limit evaluated first; all charged, or none.
  local allowed = true
  local deciding, decided = 0, nil
  local evaluations = {}
  for i = 1, tcount do
    local a, st, remaining, reset, retry = evaluate(tspec[i], load(i), now, amount)
    local e = {allowed=a, st=st, remaining=remaining, reset=reset, retry=retry}
    evaluations[i] = e
    if not e.allowed then allowed = false end
    if decided == nil or more_restrictive(e, decided) then
      decided = e
      deciding = i - 1
    end
  end
  if allowed and amount > 0 then
    for i = 1, tcount do store(K[tkey[i]], tspec[i], evaluations[i].st) end
  end
  return reply(0, allowed, deciding, decided.remaining, decided.reset, decided.retry)
end

local KINDS = {[99]='c', [112]='p', [114]='r', [120]='x', [105]='i', [109]='m', [77]='M'}

local function main(keys, args)
  if not call then bind() end
  K = keys
  local blob = args[1]
  local has_now, given_now, drain_flag, nspecs, pos
  has_now, given_now, drain_flag, margin, nspecs, pos = unpack('>BdBdH', blob, 1)
  now = given_now
  if has_now == 0 then
    local t = call('TIME')
    now = num(t[1]) * 1000000 + num(t[2])
  end
  drain = drain_flag == 1
  seen, replies, nreplies = {}, {}, 0
  local specs = {}
  for i = 1, nspecs do
    local k, a, b
    k, a, b, pos = unpack('>Bdd', blob, pos)
    specs[i] = {k=char(k), a=a, b=b}
  end
  local nops
  nops, pos = unpack('>H', blob, pos)
  for _ = 1, nops do
    -- The operation and its first target in one read (the blob ends in 6 bytes of padding,
    -- read as the first target of a last operation without targets).
    local kind, recover, id, amount, count, key, sentinel, spec
    kind, recover, id, amount, count, key, sentinel, spec, pos = unpack('>BBBdHHHH', blob, pos)
    local sp = count == 1 and specs[spec]
    if kind == 99 and sp and sp.k == 'g' then
      -- The most common operation, a charge of one GCRA counter, without `run`.
      local found = bucket(sentinel, args[1 + id], recover == 1)
      if found == LOST then reply(1, false, 0)
      elseif found == FOREIGN then reply(2, false, 0)
      else charge_gcra(sp, K[key], found, amount) end
    else
      pos = pos - 6 -- the targets again, from the first
      tcount = count
      for i = 1, count do
        key, sentinel, spec, pos = unpack('>HHH', blob, pos)
        tkey[i] = key
        tbucket[i] = sentinel
        tspec[i] = specs[spec]
      end
      run(KINDS[kind], amount, recover == 1, args[1 + id])
    end
  end
  return concat(replies)
end
