-- Gives back velocity counted for a request that did not end up holding funds (a funds decline,
-- the unapproved part of a partial approval, a replay counted twice) or, later, a reversal.
-- Only buckets that still exist are touched, and none goes below zero.
-- KEYS[1] velocity hash; ARGV: field, amount to subtract, field, amount, ...
local changed = 0
for i = 1, #ARGV, 2 do
    local field, delta = ARGV[i], tonumber(ARGV[i + 1])
    local value = redis.call('HGET', KEYS[1], field)
    if value then
        local left = tonumber(value) - delta
        if left < 0 then left = 0 end
        redis.call('HSET', KEYS[1], field, string.format('%d', left))
        changed = changed + 1
    end
end
return changed
