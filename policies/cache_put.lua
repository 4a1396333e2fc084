-- Replaces a card's cached policy only with a newer version, so a slow writer holding an old
-- version (a read-through after a cache miss) can never undo a freeze written meanwhile.
-- KEYS[1] the cached card (a JSON string with its version in "v")  KEYS[2] where earlier versions
-- kept it (a hash): deleted, so an upgrade leaves nothing behind
-- ARGV[1] version  ARGV[2] the card as JSON (policies/cache.py encode_snapshot)
local cached = redis.call('GET', KEYS[1])
if cached then
    local ok, card = pcall(cjson.decode, cached)
    if ok and type(card) == 'table' and tonumber(card.v)
        and tonumber(card.v) >= tonumber(ARGV[1]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
