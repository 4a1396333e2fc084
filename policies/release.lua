-- Gives back velocity counted for a request that did not end up holding funds (a funds decline,
-- the unapproved part of a partial approval, a replay counted twice) or, later, a reversal.
-- Only buckets that still exist are touched, and none goes below zero.
-- KEYS[1] velocity hash (buckets.lua, in front of this script)
-- ARGV: unit, bucket index, amount, count, unit, bucket index, amount, count, ...
-- Returns the number of buckets changed.
local changed = 0
for i = 1, #ARGV, 4 do
    local unit, digits = ARGV[i], ARGV[i + 1]
    local index, amount, count = tonumber(digits), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local found = false
    local packed = redis.call('HGET', KEYS[1], unit)
    if packed then
        local flat = unpack_buckets(packed)
        for j = #flat - 2, 1, -3 do
            if flat[j] == index then
                flat[j + 1] = math.max(flat[j + 1] - count, 0)
                flat[j + 2] = math.max(flat[j + 2] - amount, 0)
                redis.call('HSET', KEYS[1], unit, pack_buckets(flat, 1))
                found = true
                break
            end
        end
    end
    if not found then
        -- counted before an upgrade, in the earlier format's fields ('<unit><index><c|a>')
        for kind, delta in pairs({a = amount, c = count}) do
            local field = unit .. digits .. kind
            local value = delta > 0 and redis.call('HGET', KEYS[1], field)
            if value then
                local left = math.max(tonumber(value) - delta, 0)
                redis.call('HSET', KEYS[1], field, string.format('%d', left))
                found = true
            end
        end
    end
    if found then changed = changed + 1 end
end
return changed
