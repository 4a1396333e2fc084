"""After stand-in: approvals decided without Redis were not counted in the velocity counters.
Once Redis answers again they are counted, in the buckets of their own time, exactly once per
decision (the row is marked in the same transaction that took it with SKIP LOCKED, so several
server processes share the work)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import asyncpg
from redis.exceptions import RedisError

from policies.cache import PolicyCache
from policies.store import load_card

__all__ = ["count_stand_in_approvals", "run_stand_in_reconciler"]

log = logging.getLogger("holdfast.standin")

_TAKE: Final = """
SELECT r.id, a.card_id, r.kind, r.approved_amount, extract(epoch FROM r.decided_at)::bigint AS at
  FROM authorization_requests r JOIN authorizations a ON a.id = r.authorization_id
 WHERE r.stand_in AND r.decision = 'approve' AND NOT r.counted
 ORDER BY r.id LIMIT $1
   FOR UPDATE OF r SKIP LOCKED"""


async def count_stand_in_approvals(pool: asyncpg.Pool, cache: PolicyCache, now_s: int,
                                   batch: int = 200) -> int:
    """Count one batch; returns how many decisions were counted."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_TAKE, batch)
        for row in rows:
            count = 0 if row["kind"] == "incremental" else 1
            args = (row["card_id"], row["at"], row["approved_amount"], count, now_s)
            if not await cache.count_late(*args):
                card = await load_card(conn, row["card_id"])
                if card is not None:
                    await cache.put(card)
                    await cache.count_late(*args)
        if rows:
            # the predicate repeats the partial index's, so the update can use it
            await conn.execute("UPDATE authorization_requests SET counted = true"
                               " WHERE id = ANY($1::bigint[]) AND stand_in"
                               " AND decision = 'approve' AND NOT counted",
                               [r["id"] for r in rows])
    return len(rows)


async def run_stand_in_reconciler(pool: asyncpg.Pool, cache: PolicyCache,
                                  clock: Callable[[], float], interval_s: float) -> None:
    while True:
        try:
            while await count_stand_in_approvals(pool, cache, int(clock())):
                pass
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("stand-in approvals wait for Redis: %s", type(exc).__name__)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not count stand-in approvals: %s", type(exc).__name__)
        await asyncio.sleep(interval_s)


