-- Velocity buckets, shared by velocity.lua, release.lua and count.lua (policies/cache.py puts
-- this file in front of each). A card's velocity hash has one field per unit ('m' minutes, 'h'
-- hours, 'd' days) holding that unit's buckets packed, oldest first: per bucket its index
-- (int32), count (int32) and amount (double: exact to 2^53 minor units), 16 bytes,
-- little-endian. Redis's struct library turns a whole unit into Lua numbers in one C call, with
-- no string and no strtod per bucket: a hash of one field per bucket and kind cost Redis ~9,000
-- instructions per field (a busy card's ~120 fields for a one-hour window: ~1,000,000).
--
-- In Lua a unit's buckets are a flat array {index, count, amount, index, count, amount, ...}.

local BUCKET = 'i4i4d'
local BUCKET_BYTES = 16
local CHUNK = 500 -- buckets per struct call: Lua's C stack holds ~8,000 values

local function unpack_buckets(packed)
    local n = math.floor(#packed / BUCKET_BYTES)
    if n <= CHUNK then
        local flat = {struct.unpack('<' .. string.rep(BUCKET, n), packed)}
        flat[#flat] = nil -- struct.unpack's last value: the next position
        return flat
    end
    local flat, pos = {}, 1
    while n > 0 do
        local k = math.min(n, CHUNK)
        local part = {struct.unpack('<' .. string.rep(BUCKET, k), packed, pos)}
        pos = part[#part]
        for j = 1, #part - 1 do flat[#flat + 1] = part[j] end
        n = n - k
    end
    return flat
end

-- the buckets from bucket number `first` (1-based) on, packed
local function pack_buckets(flat, first)
    local i, last = (first - 1) * 3 + 1, #flat
    local n = (last - i + 1) / 3
    if n <= CHUNK then
        return struct.pack('<' .. string.rep(BUCKET, n), unpack(flat, i, last))
    end
    local parts = {}
    while i <= last do
        local j = math.min(last, i + CHUNK * 3 - 1)
        parts[#parts + 1] = struct.pack('<' .. string.rep(BUCKET, (j - i + 1) / 3),
                                        unpack(flat, i, j))
        i = j + 1
    end
    return table.concat(parts)
end

-- adds to bucket `index`, inserting it in order if it is not there yet
local function add_to_bucket(flat, index, count, amount)
    local i = #flat - 2
    while i >= 1 and flat[i] > index do i = i - 3 end
    if i >= 1 and flat[i] == index then
        flat[i + 1] = flat[i + 1] + count
        flat[i + 2] = flat[i + 2] + amount
        return
    end
    local at = i + 3
    if i < 1 then at = 1 end
    table.insert(flat, at, amount)
    table.insert(flat, at, count)
    table.insert(flat, at, index)
end

