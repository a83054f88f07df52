-- streamq queue round: a Queue's state in Redis, then, when its stream is
-- there and its claim is this Queue's, retention and dead letters; one atomic step.
-- KEYS[1] stream, KEYS[2] dead-letter stream (only read when ARGV[6] == "1"),
-- KEYS[3] the ownership claim
-- ARGV[1] max length ("" = none)       ARGV[2] max age in ms ("" = none)
-- ARGV[3] "1" = drop unprocessed       ARGV[4] max deliveries
-- ARGV[5] visibility timeout in ms     ARGV[6] "1" = dead-lettering enabled
-- ARGV[7] most entries to move or trim-scan in one call
-- ARGV[8] this Queue's claim
-- Returns {type, length, entries_added, dead-letter type, dead-letter length,
--          claim, maintained (0/1), trimmed, dead_lettered, vanished_acked};
-- without dead-lettering the dead-letter fields are false, as is a missing claim.
local stream, dlq = KEYS[1], KEYS[2]
local max_len, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
local drop_unprocessed = ARGV[3] == "1"
local max_deliveries, visibility = tonumber(ARGV[4]), tonumber(ARGV[5])
local dlq_enabled, budget = ARGV[6] == "1", tonumber(ARGV[7])

local function maintain()
  -- Stream IDs as {ms, seq}; Lua numbers are doubles, exact below 2^53.
  local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return {tonumber(ms), tonumber(seq)}
  end
  local function less(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
  local function fmt(id) return string.format('%.0f-%.0f', id[1], id[2]) end
  local function after(id) return {id[1], id[2] + 1} end
  local function field(flat, name)
    for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
  end

  local groups = redis.call('XINFO', 'GROUPS', stream)

  -- Dead letters: entries idle past the visibility timeout that have used up
  -- their deliveries. Each is copied with its fields and metadata, then acked.
  local moved, vanished = 0, 0
  if dlq_enabled then
    for _, g in ipairs(groups) do
      local group = field(g, 'name')
      if budget <= 0 then break end
      local pending = redis.call('XPENDING', stream, group, 'IDLE', visibility, '-', '+', budget)
      for _, p in ipairs(pending) do
        local id, deliveries = p[1], p[4]
        if deliveries >= max_deliveries then
          local entry = redis.call('XRANGE', stream, id, id)
          if #entry == 0 then
            vanished = vanished + 1 -- trimmed or deleted: nothing left to move
          else
            local fields = entry[1][2]
            table.insert(fields, 'streamq.original-id'); table.insert(fields, id)
            table.insert(fields, 'streamq.deliveries'); table.insert(fields, tostring(deliveries))
            table.insert(fields, 'streamq.group'); table.insert(fields, group)
            redis.call('XADD', dlq, '*', unpack(fields))
            moved = moved + 1
          end
          redis.call('XACK', stream, group, id)
          budget = budget - 1
        end
      end
    end
  end

  -- Retention. The cut is an ID: entries below it go.
  local cut = nil
  if max_age then
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    cut = {math.max(now_ms - max_age, 0), 0}
  end
  if drop_unprocessed then
    -- Hard caps, exact, whatever the groups have not processed yet.
    local trimmed = 0
    -- ARGV[1], not max_len: a Lua number above 2^53 would be sent as 9.2e+18, which XTRIM refuses.
    if max_len then trimmed = trimmed + redis.call('XTRIM', stream, 'MAXLEN', ARGV[1]) end
    if cut then trimmed = trimmed + redis.call('XTRIM', stream, 'MINID', fmt(cut)) end
    return {trimmed, moved, vanished}
  end
  if max_len then
    local len = redis.call('XLEN', stream)
    if len > max_len then
      local excess = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(len - max_len, budget))
      local by_len = after(parse(excess[#excess][1]))
      if cut == nil or less(cut, by_len) then cut = by_len end
    end
  end
  if cut == nil then return {0, moved, vanished} end

  -- Never cut past an entry some group has not acknowledged: the oldest
  -- pending entry, or the first one after the group's last-delivered-id.
  for _, g in ipairs(groups) do
    local floor = after(parse(field(g, 'last-delivered-id')))
    if field(g, 'pending') > 0 then
      local summary = redis.call('XPENDING', stream, field(g, 'name'))
      local oldest = parse(summary[2])
      if less(oldest, floor) then floor = oldest end
    end
    if less(floor, cut) then cut = floor end
  end
  -- Approximate (~): Redis drops whole internal nodes only, which is cheap and
  -- never removes an entry at or above the cut.
  return {redis.call('XTRIM', stream, 'MINID', '~', fmt(cut)), moved, vanished}
end

local function info(key)
  local t = redis.call('TYPE', key).ok
  if t ~= 'stream' then return t, 0, 0 end
  local added = 0
  local xinfo = redis.call('XINFO', 'STREAM', key)
  for i = 1, #xinfo, 2 do if xinfo[i] == 'entries-added' then added = xinfo[i + 1] end end
  return t, redis.call('XLEN', key), added
end

local kind, length, added = info(stream)
local dlq_kind, dlq_length = false, false
if dlq_enabled then
  local _
  dlq_kind, dlq_length, _ = info(dlq)
end
local claim = redis.call('GET', KEYS[3])
local ours = kind == 'stream' and claim == ARGV[8]
  and (dlq_kind == false or dlq_kind == 'stream' or dlq_kind == 'none')
local out = {kind, length, added, dlq_kind, dlq_length, claim, 0, 0, 0, 0}
if ours then
  local done = maintain()
  out[7], out[8], out[9], out[10] = 1, done[1], done[2], done[3]
end
return out
