-- streamq sampler: everything the autoscaler needs about one stream and the
-- given groups, read atomically. KEYS[1] stream; KEYS[1+i] the stats hash of
-- group ARGV[i]. Returns {now_ms, entries_added, length, group...} where each
-- group is {name, found(0|1), entries_read(-1 = none), lag, lag_source,
-- pending, oldest_undelivered_ms(-1 = none), {{consumer, pending, idle_ms}...},
-- {stats field, value...}}; entries_added is -1 when the stream is missing.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return {now_ms, -1, 0} end
local out = {now_ms, field(info, 'entries-added'), field(info, 'length')}
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
-- Counting past last-delivered-id is bounded: beyond it the lag is an estimate.
local COUNT_LIMIT = 10000
for i, name in ipairs(ARGV) do
  local g = nil
  for _, candidate in ipairs(groups) do
    if field(candidate, 'name') == name then g = candidate end
  end
  if not g then
    table.insert(out, {name, 0})
  else
    local last = field(g, 'last-delivered-id')
    local lag, source = field(g, 'lag'), 'exact'
    local after = '(' .. last
    if not lag then
      -- NULL lag (after XDEL or trimming): count what follows last-delivered-id.
      local rest = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', COUNT_LIMIT)
      lag = #rest
      source = (#rest < COUNT_LIMIT) and 'counted' or 'estimated'
    end
    local oldest_ms = -1
    local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
    if #first > 0 then oldest_ms = tonumber(string.match(first[1][1], '^(%d+)')) end
    local consumers = {}
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], name)) do
      table.insert(consumers, {field(c, 'name'), field(c, 'pending'), field(c, 'idle')})
    end
    table.insert(out, {name, 1, field(g, 'entries-read') or -1, lag, source, field(g, 'pending'),
      oldest_ms, consumers, redis.call('HGETALL', KEYS[i + 1])})
  end
end
return out
