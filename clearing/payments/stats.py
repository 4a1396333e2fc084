"""Where payments stand, read from PostgreSQL in one round trip (for the server's gauges)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from clearing.payments.states import PAYMENT_STATES
from holds.db import Executor

__all__ = ["PaymentStats", "read_payment_stats"]

_QUERY = """
SELECT
  (SELECT coalesce(json_object_agg(status, n), '{}')::text
     FROM (SELECT status, count(*) AS n FROM payments GROUP BY status) s) AS by_state,
  (SELECT count(*) FROM payment_outbox WHERE status = 'pending') AS outbox_pending,
  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
     FROM payment_outbox WHERE status = 'pending') AS outbox_oldest_s,
  (SELECT count(*) FROM payment_outbox WHERE status = 'failed') AS outbox_failed,
  (SELECT count(*) FROM bank_events WHERE status = 'pending') AS bank_pending,
  (SELECT count(*) FROM bank_events WHERE status = 'quarantined') AS bank_quarantined,
  (SELECT count(*) FROM inbound_credits WHERE matched_by = 'suspense') AS suspense,
  (SELECT json_build_object('missing_in_ledger', missing_in_ledger,
                            'missing_in_statement', missing_in_statement,
                            'amount_break', amount_breaks)::text
     FROM reconciliations ORDER BY created_at DESC LIMIT 1) AS breaks
"""


@dataclass(frozen=True, slots=True)
class PaymentStats:
    by_state: dict[str, int]
    outbox_pending: int
    outbox_oldest_age_s: float
    outbox_failed: int
    bank_events_pending: int
    bank_events_quarantined: int
    suspense_credits: int
    reconciliation_breaks: dict[str, int]


async def read_payment_stats(db: Executor) -> PaymentStats:
    row = await db.fetchrow(_QUERY)
    if row is None:
        raise RuntimeError("payment stats query returned no row")
    counts = orjson.loads(row["by_state"])
    return PaymentStats(
        by_state={state: int(counts.get(state, 0)) for state in PAYMENT_STATES},
        outbox_pending=int(row["outbox_pending"]),
        outbox_oldest_age_s=max(0.0, float(row["outbox_oldest_s"])),
        outbox_failed=int(row["outbox_failed"]),
        bank_events_pending=int(row["bank_pending"]),
        bank_events_quarantined=int(row["bank_quarantined"]),
        suspense_credits=int(row["suspense"]),
        reconciliation_breaks=orjson.loads(row["breaks"]) if row["breaks"] else {},
    )
