"""Velocity counters as stored: one packed field per unit (policies/buckets.lua), what an upgrade
from the earlier format (one field per bucket and kind) keeps, and units with more buckets than
one struct call takes. Real Redis and PostgreSQL; each test ends with ``verify`` (conftest)."""

from __future__ import annotations

import struct

import redis.asyncio as aioredis

from authz.app import CACHE, REDIS, SETTINGS
from tests.support import Api, FakeClock, Server, stored_buckets

T0 = 1_800_000_000  # a whole minute


async def test_buckets_are_pruned_past_every_window(api: Api, server: Server,
                                                    clock: FakeClock) -> None:
    """A 30-minute window keeps minute buckets back to 30 minutes: an approval rewrites the
    unit without the buckets that left it."""
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct, {"velocity": [{"window": "30m", "max_count": 100}]})
    for minute in (0, 10, 25):
        clock.set(T0 + minute * 60)
        assert (await api.authorize(card, 100)).body["decision"] == "approve"
    clock.set(T0 + 36 * 60)  # the window reaches back to minute 6: minute 0 is dropped
    assert (await api.authorize(card, 200)).body["decision"] == "approve"
    first = T0 // 60
    assert await stored_buckets(server, card) == {
        "m": [(first + 10, 1, 100), (first + 25, 1, 100), (first + 36, 1, 200)]}


async def test_counters_of_the_earlier_format_are_kept_through_an_upgrade(
        api: Api, server: Server, clock: FakeClock) -> None:
    """Fields written by a version before the packed format ('m<index>c' and 'm<index>a') still
    count, are merged into the packed field on the next approval and then deleted; a give-back
    of a bucket still in the old form finds it."""
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct, {"velocity": [{"window": "1h", "max_count": 3}]})
    cache, redis = server.app[CACHE], server.app[REDIS]
    minute = T0 // 60
    key = cache.velocity_key(card)
    await redis.hset(key, mapping={f"m{minute - 5}c": "1", f"m{minute - 5}a": "700",
                                   f"m{minute}c": "1", f"m{minute}a": "300"})
    # a give-back for a bucket counted before the upgrade
    assert await cache.release(card, f"m:{minute}", 100, 0) == 1
    assert await redis.hget(key, f"m{minute}a") == "200"
    clock.set(T0 + 30)
    assert (await api.authorize(card, 50)).body["decision"] == "approve"  # the third
    assert await stored_buckets(server, card) == {
        "m": [(minute - 5, 1, 700), (minute, 2, 250)]}
    r = await api.authorize(card, 50)
    assert r.body["reason"] == "count_limit_exceeded"  # the old two count, with the new one


async def test_a_unit_with_more_buckets_than_one_struct_call(api: Api, server: Server) -> None:
    """Policies keep at most 121 buckets a unit (120m, 72h, 31d), but the packed form is read and
    written 500 buckets at a time (Lua's C stack holds ~8,000 values), whatever it holds: a
    unit of 600 buckets written as bytes here, a give-back in its second chunk."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct, {"velocity": [{"window": "31d", "max_count": 600}]})
    cache = server.app[CACHE]
    raw = aioredis.Redis.from_url(server.app[SETTINGS].redis_url)
    try:
        await raw.hset(cache.velocity_key(card), "d", b"".join(
            struct.pack("<iid", 1_000 + day, 2, 50.0) for day in range(600)))
    finally:
        await raw.aclose()
    assert await cache.release(card, "d:1550", 30, 1) == 1
    stored = (await stored_buckets(server, card))["d"]
    assert len(stored) == 600 and stored[550] == (1_550, 1, 20)
    assert stored[:550] + stored[551:] == [(1_000 + d, 2, 50) for d in range(600) if d != 550]
