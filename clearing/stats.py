"""Figures an SRE watches, read from PostgreSQL: inbox depth and age, quarantined events and how
far the expiry sweep lags (one round trip, every lookup on an index range, cheap at any size:
the sweep's lag reads from its low-water mark); and open holds by currency, which means
counting every open hold, so it is read less often."""

from __future__ import annotations

from dataclasses import dataclass

from holds.db import Executor

__all__ = ["LedgerStats", "read_open_holds", "read_stats"]

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

# a scan of every hold from the sweep's mark on (every open one, and the closed ones of about
# one hold window); ~0.2 s of PostgreSQL CPU per million open holds was measured on the partial
# index of open holds this replaced (migration 0012), not since
_OPEN_HOLDS = """
SELECT currency, count(*) AS n, sum(remaining)::bigint AS total FROM holds
 WHERE state = 'open' AND expires_at >= (SELECT swept_to FROM hold_expiry_mark)
 GROUP BY currency
"""


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


async def read_open_holds(db: Executor) -> dict[str, tuple[int, int]]:
    """currency -> (open holds, amount they hold in minor units)."""
    rows = await db.fetch(_OPEN_HOLDS)
    return {r["currency"]: (int(r["n"]), int(r["total"])) for r in rows}
