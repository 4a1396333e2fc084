-- Replaces a card's cached policy only with a newer version, so a slow writer holding an old
-- version (a read-through after a cache miss) can never undo a freeze written meanwhile. A hash
-- without the field this writer stores (ARGV[2]: an entry in an earlier format) is replaced
-- whatever its version, so an upgraded server's first miss on a card rewrites its entry.
-- KEYS[1] policy hash; ARGV[1] version; ARGV[2..] field, value, field, value, ...
local cached = redis.call('HMGET', KEYS[1], 'v', ARGV[2])
if cached[1] and cached[2] and tonumber(cached[1]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], unpack(ARGV, 2))
return 1
