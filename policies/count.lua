-- Counts, after the fact, an approval that was decided without Redis (stand-in), so velocity
-- limits see it once Redis is back. Buckets are those of the decision's own time; a bucket that
-- has already left every window is not recreated.
-- KEYS[1] policy hash  KEYS[2] velocity hash
-- ARGV: 1 decision time (unix s)  2 amount  3 count delta  4 now (unix s)
-- Returns 'miss' (no cached policy: load it and call again) or the number of buckets touched.
local spec = redis.call('HGET', KEYS[1], 'vel')
if spec == false then
    if redis.call('EXISTS', KEYS[1]) == 0 then return 'miss' end
    return 0
end
local retention = {}
for w in string.gmatch(spec, '[^;]+') do
    local unit, n = string.match(w, '^(%a):(%d+):')
    n = tonumber(n)
    if (retention[unit] or 0) < n then retention[unit] = n end
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'tz') or '0') * 60
local at, now = tonumber(ARGV[1]), tonumber(ARGV[4])
local size = {m = 60, h = 3600, d = 86400}
local touched = 0
for unit, keep in pairs(retention) do
    local shift = 0
    if unit == 'd' then shift = offset end
    local idx = math.floor((at + shift) / size[unit])
    local current = math.floor((now + shift) / size[unit])
    if idx >= current - keep then
        local base = unit .. string.format('%d', idx)
        if tonumber(ARGV[3]) > 0 then
            redis.call('HINCRBY', KEYS[2], base .. 'c', ARGV[3])
        end
        redis.call('HINCRBY', KEYS[2], base .. 'a', ARGV[2])
        touched = touched + 1
    end
end
return touched
