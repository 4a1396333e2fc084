"""Disputes (chargebacks) as a state machine table, and their money.

    opened -> provisional_credit -> won | lost

A chargeback opens the dispute and credits the cardholder provisionally in one step; winning
keeps the credit, losing takes it back (a debit of the same amount)."""

from __future__ import annotations

import datetime as dt
from typing import Final

from holds.db import Conn

__all__ = ["DISPUTE_TRANSITIONS", "IllegalDisputeTransition", "apply_dispute_event"]

DISPUTE_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    ("none", "chargeback"): "provisional_credit",
    ("opened", "chargeback"): "provisional_credit",
    ("provisional_credit", "chargeback.won"): "won",
    ("provisional_credit", "chargeback.reversal"): "lost",
}


class IllegalDisputeTransition(ValueError):
    pass


async def apply_dispute_event(
    conn: Conn, op_id: str, event_type: str, authorization_id: str, amount_minor: int,
    currency: str, now: dt.datetime,
) -> str:
    """Apply one dispute event inside the caller's transaction. Returns the outcome:
    'applied', 'replay', 'unknown' (no such authorisation) or raises IllegalDisputeTransition."""
    auth = await conn.fetchrow(
        "SELECT account_id, currency FROM authorizations WHERE id = $1", authorization_id)
    if auth is None or auth["account_id"] is None:
        return "unknown"
    account = auth["account_id"]
    # lock order as everywhere: the account before anything that depends on its balance
    await conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account)
    if await conn.fetchval("SELECT 1 FROM ledger_operations WHERE op_id = $1", op_id):
        return "replay"
    dispute_id = f"dsp_{authorization_id}"
    row = await conn.fetchrow(
        "SELECT state, amount FROM disputes WHERE id = $1 FOR UPDATE", dispute_id)
    state = "none" if row is None else row["state"]
    target = DISPUTE_TRANSITIONS.get((state, event_type))
    if target is None:
        raise IllegalDisputeTransition(f"a dispute in state {state} cannot take {event_type}")
    if currency != auth["currency"]:
        raise IllegalDisputeTransition("dispute currency differs from the authorisation's")
    if event_type == "chargeback":
        tx = await conn.fetchval(
            "SELECT hf_transfer('chargeback', $1, NULL, $2, $3, $4, false, $5)",
            f"op:{op_id}", account, currency, amount_minor, authorization_id)
        await conn.execute(
            "INSERT INTO disputes (id, authorization_id, account_id, currency, amount, state,"
            " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"
            " ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,"
            " amount = EXCLUDED.amount, updated_at = EXCLUDED.updated_at",
            dispute_id, authorization_id, account, currency, amount_minor, target, now)
        kind, requested = "chargeback", amount_minor
    else:
        if row is None:  # the table has no transition from 'none' for these
            raise IllegalDisputeTransition(f"no dispute to close for {authorization_id}")
        requested = row["amount"]
        tx = None
        if event_type == "chargeback.reversal":
            # lost: the provisional credit is taken back, whatever amount the event carries
            tx = await conn.fetchval(
                "SELECT hf_transfer('chargeback_lost', $1, NULL, $2, $3, $4, false, $5)",
                f"op:{op_id}", account, currency, -requested, authorization_id)
        await conn.execute("UPDATE disputes SET state = $2, updated_at = $3 WHERE id = $1",
                           dispute_id, target, now)
        kind = "chargeback_lost" if tx is not None else "chargeback_won"
    await conn.execute(
        "INSERT INTO ledger_operations (op_id, kind, authorization_id, account_id, currency,"
        " requested, transaction_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        op_id, kind, authorization_id, account, currency, requested, tx, now)
    return "applied"
