"""Figures an SRE watches, read from PostgreSQL in one round trip: inbox depth and age,
quarantined events, open holds, and how far the expiry sweep lags."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from holds.db import Executor

__all__ = ["LedgerStats", "read_stats"]

_QUERY = """
SELECT
  (SELECT count(*) FROM inbox_events WHERE status = 'pending') AS pending,
  (SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0)
     FROM inbox_events WHERE status = 'pending') AS oldest_pending_s,
  (SELECT count(*) FROM inbox_events WHERE status = 'quarantined') AS quarantined,
  (SELECT coalesce(extract(epoch FROM now() - min(expires_at)), 0)
     FROM holds WHERE state = 'open' AND expires_at <= now()) AS oldest_due_s,
  (SELECT coalesce(json_agg(json_build_array(currency, n, total)), '[]')::text
     FROM (SELECT currency, count(*) AS n, sum(remaining) AS total FROM holds
            WHERE state = 'open' GROUP BY currency) h) AS open_holds
"""


@dataclass(frozen=True, slots=True)
class LedgerStats:
    inbox_pending: int
    inbox_oldest_pending_s: float
    quarantined: int
    oldest_due_hold_s: float
    # currency -> (count, amount in minor units)
    open_holds: dict[str, tuple[int, int]]


async def read_stats(db: Executor) -> LedgerStats:
    row = await db.fetchrow(_QUERY)
    if row is None:
        raise RuntimeError("stats query returned no row")
    holds = {c: (int(n), int(t)) for c, n, t in orjson.loads(row["open_holds"])}
    return LedgerStats(int(row["pending"]), float(row["oldest_pending_s"]),
                       int(row["quarantined"]), float(row["oldest_due_s"]), holds)
