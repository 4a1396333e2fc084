-- Holdfast decision script: duplicate check, card state, static policy rules and velocity
-- windows, then (only if every check passes) the counter increments. One EVALSHA per decision;
-- every key carries the card's hash tag, so it runs unchanged on Redis Cluster.
--
-- KEYS[1] cached card   <prefix>{card:<id>}:pol  the card and its policy as JSON (written by
--                       cache_put.lua, policies/cache.py encode_snapshot): decoded in C by
--                       cjson, numbers already numbers, windows already split
-- KEYS[2] velocity hash <prefix>{card:<id>}:v   one field per unit, its buckets packed
--                       (buckets.lua, in front of this script); fields of the earlier format,
--                       <unit><bucket index><c|a>, are merged in and deleted on an approval
-- KEYS[3] dedupe key    <prefix>{card:<id>}:d:<provider>:<provider id>:<sequence>
-- ARGV: 1 now (unix s, from the server, never the Redis clock)  2 amount (minor units)
--       3 currency  4 mcc  5 country  6 channel  7 merchant id  8 request hash
--       9 dedupe ttl (s)  10 count delta (1 initial, 0 incremental)  11 this month as YYYYMM
--
-- Returns {'miss'} | {'dup', stored} | {'decline', reason, version, counters}
--       | {'ok', version, counters, buckets}
-- stored = '<request hash>|<ok or reason>|<buckets>|<version>'; counters = JSON of what each window
-- held before this request; buckets = 'm:<idx>,h:<idx>,d:<idx>' (the buckets incremented).

local prev = redis.call('GET', KEYS[3])
if prev then
    return {'dup', prev}
end

local cached = redis.call('GET', KEYS[1])
if not cached then
    return {'miss'}
end
local pol = cjson.decode(cached)

local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local currency, mcc, country, channel, merchant = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
-- (a number read from a string costs Redis ~1,800 instructions, one written ~1,900-3,800:
-- what can be compared as a string is)
local count_delta = 0
if ARGV[10] == '1' then count_delta = 1 end
local version = pol.pv

local find = string.find
-- a: allow list or nil, b: block list or nil (',code,code,'; absent = no rule); a plain search
-- for ',<value>,' finds exact members (one closure: each costs Redis ~900 instructions a call)
local function refused_by(a, b, value)
    if a == nil and b == nil then return false end
    local v = ',' .. value .. ','
    return (a ~= nil and find(a, v, 1, true) == nil) or (b ~= nil and find(b, v, 1, true) ~= nil)
end

-- static rules, in the fixed order of precedence
local reason = nil
local state = pol.s
if state == 'terminated' then
    reason = 'invalid_card'
elseif state ~= 'active' then
    reason = 'card_restricted'
elseif pol.exp and pol.exp < ARGV[11] then -- YYYYMM against YYYYMM: as strings
    reason = 'card_expired'
elseif pol.cur ~= currency then
    reason = 'do_not_honor'
elseif refused_by(pol.curs, nil, currency) or refused_by(pol.ma, pol.mb, mcc)
    or refused_by(pol.ca, pol.cb, country) or refused_by(nil, pol.chb, channel)
    or refused_by(pol.ml, nil, merchant) then
    reason = 'not_permitted'
elseif pol.max and amount > pol.max then
    reason = 'amount_limit_exceeded'
end

-- velocity windows, as cached: [unit, buckets, max amount or -1, max count or -1, label]; each
-- gets [6] amount and [7] count seen so far and [8] its lowest bucket (no table of its own)
local windows = pol.w or {}
local nw = #windows
local retention, current = {}, {}
for i = 1, nw do
    local w = windows[i]
    local unit, n = w[1], w[2]
    if (retention[unit] or 0) < n then
        retention[unit] = n
    end
end
if retention['m'] then current['m'] = math.floor(now / 60) end
if retention['h'] then current['h'] = math.floor(now / 3600) end
if retention['d'] then current['d'] = math.floor((now + (pol.tz or 0) * 60) / 86400) end

local stale = nil     -- fields to delete (made when there are any): units no window uses, the
                      -- earlier format's fields
