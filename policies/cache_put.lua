-- Replaces a card's cached policy only with a newer version, so a slow writer holding an old
-- version (a read-through after a cache miss) can never undo a freeze written meanwhile.
-- KEYS[1] policy hash; ARGV[1] version; ARGV[2..] field, value, field, value, ...
local cached = redis.call('HGET', KEYS[1], 'v')
if cached and tonumber(cached) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], unpack(ARGV, 2))
return 1
