"""After stand-in: approvals decided without Redis were not counted in the velocity counters.
Once Redis answers again they are counted, in the buckets of their own time, exactly once per
decision (the row is marked in the same transaction that took it with SKIP LOCKED, so several
server processes share the work). An initial request's row is its authorisation's: a lifecycle
operation on one of the batch's authorisations waits for the batch (rare: stand-in approvals
exist only after an outage of Redis)."""

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

# An initial request's decision is on its authorisation's row (migration 0017), the others are
# in followup_requests. Each is taken with SKIP LOCKED and marked in the same transaction; the
# predicates repeat the partial indexes', so the scans and the updates can use them.
_TAKE_INITIAL: Final = """
SELECT a.id, a.card_id, a.request_approved AS approved_amount,
       extract(epoch FROM a.created_at)::bigint AS at
  FROM authorizations a
 WHERE a.request_stand_in AND a.request_approved > 0 AND NOT a.request_counted
 ORDER BY a.created_at LIMIT $1
   FOR NO KEY UPDATE SKIP LOCKED"""

_MARK_INITIAL: Final = """
UPDATE authorizations SET request_counted = true
 WHERE id = ANY($1::text[]) AND request_stand_in AND request_approved > 0
   AND NOT request_counted"""

_TAKE_FOLLOWUP: Final = """
SELECT r.id, a.card_id, r.kind, r.approved_amount, extract(epoch FROM r.decided_at)::bigint AS at
  FROM followup_requests r JOIN authorizations a ON a.id = r.authorization_id
 WHERE r.stand_in AND r.decision = 'approve' AND NOT r.counted
 ORDER BY r.id LIMIT $1
   FOR UPDATE OF r SKIP LOCKED"""

_MARK_FOLLOWUP: Final = """
UPDATE followup_requests SET counted = true
 WHERE id = ANY($1::bigint[]) AND stand_in AND decision = 'approve' AND NOT counted"""


async def count_stand_in_approvals(pool: asyncpg.Pool, cache: PolicyCache, now_s: int,
                                   batch: int = 200) -> int:
    """Count one batch (at most ``batch`` decisions); returns how many were counted."""
    async with pool.acquire() as conn, conn.transaction():
        initial = await conn.fetch(_TAKE_INITIAL, batch)
        later = (await conn.fetch(_TAKE_FOLLOWUP, batch - len(initial))
                 if len(initial) < batch else [])
        work = [(r, 1) for r in initial]
        # an incremental adds to its authorisation's amount, not to the count of authorisations
        work += [(r, 0 if r["kind"] == "incremental" else 1) for r in later]
        for row, count in work:
            args = (row["card_id"], row["at"], row["approved_amount"], count, now_s)
            if not await cache.count_late(*args):
                card = await load_card(conn, row["card_id"])
                if card is not None:
                    await cache.put(card)
                    await cache.count_late(*args)
        if initial:
            await conn.execute(_MARK_INITIAL, [r["id"] for r in initial])
        if later:
            await conn.execute(_MARK_FOLLOWUP, [r["id"] for r in later])
    return len(initial) + len(later)


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


