"""Figures an SRE watches, read from PostgreSQL: inbox depth and age, quarantined events and how
far the expiry sweep lags (one round trip, every lookup on an index range, cheap at any size:
the sweep's lag reads from its low-water mark); and open holds by currency, which means
counting every open hold, so it is read less often and a page at a time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from holds.db import Executor

__all__ = ["DUTY", "PAGE_ROWS", "LedgerStats", "read_open_holds", "read_stats"]

_QUERY = """
SELECT
  (SELECT count(*) FROM inbox_events WHERE status = 'pending') AS pending,
  (SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0)
     FROM inbox_events WHERE status = 'pending') AS oldest_pending_s,
  (SELECT count(*) FROM inbox_events WHERE status = 'quarantined') AS quarantined,
  (SELECT coalesce(extract(epoch FROM now() - min(expires_at)), 0)
     FROM holds WHERE state = 'open' AND expires_at <= now()
      AND expires_at >= (SELECT swept_to FROM hold_expiry_mark)) AS oldest_due_s
"""

# one page of the holds from the sweep's mark on (every open one, and the closed ones of about
# one hold window), after ($1, $2) in (expiry, id) order: its open holds by currency, and the
# page's last (expiry, id) on every row; no row when the page is empty or holds no open hold
_OPEN_HOLDS_PAGE = """
WITH page AS MATERIALIZED (
    SELECT h.id, h.currency, h.remaining, h.expires_at, h.state FROM holds h
     WHERE h.expires_at >= $1 AND (h.expires_at, h.id) > ($1, $2)
     ORDER BY h.expires_at, h.id LIMIT $3)
SELECT g.currency, g.n, g.total, l.expires_at, l.id, l.rows
  FROM (SELECT p.expires_at, p.id, (SELECT count(*) FROM page) AS rows FROM page p
         ORDER BY p.expires_at DESC, p.id DESC LIMIT 1) l
  LEFT JOIN (SELECT p.currency, count(*) AS n, sum(p.remaining)::bigint AS total FROM page p
              WHERE p.state = 'open' GROUP BY p.currency) g ON true
"""
_MARK = "SELECT swept_to FROM hold_expiry_mark"
# a page of 1,000 holds is ~1 ms of one core (10,000: ~8 ms, in which the hot path had one core
# less: benchmarks/README.md, "Session 21"); the count's total cost is the same either way
PAGE_ROWS = 1_000
DUTY = 0.25


@dataclass(frozen=True, slots=True)
class LedgerStats:
    inbox_pending: int
    inbox_oldest_pending_s: float
    quarantined: int
    oldest_due_hold_s: float


async def read_stats(db: Executor) -> LedgerStats:
    row = await db.fetchrow(_QUERY)
    if row is None:
        raise RuntimeError("stats query returned no row")
    return LedgerStats(int(row["pending"]), float(row["oldest_pending_s"]),
                       int(row["quarantined"]), float(row["oldest_due_s"]))


async def read_open_holds(db: Executor, page_rows: int = PAGE_ROWS, duty: float = DUTY
                          ) -> dict[str, tuple[int, int]]:
    """currency -> (open holds, amount they hold in minor units).

    Counting means reading every open hold. A read of that kind at a stretch is what made the
    sweep's lag gauge (``read_stats``) lift the hot path's p99 to 22-120 ms for a few seconds
    while a sweep ran: it walked every hold the pass had already expired (benchmarks/README.md,
    "Session 6"; not measured for this count on its own). So the holds are read in pages of
    ``page_rows`` (in expiry order, from the sweep's mark), each its own short statement,
    resting after each in proportion to its time (``duty``, as the sweep does): short pages,
    because while one runs it has a core the hot path would otherwise have (pages of 10,000
    put the slowest 1 % of a minute's authorisations in the second the count ran). Each
    page sees the ledger as of its own statement, so a hold that changes while the count runs
    is counted as it was or as it is, and one whose expiry an incremental authorisation extends
    past the pages not yet read may be counted twice: the figures are a gauge's, not a
    balance's (the ledger's own totals are the accounts' ``held`` amounts, which ``holdfast
    verify`` proves against the holds)."""
    if not 0 < duty <= 1:
        raise ValueError("duty must be in (0, 1]")
    rest_factor = (1 - duty) / duty
    start = await db.fetchval(_MARK)
    after_expiry, after_id = start, ""
    totals: dict[str, tuple[int, int]] = {}
    while True:
        t0 = time.perf_counter()
        rows = await db.fetch(_OPEN_HOLDS_PAGE, after_expiry, after_id, page_rows)
        for r in rows:
            if r["currency"] is not None:
                n, total = totals.get(r["currency"], (0, 0))
                totals[r["currency"]] = (n + int(r["n"]), total + int(r["total"]))
        if not rows or rows[0]["rows"] < page_rows:
            return totals
        after_expiry, after_id = rows[0]["expires_at"], rows[0]["id"]
        await asyncio.sleep((time.perf_counter() - t0) * rest_factor)
