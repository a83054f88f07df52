-- streamq sampler: everything the autoscaler needs about one stream and the
-- given groups, read atomically. KEYS[1] stream; KEYS[1+i] the stats hash of
-- group ARGV[i]. Returns {now_ms, entries_added, group...} where each
-- group is {name, found(0|1), entries_read(-1 = none), lag, lag_source,
-- pending, oldest_undelivered_ms(-1 = none), {{consumer, pending, idle_ms}...},
-- {stats field, value...}}; entries_added is -1 when the stream is missing,
-- now_ms (Redis' clock) is -1 when no group has anything undelivered.
--
-- The sampler runs it only for streams XINFO GROUPS alone cannot answer
-- (see sampler.rs), still every second, so it reads only what the answer
-- needs. XINFO STREAM (which also copies the first and last entries) is
-- read only when no group's counters give entries-added; the oldest
-- undelivered entry and the clock only when something is undelivered;
-- consumers and their stats only when the group has any.
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {-1, -1} end
local by_name = {}
for _, g in ipairs(groups) do by_name[field(g, 'name')] = g end
-- Counting past last-delivered-id is bounded: beyond it the lag is an estimate.
local COUNT_LIMIT = 10000
local entries_added = nil
local out_groups = {}
for i, name in ipairs(ARGV) do
  local g = by_name[name]
  if not g then
    table.insert(out_groups, {name, 0})
  else
    local read = field(g, 'entries-read')
    local lag, source = field(g, 'lag'), 'exact'
    local after = '(' .. field(g, 'last-delivered-id')
    local oldest_ms = -1
    if lag and read then
      -- Redis' lag is entries-added minus entries-read whenever it is not NULL.
      entries_added = entries_added or (read + lag)
    end
    if not lag then
      -- NULL lag (after XDEL or trimming): count what follows last-delivered-id.
      local rest = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', COUNT_LIMIT)
      lag = #rest
      source = (#rest < COUNT_LIMIT) and 'counted' or 'estimated'
      if #rest > 0 then oldest_ms = tonumber(string.match(rest[1][1], '^(%d+)')) end
    elseif lag > 0 then
      local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
      if #first > 0 then oldest_ms = tonumber(string.match(first[1][1], '^(%d+)')) end
    end
    local consumers, stats = {}, {}
    if field(g, 'consumers') > 0 then
      for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], name)) do
        table.insert(consumers, {field(c, 'name'), field(c, 'pending'), field(c, 'idle')})
      end
      stats = redis.call('HGETALL', KEYS[i + 1])
    end
    table.insert(out_groups, {name, 1, read or -1, lag, source, field(g, 'pending'),
      oldest_ms, consumers, stats})
  end
end
if not entries_added then
  entries_added = field(redis.call('XINFO', 'STREAM', KEYS[1]), 'entries-added')
end
local now_ms = -1
for _, g in ipairs(out_groups) do
  if g[7] and g[7] ~= -1 then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    break
  end
end
local out = {now_ms, entries_added}
for _, g in ipairs(out_groups) do table.insert(out, g) end
return out
