#!lua name=resv
--[[
  resv: the reservation engine's commits, as one Redis Functions library.

  This library is the authority. The Python engine and the HTTP API only call
  it; every rule (capacity, booking window, per-request and per-client limits,
  waiting list, versions, idempotency) is enforced here, so an operator's
  `redis-cli FCALL` is held to exactly the same rules as a client request.

  Time comes only from the server (`TIME`), in microseconds since the epoch.
  Every call that reaches a decision appends one event to its partition's
  stream (plus one event per consequence: a notified or fulfilled waiting-list
  entry); the stream id is the canonical order of decisions. Malformed calls
  (wrong key or argument count, an argument of the wrong shape) get an error
  reply starting with `BAD_ARGUMENT` and write nothing at all.

  Key map (see lua/README.md). All keys of one call share the partition's hash
  tag `{p<N>}`, N = crc32(resource_id) mod partitions, and are passed in KEYS
  in this fixed order (called "the resource keys" below):
    KEYS[1] resv:{pN}:res:<rid>  hash   the resource: rules, state, version, reserved
    KEYS[2] resv:{pN}:bk:<rid>   hash   reservation_id -> reservation record (JSON)
    KEYS[3] resv:{pN}:cl:<rid>   hash   client_id -> confirmed quantity
    KEYS[4] resv:{pN}:wl:<rid>   zset   WAITING entry ids, by join time (us)
    KEYS[5] resv:{pN}:we:<rid>   hash   'e:'..entry_id -> entry (JSON); 'c:'..client_id -> active entry id
    KEYS[6] resv:{pN}:events     stream the partition's decision log
  resv_reserve also takes
    KEYS[7] resv:{pN}:req:<rid>:<request_id>  string  idempotency record (JSON), expires

  Decision replies are flat field/value arrays (readable in redis-cli), with at
  least: type, decision (CONFIRMED|REJECTED), code (public: RESOURCE_FULL,
  RESOURCE_CLOSED, INVALID_STATE; empty when confirmed), reason (exact, for
  operators), resource_id, ts (server time, us), version, remaining.

  Who asked: every write entry point takes an optional trailing `actor`
  (1-64 printable ASCII chars, no ':' and no space; '' or absent = none):
  the API passes the caller's key id (`client#1`), an ops script its own
  name. It is recorded as field `actor` in every event the call emits
  (consequences included) and is never part of a reply.

  Every event also records `lib`, the LIBRARY_VERSION below that decided it
  (events without it were decided by version 1). Each release keeps its
  number forever: a code change needs a new number, and the package keeps
  every earlier release in lua/releases/ for `resv verify` and `resv restore`.
]]

local LIBRARY_VERSION = '2'

local MAX_INT = 1000000000          -- capacity, quantities, limits
local MAX_TIME = 9000000000000000   -- us; keeps integers exact in doubles
local MAX_ID = 128                  -- client, request and entry ids
local MAX_RESOURCE_ID = 64
local MAX_TYPE = 64                 -- resource types
local MAX_ACTOR = 64
local MAX_WALK = 1000               -- waiting entries scanned per freeing
local DEFAULT_IDEMPOTENCY_TTL_MS = 86400000
local MAX_IDEMPOTENCY_TTL_MS = 31536000000  -- 365 days

-- ---------------------------------------------------------------- helpers

local function bad(msg)
  return redis.error_reply('BAD_ARGUMENT ' .. msg)
end

local function bad_id(name)
  return bad(name .. ' must be 1-' .. MAX_ID .. ' printable ASCII chars')
end

local function fmt(n)
  return string.format('%d', n)
end

-- The only clock. `resv verify` replays recorded times by swapping this one
-- function on a scratch server; keep the marker lines intact.
-- @clock-begin
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- @clock-end

-- Parses a decimal integer in [lo, hi]; nil when it is not one.
local function int_in(s, lo, hi)
  if type(s) ~= 'string' or #s == 0 or #s > 17 or not s:match('^%-?%d+$') then
    return nil
  end
  local n = tonumber(s)
  if n == nil or n < lo or n > hi then return nil end
  return n
end

local function valid_resource_id(s)
  return type(s) == 'string' and #s >= 1 and #s <= MAX_RESOURCE_ID
    and s:match('^[%w_.%-]+$') ~= nil
end

-- Printable ASCII, no spaces: safe in key names, logs and URLs.
local function valid_id(s)
  return type(s) == 'string' and #s >= 1 and #s <= MAX_ID
    and s:match('^[\33-\126]+$') ~= nil
end

-- The optional actor: nil (none), the actor, or (false, error reply).
-- Printable ASCII without ':' (it may become part of a key name) or space.
local function parse_actor(s)
  if s == nil or s == '' then return nil end
  if type(s) == 'string' and #s <= MAX_ACTOR and s:match('^[\33-\57\59-\126]+$') then return s end
  return false, bad('actor must be 1-' .. MAX_ACTOR .. " printable ASCII chars without ':' or space")
end

