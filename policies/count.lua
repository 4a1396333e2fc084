-- Counts, after the fact, an approval that was decided without Redis (stand-in), so velocity
-- limits see it once Redis is back. Buckets are those of the decision's own time; a bucket that
-- has already left every window is not recreated.
-- KEYS[1] cached card (JSON)  KEYS[2] velocity hash (buckets.lua, in front of this script)
-- ARGV: 1 decision time (unix s)  2 amount  3 count delta  4 now (unix s)
-- Returns 'miss' (no cached policy: load it and call again) or the number of buckets touched.
local cached = redis.call('GET', KEYS[1])
if not cached then return 'miss' end
local pol = cjson.decode(cached)
local spec = pol.w
if spec == nil then return 0 end
local retention = {}
for i = 1, #spec do
    local unit, n = spec[i][1], spec[i][2]
    if (retention[unit] or 0) < n then retention[unit] = n end
end
local offset = (pol.tz or 0) * 60
local at, now = tonumber(ARGV[1]), tonumber(ARGV[4])
local size = {m = 60, h = 3600, d = 86400}
local touched = 0
for unit, keep in pairs(retention) do
    local shift = 0
    if unit == 'd' then shift = offset end
    local index = math.floor((at + shift) / size[unit])
    local current = math.floor((now + shift) / size[unit])
    if index >= current - keep then
        local flat = unpack_buckets(redis.call('HGET', KEYS[2], unit) or '')
        add_to_bucket(flat, index, tonumber(ARGV[3]), tonumber(ARGV[2]))
        redis.call('HSET', KEYS[2], unit, pack_buckets(flat, 1))
        touched = touched + 1
    end
end
return touched