local buckets_of = {} -- per unit in use, its buckets (a flat array, oldest first)
local keep_from = {}  -- per unit, the first bucket (1-based) still within every window
if nw > 0 then
    -- the lowest bucket each window counts: sliding windows include their oldest, partly
    -- expired bucket; calendar days count today and the n-1 days before
    for i = 1, nw do
        local w = windows[i]
        local lowest = current[w[1]] - w[2]
        if w[1] == 'd' then lowest = lowest + 1 end
        w[6], w[7], w[8] = 0, 0, lowest
    end
    local v = redis.call('HGETALL', KEYS[2])
    local legacy = nil
    for i = 1, #v, 2 do
        local field = v[i]
        if current[field] ~= nil then
            buckets_of[field] = unpack_buckets(v[i + 1])
        else
            stale = stale or {}
            stale[#stale + 1] = field
            if #field > 1 then
                -- the earlier format, one field per bucket and kind: '<unit><index><c|a>'
                local unit = string.sub(field, 1, 1)
                local index = tonumber(string.sub(field, 2, -2))
                local value = tonumber(v[i + 1])
                if current[unit] ~= nil and index ~= nil and value ~= nil then
                    legacy = legacy or {}
                    if string.byte(field, -1) == 97 then -- 'a'
                        legacy[#legacy + 1] = {unit, index, 0, value}
                    else
                        legacy[#legacy + 1] = {unit, index, value, 0}
                    end
                end
            end
        end
    end
    for unit in pairs(current) do
        if buckets_of[unit] == nil then buckets_of[unit] = {} end
    end
    if legacy ~= nil then
        for _, l in ipairs(legacy) do add_to_bucket(buckets_of[l[1]], l[2], l[3], l[4]) end
    end
    -- one pass over each unit's buckets, numbers already
    for unit, flat in pairs(buckets_of) do
        local oldest = current[unit] - retention[unit]
        local from = nil
        for i = 1, #flat, 3 do
            local index = flat[i]
            if index >= oldest then
                if from == nil then from = (i + 2) / 3 end
                local c, a = flat[i + 1], flat[i + 2]
                for j = 1, nw do
                    local w = windows[j]
                    if w[1] == unit and index >= w[8] then
                        w[6] = w[6] + a
                        w[7] = w[7] + c
                    end
                end
            end
        end
        keep_from[unit] = from or (#flat / 3 + 1)
    end
else
    redis.call('DEL', KEYS[2])
end

local counters = {}
local amount_hit, count_hit = false, false
local fmt = string.format
for i = 1, nw do
    local w = windows[i]
    local a, c = w[6], w[7]
    -- a label is digits and a unit letter (VelocityWindow.parse): no escapes needed
    counters[i] = fmt('["%s",%d,%d]', w[5], a, c)
    if w[3] >= 0 and a + amount > w[3] then amount_hit = true end
    if w[4] >= 0 and count_delta > 0 and c + count_delta > w[4] then count_hit = true end
end
if reason == nil and amount_hit then reason = 'amount_limit_exceeded' end
if reason == nil and count_hit then reason = 'count_limit_exceeded' end
local seen = '[' .. table.concat(counters, ',') .. ']'
local ttl = ARGV[9]

if reason ~= nil then
    redis.call('SET', KEYS[3], ARGV[8] .. '|' .. reason .. '||' .. version, 'EX', ttl)
    return {'decline', reason, version, seen}
end

-- each unit's buckets with this request added to the current one and those past every window
-- dropped, in one HSET (the script is atomic: what it read is still what is stored)
local buckets, fields = {}, {}
for k = 1, 3 do -- the units in a fixed order (not a table of them: ~1,000 instructions)
    local unit = 'm'
    if k == 2 then unit = 'h' elseif k == 3 then unit = 'd' end
    local cur = current[unit]
    if cur ~= nil then
        local flat, first = buckets_of[unit], keep_from[unit]
        local n = #flat
        local packed
        if n == 0 or flat[n - 2] < cur then
            -- the usual case, the first request of this bucket: packed after the kept ones,
            -- the table left alone (growing it by a bucket and packing that with the rest cost
            -- ~6,000 instructions a unit)
            packed = struct.pack('<' .. BUCKET, cur, count_delta, amount)
            if first * 3 - 2 <= n then packed = pack_buckets(flat, first) .. packed end
        else
            add_to_bucket(flat, cur, count_delta, amount)
            packed = pack_buckets(flat, first)
        end
        fields[#fields + 1] = unit
        fields[#fields + 1] = packed
        buckets[#buckets + 1] = unit .. ':' .. fmt('%d', cur)
    end
end
if #fields > 0 then
    redis.call('HSET', KEYS[2], unpack(fields))
end
if stale ~= nil then
    redis.call('HDEL', KEYS[2], unpack(stale))
end
local used = table.concat(buckets, ',')
redis.call('SET', KEYS[3], ARGV[8] .. '|ok|' .. used .. '|' .. version, 'EX', ttl)
return {'ok', version, seen, used}