-- Checks the resource keys against the resource id, so a caller can never
-- point a call at another resource's keys or another partition's stream.
local function resource_keys(keys, rid, nkeys)
  if #keys ~= nkeys then
    return nil, bad('expected ' .. nkeys .. ' keys, got ' .. #keys)
  end
  if not valid_resource_id(rid) then
    return nil, bad('resource_id must be 1-' .. MAX_RESOURCE_ID .. ' chars of [A-Za-z0-9_.-]')
  end
  local suffix = 'res:' .. rid
  local k1 = keys[1]
  if #k1 <= #suffix or k1:sub(-#suffix) ~= suffix then
    return nil, bad('KEYS[1] is not the key of resource ' .. rid)
  end
  local prefix = k1:sub(1, #k1 - #suffix)
  if not prefix:match('^resv:{p%d+}:$') then
    return nil, bad('KEYS[1] must look like resv:{p<N>}:res:<resource_id>')
  end
  local K = {res = k1, bk = prefix .. 'bk:' .. rid, cl = prefix .. 'cl:' .. rid,
             wl = prefix .. 'wl:' .. rid, we = prefix .. 'we:' .. rid,
             events = prefix .. 'events', prefix = prefix}
  local expected = {K.res, K.bk, K.cl, K.wl, K.we, K.events}
  for i = 2, 6 do
    if keys[i] ~= expected[i] then
      return nil, bad('KEYS[' .. i .. '] must be ' .. expected[i])
    end
  end
  return K
end

local function load_resource(K)
  local flat = redis.call('HGETALL', K.res)
  if #flat == 0 then return nil end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  r.capacity = tonumber(r.capacity)
  r.reserved = tonumber(r.reserved)
  r.version = tonumber(r.version)
  r.opens_at = tonumber(r.opens_at)           -- nil when unset
  r.closes_at = tonumber(r.closes_at)
  r.max_per_request = tonumber(r.max_per_request)
  r.max_per_client = tonumber(r.max_per_client)
  return r
end

local function opt(n)
  if n == nil then return '' end
  return fmt(n)
end

-- Appends one event; fields with an empty value are left out. Every event
-- says who asked (K.actor, set by the entry point) and which release decided.
local function emit(K, ev)
  local args = {'XADD', K.events, '*'}
  for i = 1, #ev, 2 do
    local v = ev[i + 1]
    if v ~= nil and v ~= '' then
      args[#args + 1] = ev[i]
      args[#args + 1] = tostring(v)
    end
  end
  if K.actor then
    args[#args + 1] = 'actor'
    args[#args + 1] = K.actor
  end
  args[#args + 1] = 'lib'
  args[#args + 1] = LIBRARY_VERSION
  return redis.call(unpack(args))
end

-- The version/remaining pair every decision reports ('' for a resource
-- that does not exist).
local function counters(r)
  if not r then return {'version', '', 'remaining', ''} end
  return {'version', fmt(r.version), 'remaining', fmt(r.capacity - r.reserved)}
end

-- Logs the decision and returns it: the reply is the logged event.
local function decided(K, ev)
  emit(K, ev)
  return ev
end

-- resv_reserve replies say whether they repeat an earlier decision; the
-- flag is never logged (a retry logs RESERVATION_REPLAYED instead).
local function with_replayed(reply, flag)
  reply[#reply + 1] = 'replayed'
  reply[#reply + 1] = flag
  return reply
end

local function rules_fields(r)
  return {'resource_type', r.type, 'capacity', fmt(r.capacity), 'state', r.state,
          'opens_at', opt(r.opens_at), 'closes_at', opt(r.closes_at),
          'waitlist_enabled', r.waitlist_enabled,
          'max_per_request', opt(r.max_per_request),
          'max_per_client', opt(r.max_per_client)}
end

-- Appends the items of each list, in order, to t.
local function append(t, ...)
  for n = 1, select('#', ...) do
    local more = select(n, ...)
    for i = 1, #more do t[#t + 1] = more[i] end
  end
  return t
end

-- Status as clients see it: CLOSED (state or window), FULL, or OPEN.
local function public_status(r, now)
  if r.state ~= 'OPEN' then return 'CLOSED' end
  if r.opens_at and now < r.opens_at then return 'CLOSED' end
  if r.closes_at and now >= r.closes_at then return 'CLOSED' end
  if r.capacity - r.reserved <= 0 then return 'FULL' end
  return 'OPEN'
end

-- Picks, in join order, the WAITING entries whose quantities fit in `freed`;
-- an entry too large is skipped and keeps its place. Reads only.
local function entries_to_notify(K, freed)
  local picked = {}
  if freed <= 0 then return picked end
  local ids = redis.call('ZRANGE', K.wl, 0, MAX_WALK - 1)
  for _, eid in ipairs(ids) do
    local raw = redis.call('HGET', K.we, 'e:' .. eid)
    if raw then
      local e = cjson.decode(raw)
      local q = tonumber(e.quantity)
      if q <= freed then
        picked[#picked + 1] = e
        freed = freed - q
        if freed == 0 then break end
      end
    end
  end
  return picked
end

-- Writes: marks the picked entries NOTIFIED, one event each.
local function notify(K, picked, now, r)
  for _, e in ipairs(picked) do
    e.status = 'NOTIFIED'
    e.notified_at = fmt(now)
    redis.call('HSET', K.we, 'e:' .. e.entry_id, cjson.encode(e))
    redis.call('ZREM', K.wl, e.entry_id)
    emit(K, {'type', 'WAITLIST_NOTIFIED', 'resource_id', e.resource_id,
             'client_id', e.client_id, 'quantity', e.quantity, 'entry_id', e.entry_id,
             'ts', fmt(now), 'version', fmt(r.version),
             'remaining', fmt(r.capacity - r.reserved)})
  end
end

local function notify_allowed(r)
  return r.state == 'OPEN' and r.waitlist_enabled == '1'
end

-- Parses one rule value; returns (value, nil) or (nil, error reply).
-- Optional numeric rules take '' to clear them.
local function parse_rule(field, v)
  if field == 'type' then
    if type(v) == 'string' and #v >= 1 and #v <= MAX_TYPE and v:match('^[\33-\126]+$') then return v end
    return nil, bad('type must be 1-' .. MAX_TYPE .. ' printable characters')
  elseif field == 'capacity' then
    local n = int_in(v, 0, MAX_INT)
    if n then return n end
    return nil, bad('capacity must be an integer in 0..' .. MAX_INT)
  elseif field == 'state' then
    if v == 'OPEN' or v == 'CLOSED' then return v end
    return nil, bad('state must be OPEN or CLOSED')
  elseif field == 'waitlist_enabled' then
    if v == '1' or v == 'true' then return '1' end
    if v == '0' or v == 'false' then return '0' end
    return nil, bad('waitlist_enabled must be 0 or 1')
  elseif field == 'opens_at' or field == 'closes_at' then
    if v == '' then return false end
    local n = int_in(v, 0, MAX_TIME)
    if n then return n end
    return nil, bad(field .. ' must be empty or microseconds since the epoch')
  elseif field == 'max_per_request' or field == 'max_per_client' then
    if v == '' then return false end
    local n = int_in(v, 1, MAX_INT)
    if n then return n end
    return nil, bad(field .. ' must be empty or an integer in 1..' .. MAX_INT)
  end
  return nil, bad('unknown rule ' .. tostring(field))
end

local function window_ok(opens_at, closes_at)
  return not (opens_at and closes_at and opens_at >= closes_at)
end

local function save_rules(K, r, now)
  redis.call('HSET', K.res, 'type', r.type, 'capacity', fmt(r.capacity),
             'state', r.state, 'version', fmt(r.version),
             'opens_at', opt(r.opens_at), 'closes_at', opt(r.closes_at),
             'waitlist_enabled', r.waitlist_enabled,
             'max_per_request', opt(r.max_per_request),
             'max_per_client', opt(r.max_per_client), 'updated_at', fmt(now))
end

-- ------------------------------------------------------------ entry points

--[[
  resv_create: creates a resource, OPEN, version 1, nothing reserved.
  KEYS[1..6]  the resource keys
  ARGV[1] resource_id     1-64 chars of [A-Za-z0-9_.-]
  ARGV[2] type            1-64 printable chars (e.g. meetup, table, seat)
  ARGV[3] capacity        integer 0..1e9
  ARGV[4] opens_at        '' or us since epoch: reservations accepted from then
  ARGV[5] closes_at       '' or us since epoch: refused from then (> opens_at)
  ARGV[6] waitlist_enabled 0|1
  ARGV[7] max_per_request '' or 1..1e9
  ARGV[8] max_per_client  '' or 1..1e9 (total confirmed per client)
  ARGV[9] actor           optional: who asked (see the top of this file)
  Returns: type RESOURCE_CREATED, decision CONFIRMED, version 1, remaining, and
  the rules (resource_type, capacity, state, opens_at, closes_at,
  waitlist_enabled, max_per_request, max_per_client); or type RESOURCE_REJECTED, decision REJECTED, code INVALID_STATE,
  reason ALREADY_EXISTS. Error BAD_ARGUMENT on a malformed call (no write).
]]
local function create(keys, args)
  local rid = args[1]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  if #args ~= 8 and #args ~= 9 then return bad('expected 8 or 9 arguments, got ' .. #args) end
  local actor, aerr = parse_actor(args[9])
  if aerr then return aerr end
  K.actor = actor
  local r = {state = 'OPEN'}
  local fields = {'type', 'capacity', 'opens_at', 'closes_at', 'waitlist_enabled',
                  'max_per_request', 'max_per_client'}
  for i, f in ipairs(fields) do
    local v, e = parse_rule(f, args[i + 1])
    if e then return e end
    r[f] = v or nil
  end
  if not window_ok(r.opens_at, r.closes_at) then return bad('opens_at must be before closes_at') end
  local now = server_now()
  if redis.call('EXISTS', K.res) == 1 then
    return decided(K, append({'type', 'RESOURCE_REJECTED', 'decision', 'REJECTED', 'code', 'INVALID_STATE',
                              'reason', 'ALREADY_EXISTS', 'resource_id', rid, 'ts', fmt(now)},
                             counters(load_resource(K))))
  end
  r.reserved = 0
  r.version = 1
  save_rules(K, r, now)
  redis.call('HSET', K.res, 'reserved', '0', 'created_at', fmt(now), 'seq', '0')
  return decided(K, append({'type', 'RESOURCE_CREATED', 'decision', 'CONFIRMED', 'resource_id', rid,
                            'ts', fmt(now)}, counters(r), rules_fields(r)))
end

--[[
  resv_configure: changes rules with compare-and-set on the version.
  KEYS[1..6]  the resource keys
  ARGV[1] resource_id
  ARGV[2] expected_version  the version the caller read; a stale one is refused
  ARGV[3..] field, value pairs, at least one rule; fields: type, capacity, state
          (OPEN|CLOSED), opens_at, closes_at, waitlist_enabled, max_per_request,
          max_per_client ('' clears an optional rule); and, at most once, the
          pair `actor <id>`: who asked (not a rule, not versioned; see the top
          of this file)
  Returns: type RULES_CHANGED, decision CONFIRMED, the new version and rules;
  or RULES_REJECTED, REJECTED, INVALID_STATE with reason UNKNOWN_RESOURCE,
  VERSION_MISMATCH, WINDOW_INVERTED (the change, with the stored rules, would
  make closes_at <= opens_at) or CAPACITY_BELOW_RESERVED (capacity may never
  go below what is reserved), plus expected_version and requested (the rule
  field/value pairs asked for, as a JSON array; the actor is its own field).
  Error BAD_ARGUMENT (no write) on a malformed call, a call that gives both
  opens_at and closes_at inverted included, whatever is stored. Raising
  capacity of an OPEN resource notifies waiting entries that fit in the added
  capacity (WAITLIST_NOTIFIED events).
]]
local function configure(keys, args)
  local rid = args[1]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  local expected = int_in(args[2], 0, MAX_INT)
  if not expected then return bad('expected_version must be an integer') end
  if #args < 4 or #args % 2 ~= 0 then return bad('expected field/value pairs after the version') end
  local changes = {}
  local requested = {}
  local actor_given = false
  for i = 3, #args, 2 do
    local f = args[i]
    if f == 'actor' then
      if actor_given then return bad('actor given twice') end
      actor_given = true
      local actor, aerr = parse_actor(args[i + 1])
      if aerr then return aerr end
      K.actor = actor
    else
      local v, e = parse_rule(f, args[i + 1])
      if e then return e end
      changes[f] = v
      requested[#requested + 1] = f
      requested[#requested + 1] = args[i + 1]
    end
  end
  if #requested == 0 then return bad('expected at least one rule field/value pair') end
  if not window_ok(changes.opens_at, changes.closes_at) then return bad('opens_at must be before closes_at') end
  local now = server_now()
  local r = load_resource(K)
  local stored = counters(r)  -- what a refusal reports: the rules stay as they are
  local function reject(reason)
    -- the request itself is logged (as JSON: '' clears a rule), so a replay
    -- re-issues exactly what was refused
    return decided(K, append({'type', 'RULES_REJECTED', 'decision', 'REJECTED', 'code', 'INVALID_STATE',
                              'reason', reason, 'resource_id', rid, 'ts', fmt(now)}, stored,
                             {'expected_version', fmt(expected), 'requested', cjson.encode(requested)}))
  end
  if not r then return reject('UNKNOWN_RESOURCE') end
  if r.version ~= expected then return reject('VERSION_MISMATCH') end
  local old_capacity = r.capacity
  for f, v in pairs(changes) do
    if v == false then r[f] = nil else r[f] = v end
  end
  if not window_ok(r.opens_at, r.closes_at) then return reject('WINDOW_INVERTED') end
  if r.capacity < r.reserved then return reject('CAPACITY_BELOW_RESERVED') end
  local picked = {}
  if notify_allowed(r) and r.capacity > old_capacity then
    picked = entries_to_notify(K, math.min(r.capacity - old_capacity, r.capacity - r.reserved))
  end
  -- writes start here
  r.version = r.version + 1
  save_rules(K, r, now)
  local ev = decided(K, append({'type', 'RULES_CHANGED', 'decision', 'CONFIRMED', 'resource_id', rid,
                                'ts', fmt(now)}, counters(r), rules_fields(r)))
  notify(K, picked, now, r)
  return ev
end

--[[
  resv_open / resv_close: sets the state, same contract as resv_configure with
  the single pair state=OPEN|CLOSED.
  KEYS[1..6]  the resource keys
  ARGV[1] resource_id
  ARGV[2] expected_version
  ARGV[3] actor  optional: who asked (see the top of this file)
]]
local function set_state(state)
  return function(keys, args)
    if #args ~= 2 and #args ~= 3 then
      return bad('expected 2 or 3 arguments: resource_id, expected_version[, actor]')
    end
    return configure(keys, {args[1], args[2], 'state', state, 'actor', args[3] or ''})
  end
end

--[[
  resv_reserve: the commit. Confirms or rejects, on the real state, at server time.
  KEYS[1..6]  the resource keys
  KEYS[7]     resv:{pN}:req:<resource_id>:<request_id>  idempotency record
  ARGV[1] resource_id
  ARGV[2] client_id       1-128 printable ASCII chars
  ARGV[3] quantity        integer 1..1e9
  ARGV[4] request_id      1-128 printable ASCII chars, unique per attempt
  ARGV[5] idempotency ttl in ms (optional; '' or absent: 86400000)
  ARGV[6] actor           optional: who asked (see the top of this file)
  Checks, in order: idempotency (a retry with the same inputs returns the
  original reply with replayed=1 and changes nothing but a RESERVATION_REPLAYED
  event; different inputs -> INVALID_STATE/REQUEST_ID_REUSED), resource exists
  (INVALID_STATE/UNKNOWN_RESOURCE), state (RESOURCE_CLOSED/STATE_CLOSED),
  window (RESOURCE_CLOSED/WINDOW_NOT_OPEN, WINDOW_CLOSED), max_per_request
  (INVALID_STATE/OVER_REQUEST_LIMIT), max_per_client (INVALID_STATE/
  OVER_CLIENT_LIMIT), capacity (RESOURCE_FULL/SOLD_OUT when nothing is left,
  INSUFFICIENT_CAPACITY otherwise).
  Returns: type RESERVATION_CONFIRMED|RESERVATION_REJECTED, decision, code,
  reason, resource_id, client_id, quantity, request_id, reservation_id (when
  confirmed), ts (= confirmed_at), version, remaining, idempotency_ttl_ms
  (when the decision is remembered), replayed (0|1).
  A confirmation also fulfils the client's active waiting-list entry
  (WAITLIST_FULFILLED event). Decisions, rejections included, are remembered
  under the request id for the ttl.
]]
local function reserve(keys, args)
  local rid, client, qty_s, request_id = args[1], args[2], args[3], args[4]
  local K, err = resource_keys(keys, rid, 7)
  if not K then return err end
  if #args < 4 or #args > 6 then return bad('expected 4 to 6 arguments, got ' .. #args) end
  if not valid_id(client) then return bad_id('client_id') end
  local qty = int_in(qty_s, 1, MAX_INT)
  if not qty then return bad('quantity must be an integer in 1..' .. MAX_INT) end
  if not valid_id(request_id) then return bad_id('request_id') end
  if keys[7] ~= K.prefix .. 'req:' .. rid .. ':' .. request_id then
    return bad('KEYS[7] must be ' .. K.prefix .. 'req:' .. rid .. ':' .. request_id)
  end
  local ttl = DEFAULT_IDEMPOTENCY_TTL_MS
  if args[5] and args[5] ~= '' then
    ttl = int_in(args[5], 1, MAX_IDEMPOTENCY_TTL_MS)
    if not ttl then return bad('idempotency ttl must be an integer number of ms') end
  end
  local actor, aerr = parse_actor(args[6])
  if aerr then return aerr end
  K.actor = actor
  local now = server_now()
  local fingerprint = client .. '|' .. fmt(qty)

  local prior = redis.call('GET', keys[7])
  local r = load_resource(K)
  local function rejected(code, reason, record)
    local ev = append({'type', 'RESERVATION_REJECTED', 'decision', 'REJECTED', 'code', code,
                       'reason', reason, 'resource_id', rid, 'client_id', client,
                       'quantity', fmt(qty), 'request_id', request_id, 'ts', fmt(now)},
                      counters(r), {'idempotency_ttl_ms', record and fmt(ttl) or ''})
    if record then
      redis.call('SET', keys[7], cjson.encode({fp = fingerprint, reply = ev}), 'PX', ttl)
    end
    return with_replayed(decided(K, ev), '0')
  end

  if prior then
    local rec = cjson.decode(prior)
    if rec.fp ~= fingerprint then
      return rejected('INVALID_STATE', 'REQUEST_ID_REUSED', false)
    end
    local orig = rec.reply
    local function field(name)
      for i = 1, #orig, 2 do if orig[i] == name then return orig[i + 1] end end
      return ''
    end
    emit(K, append({'type', 'RESERVATION_REPLAYED', 'decision', field('decision'),
                    'code', field('code'), 'reason', field('reason'), 'resource_id', rid,
                    'client_id', client, 'quantity', fmt(qty), 'request_id', request_id,
                    'reservation_id', field('reservation_id'), 'ts', fmt(now)}, counters(r)))
    return with_replayed(orig, '1')
  end

  if not r then return rejected('INVALID_STATE', 'UNKNOWN_RESOURCE', true) end
  if r.state ~= 'OPEN' then return rejected('RESOURCE_CLOSED', 'STATE_CLOSED', true) end
  if r.opens_at and now < r.opens_at then return rejected('RESOURCE_CLOSED', 'WINDOW_NOT_OPEN', true) end
  if r.closes_at and now >= r.closes_at then return rejected('RESOURCE_CLOSED', 'WINDOW_CLOSED', true) end
  if r.max_per_request and qty > r.max_per_request then
    return rejected('INVALID_STATE', 'OVER_REQUEST_LIMIT', true)
  end
  if r.max_per_client then
    local held = tonumber(redis.call('HGET', K.cl, client) or '0')
    if held + qty > r.max_per_client then
      return rejected('INVALID_STATE', 'OVER_CLIENT_LIMIT', true)
    end
  end
  local remaining = r.capacity - r.reserved
  if qty > remaining then
    return rejected('RESOURCE_FULL', remaining == 0 and 'SOLD_OUT' or 'INSUFFICIENT_CAPACITY', true)
  end
  local entry_id = redis.call('HGET', K.we, 'c:' .. client)
  local entry = entry_id and cjson.decode(redis.call('HGET', K.we, 'e:' .. entry_id))

  -- writes start here (the hot path: every redis.call saved counts)
  local seq = fmt((tonumber(r.seq) or 0) + 1)
  local reservation_id = rid .. '~' .. seq
  local ts, qty_s, version_s = fmt(now), fmt(qty), fmt(r.version)
  r.reserved = r.reserved + qty
  redis.call('HSET', K.res, 'reserved', fmt(r.reserved), 'seq', seq)
  redis.call('HINCRBY', K.cl, client, qty)
  redis.call('HSET', K.bk, reservation_id, cjson.encode({
    reservation_id = reservation_id, resource_id = rid, client_id = client,
    quantity = qty_s, status = 'CONFIRMED', confirmed_at = ts,
    request_id = request_id, version = version_s}))
  local ev = {'type', 'RESERVATION_CONFIRMED', 'decision', 'CONFIRMED', 'code', '',
              'reason', 'CONFIRMED', 'resource_id', rid, 'client_id', client,
              'quantity', qty_s, 'request_id', request_id,
              'reservation_id', reservation_id, 'ts', ts,
              'version', version_s, 'remaining', fmt(r.capacity - r.reserved),
              'idempotency_ttl_ms', fmt(ttl)}
  redis.call('SET', keys[7], cjson.encode({fp = fingerprint, reply = ev}), 'PX', ttl)
  emit(K, ev)
  if entry then
    entry.status = 'FULFILLED'
    entry.fulfilled_at = fmt(now)
    redis.call('HSET', K.we, 'e:' .. entry_id, cjson.encode(entry))
    redis.call('HDEL', K.we, 'c:' .. client)
    redis.call('ZREM', K.wl, entry_id)
    emit(K, {'type', 'WAITLIST_FULFILLED', 'resource_id', rid, 'client_id', client,
             'quantity', entry.quantity, 'entry_id', entry_id,
             'reservation_id', reservation_id, 'ts', fmt(now),
             'version', fmt(r.version), 'remaining', fmt(r.capacity - r.reserved)})
  end
  return with_replayed(ev, '0')
end

local function reservation_fields(b)
  return {'reservation_id', b.reservation_id, 'resource_id', b.resource_id,
          'client_id', b.client_id, 'quantity', b.quantity, 'status', b.status,
          'confirmed_at', b.confirmed_at, 'cancelled_at', b.cancelled_at or '',
          'request_id', b.request_id}
end

--[[
  resv_cancel: cancels a confirmed reservation and frees its capacity. Idempotent.
  KEYS[1..6]  the resource keys
  ARGV[1] resource_id
  ARGV[2] reservation_id  as returned by resv_reserve (<resource_id>~<n>)
  ARGV[3] actor           optional: who asked (see the top of this file)
  Returns: type RESERVATION_CANCELLED (decision CONFIRMED) with the reservation
  fields, or CANCEL_REPLAYED with the original cancellation when it was already
  cancelled, or CANCEL_REJECTED (REJECTED, INVALID_STATE, UNKNOWN_RESERVATION).
  Cancelling works in any state; when the resource is OPEN with its waiting
  list on, waiting entries that fit in the freed quantity are NOTIFIED.
]]
local function cancel(keys, args)
  local rid, reservation_id = args[1], args[2]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  if #args ~= 2 and #args ~= 3 then return bad('expected 2 or 3 arguments: resource_id, reservation_id[, actor]') end
  if not valid_id(reservation_id) then return bad_id('reservation_id') end
  local actor, aerr = parse_actor(args[3])
  if aerr then return aerr end
  K.actor = actor
  local now = server_now()
  local r = load_resource(K)
  local raw = redis.call('HGET', K.bk, reservation_id)
  if not raw then
    return decided(K, append({'type', 'CANCEL_REJECTED', 'decision', 'REJECTED', 'code', 'INVALID_STATE',
                              'reason', 'UNKNOWN_RESERVATION', 'resource_id', rid,
                              'reservation_id', reservation_id, 'ts', fmt(now)}, counters(r)))
  end
  local b = cjson.decode(raw)
  if b.status == 'CANCELLED' then
    return decided(K, append({'type', 'CANCEL_REPLAYED', 'decision', 'CONFIRMED',
                              'reason', 'ALREADY_CANCELLED', 'ts', fmt(now)}, counters(r),
                             reservation_fields(b)))
  end
  local qty = tonumber(b.quantity)
  r.reserved = r.reserved - qty
  local picked = {}
  if notify_allowed(r) then picked = entries_to_notify(K, qty) end
  -- writes start here
  b.status = 'CANCELLED'
  b.cancelled_at = fmt(now)
  redis.call('HSET', K.bk, reservation_id, cjson.encode(b))
  redis.call('HSET', K.res, 'reserved', fmt(r.reserved))
  if redis.call('HINCRBY', K.cl, b.client_id, -qty) <= 0 then
    redis.call('HDEL', K.cl, b.client_id)
  end
  local ev = decided(K, append({'type', 'RESERVATION_CANCELLED', 'decision', 'CONFIRMED',
                                'reason', 'CANCELLED', 'ts', fmt(now)}, counters(r),
                               reservation_fields(b)))
  notify(K, picked, now, r)
  return ev
end

local function entry_fields(K, e)
  local position = ''
  if e.status == 'WAITING' then
    local rank = redis.call('ZRANK', K.wl, e.entry_id)
    if rank then position = fmt(rank + 1) end
  end
  return {'entry_id', e.entry_id, 'resource_id', e.resource_id, 'client_id', e.client_id,
          'quantity', e.quantity, 'status', e.status, 'position', position,
          'joined_at', e.joined_at, 'notified_at', e.notified_at or '',
          'left_at', e.left_at or '', 'fulfilled_at', e.fulfilled_at or ''}
end

--[[
  resv_wl_join: joins the resource's waiting list (one active entry per client).
  KEYS[1..6]  the resource keys
  ARGV[1] resource_id
  ARGV[2] client_id
  ARGV[3] quantity  integer 1..1e9, what the client wants when notified
  ARGV[4] actor     optional: who asked (see the top of this file)
  Returns: type WAITLIST_JOINED (decision CONFIRMED, created 1) with the entry
  fields (entry_id, status WAITING, position 1-based); WAITLIST_JOIN_REPLAYED
  (created 0) with the client's existing WAITING or NOTIFIED entry; or
  WAITLIST_REJECTED with INVALID_STATE/UNKNOWN_RESOURCE, WAITLIST_DISABLED,
  OVER_REQUEST_LIMIT, or RESOURCE_CLOSED/STATE_CLOSED, WINDOW_CLOSED.
]]
local function wl_join(keys, args)
  local rid, client, qty_s = args[1], args[2], args[3]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  if #args ~= 3 and #args ~= 4 then return bad('expected 3 or 4 arguments: resource_id, client_id, quantity[, actor]') end
  if not valid_id(client) then return bad_id('client_id') end
  local qty = int_in(qty_s, 1, MAX_INT)
  if not qty then return bad('quantity must be an integer in 1..' .. MAX_INT) end
  local actor, aerr = parse_actor(args[4])
  if aerr then return aerr end
  K.actor = actor
  local now = server_now()
  local r = load_resource(K)
  local function rejected(code, reason)
    return decided(K, append({'type', 'WAITLIST_REJECTED', 'decision', 'REJECTED', 'code', code,
                              'reason', reason, 'resource_id', rid, 'client_id', client,
                              'quantity', fmt(qty), 'ts', fmt(now)}, counters(r)))
  end
  if not r then return rejected('INVALID_STATE', 'UNKNOWN_RESOURCE') end
  local existing = redis.call('HGET', K.we, 'c:' .. client)
  if existing then
    local e = cjson.decode(redis.call('HGET', K.we, 'e:' .. existing))
    return decided(K, append({'type', 'WAITLIST_JOIN_REPLAYED', 'decision', 'CONFIRMED',
                              'reason', 'ALREADY_JOINED', 'ts', fmt(now)}, counters(r),
                             {'created', '0'}, entry_fields(K, e)))
  end
  if r.waitlist_enabled ~= '1' then return rejected('INVALID_STATE', 'WAITLIST_DISABLED') end
  if r.state ~= 'OPEN' then return rejected('RESOURCE_CLOSED', 'STATE_CLOSED') end
  if r.closes_at and now >= r.closes_at then return rejected('RESOURCE_CLOSED', 'WINDOW_CLOSED') end
  if r.max_per_request and qty > r.max_per_request then
    return rejected('INVALID_STATE', 'OVER_REQUEST_LIMIT')
  end
  -- Join order is server time; two joins in the same microsecond keep their
  -- commit order by taking the next free score.
  local score = now
  local last = redis.call('ZRANGE', K.wl, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
  -- writes start here
  local seq = redis.call('HINCRBY', K.res, 'seq', 1)
  local entry_id = rid .. '~w' .. fmt(seq)
  local e = {entry_id = entry_id, resource_id = rid, client_id = client,
             quantity = fmt(qty), status = 'WAITING', joined_at = fmt(now)}
  redis.call('HSET', K.we, 'e:' .. entry_id, cjson.encode(e), 'c:' .. client, entry_id)
  redis.call('ZADD', K.wl, score, entry_id)
  return decided(K, append({'type', 'WAITLIST_JOINED', 'decision', 'CONFIRMED', 'reason', 'JOINED',
                            'ts', fmt(now)}, counters(r), {'created', '1'}, entry_fields(K, e)))
end

--[[
  resv_wl_leave: leaves the waiting list. Idempotent.
  KEYS[1..6]  the resource keys
  ARGV[1] resource_id
  ARGV[2] entry_id  as returned by resv_wl_join (<resource_id>~w<n>)
  ARGV[3] actor     optional: who asked (see the top of this file)
  Returns: type WAITLIST_LEFT (decision CONFIRMED) with the entry fields,
  status LEFT; WAITLIST_LEAVE_REPLAYED when it had already left; or
  WAITLIST_LEAVE_REJECTED (INVALID_STATE) with reason UNKNOWN_ENTRY, or
  ENTRY_FULFILLED when the entry has already become a reservation.
]]
local function wl_leave(keys, args)
  local rid, entry_id = args[1], args[2]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  if #args ~= 2 and #args ~= 3 then return bad('expected 2 or 3 arguments: resource_id, entry_id[, actor]') end
  if not valid_id(entry_id) then return bad_id('entry_id') end
  local actor, aerr = parse_actor(args[3])
  if aerr then return aerr end
  K.actor = actor
  local now = server_now()
  local r = load_resource(K)
  local raw = redis.call('HGET', K.we, 'e:' .. entry_id)
  local base = append({'ts', fmt(now)}, counters(r))
  if not raw or not r then
    return decided(K, append({'type', 'WAITLIST_LEAVE_REJECTED', 'decision', 'REJECTED',
                              'code', 'INVALID_STATE', 'reason', 'UNKNOWN_ENTRY',
                              'resource_id', rid, 'entry_id', entry_id}, base))
  end
  local e = cjson.decode(raw)
  if e.status == 'LEFT' or e.status == 'FULFILLED' then
    local left = e.status == 'LEFT'
    return decided(K, append({'type', left and 'WAITLIST_LEAVE_REPLAYED' or 'WAITLIST_LEAVE_REJECTED',
                              'decision', left and 'CONFIRMED' or 'REJECTED',
                              'code', left and '' or 'INVALID_STATE',
                              'reason', left and 'ALREADY_LEFT' or 'ENTRY_FULFILLED'},
                             base, entry_fields(K, e)))
  end
  -- writes start here
  e.status = 'LEFT'
  e.left_at = fmt(now)
  redis.call('HSET', K.we, 'e:' .. entry_id, cjson.encode(e))
  redis.call('HDEL', K.we, 'c:' .. e.client_id)
  redis.call('ZREM', K.wl, entry_id)
  return decided(K, append({'type', 'WAITLIST_LEFT', 'decision', 'CONFIRMED', 'reason', 'LEFT'},
                           base, entry_fields(K, e)))
end

-- ------------------------------------------------------------------- reads
-- Read-only (no-writes: they may run on replicas, log no event). An unknown
-- resource, reservation or entry gives an empty array.

--[[
  resv_resource: the resource as stored, plus what is derived from it.
  KEYS[1..6]  the resource keys;  ARGV[1] resource_id
  Returns: resource_id, resource_type, capacity, reserved, remaining, state, status
  (OPEN|CLOSED|FULL as clients see it now), version, opens_at, closes_at,
  waitlist_enabled, max_per_request, max_per_client, waitlist_length,
  created_at, updated_at, now (server time, us).
]]
local function resource_get(keys, args)
  local rid = args[1]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  local r = load_resource(K)
  if not r then return {} end
  local now = server_now()
  return append({'resource_id', rid, 'reserved', fmt(r.reserved),
                 'remaining', fmt(r.capacity - r.reserved), 'version', fmt(r.version),
                 'status', public_status(r, now),
                 'waitlist_length', fmt(redis.call('ZCARD', K.wl)),
                 'created_at', r.created_at, 'updated_at', r.updated_at, 'now', fmt(now)},
                rules_fields(r))
end

--[[
  resv_reservation: one reservation.
  KEYS[1..6]  the resource keys;  ARGV[1] resource_id;  ARGV[2] reservation_id
  Returns: reservation_id, resource_id, client_id, quantity, status
  (CONFIRMED|CANCELLED), confirmed_at, cancelled_at, request_id, version (the
  rules version it was confirmed under).
]]
local function reservation_get(keys, args)
  local rid = args[1]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  if not valid_id(args[2]) then return bad_id('reservation_id') end
  local raw = redis.call('HGET', K.bk, args[2])
  if not raw then return {} end
  local b = cjson.decode(raw)
  return append(reservation_fields(b), {'version', b.version})
end

--[[
  resv_wl_position: one waiting-list entry and its place.
  KEYS[1..6]  the resource keys;  ARGV[1] resource_id;  ARGV[2] entry_id
  Returns: entry_id, resource_id, client_id, quantity, status
  (WAITING|NOTIFIED|FULFILLED|LEFT), position (1-based, only while WAITING),
  joined_at, notified_at, left_at, fulfilled_at.
]]
local function wl_position(keys, args)
  local rid = args[1]
  local K, err = resource_keys(keys, rid, 6)
  if not K then return err end
  if not valid_id(args[2]) then return bad_id('entry_id') end
  local raw = redis.call('HGET', K.we, 'e:' .. args[2])
  if not raw then return {} end
  return entry_fields(K, cjson.decode(raw))
end

--[[
  resv_version: the library version.  No KEYS, no ARGV.  Returns a string.
]]
local function version()
  return LIBRARY_VERSION
end

local writes = {}  -- declared flags: refused before running when out of memory
local reads = {'no-writes'}
redis.register_function{function_name = 'resv_create', callback = create, flags = writes}
redis.register_function{function_name = 'resv_configure', callback = configure, flags = writes}
redis.register_function{function_name = 'resv_open', callback = set_state('OPEN'), flags = writes}
redis.register_function{function_name = 'resv_close', callback = set_state('CLOSED'), flags = writes}
redis.register_function{function_name = 'resv_reserve', callback = reserve, flags = writes}
redis.register_function{function_name = 'resv_cancel', callback = cancel, flags = writes}
redis.register_function{function_name = 'resv_wl_join', callback = wl_join, flags = writes}
redis.register_function{function_name = 'resv_wl_leave', callback = wl_leave, flags = writes}
redis.register_function{function_name = 'resv_resource', callback = resource_get, flags = reads}
redis.register_function{function_name = 'resv_reservation', callback = reservation_get, flags = reads}
redis.register_function{function_name = 'resv_wl_position', callback = wl_position, flags = reads}
redis.register_function{function_name = 'resv_version', callback = version, flags = reads}
