"""Apply one event to one payment, inside the caller's transaction: lock the payment, look the
transition up in the state table, make its ledger effect (one PL/pgSQL call), move the state
and record the transition. Illegal transitions raise and change nothing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from clearing.payments.states import next_transition
from holds.db import Conn

__all__ = ["Fact", "FactResult", "PaymentMismatch", "UnknownPayment", "apply_fact"]


class UnknownPayment(LookupError):
    pass


class PaymentMismatch(ValueError):
    """A bank fact that names the payment but disagrees with it (amount, currency, bank id)."""


@dataclass(frozen=True, slots=True)
class Fact:
    event: str
    source: str  # 'api' | 'outbox' | 'bank'
    bank_event_id: str | None = None
    bank_payment_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    reason: str | None = None
    return_id: str | None = None
    value_date: dt.date | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class FactResult:
    payment_id: str
    from_state: str
    to_state: str

    @property
    def changed(self) -> bool:
        return self.from_state != self.to_state


_LOCK = """
SELECT status, account_id, amount, currency, bank_payment_id FROM payments WHERE id = $1
FOR UPDATE"""

_UPDATE = """
UPDATE payments SET status = $2, updated_at = $3,
       bank_payment_id = coalesce(bank_payment_id, $4),
       reason = coalesce($5, reason),
       return_id = coalesce(return_id, $6),
       settled_on = CASE WHEN $2 = 'settled' AND settled_on IS NULL THEN $7 ELSE settled_on END,
       returned_on = CASE WHEN $2 = 'returned' AND returned_on IS NULL THEN $7
                          ELSE returned_on END
 WHERE id = $1"""

_RECORD = """
INSERT INTO payment_events (payment_id, event, from_state, to_state, source, bank_event_id,
                            detail, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""


def _check(row: dict[str, object], fact: Fact) -> None:
    if fact.amount_minor is not None and fact.amount_minor != row["amount"]:
        raise PaymentMismatch(f"amount {fact.amount_minor} differs from the payment's")
    if fact.currency is not None and fact.currency != row["currency"]:
        raise PaymentMismatch(f"currency {fact.currency} differs from the payment's")
    known = row["bank_payment_id"]
    if fact.bank_payment_id is not None and known is not None and fact.bank_payment_id != known:
        raise PaymentMismatch("the bank's payment id differs from the one it gave before")


async def apply_fact(conn: Conn, payment_id: str, fact: Fact, now: dt.datetime) -> FactResult:
    """Raises UnknownPayment, PaymentMismatch or IllegalPaymentTransition (nothing changed)."""
    row = await conn.fetchrow(_LOCK, payment_id)
    if row is None:
        raise UnknownPayment(payment_id)
    _check(dict(row), fact)
    state = row["status"]
    target, effect = next_transition(state, fact.event)
    if effect == "release":
        await conn.execute("SELECT hf_payment_release($1, $2)", payment_id, now)
    elif effect == "settle":
        await conn.execute("SELECT hf_payment_settle($1, $2)", payment_id, now)
    elif effect == "reverse":
        await conn.execute("SELECT hf_payment_return($1, $2)", payment_id, now)
    elif effect == "submit":
        await conn.execute(
            "INSERT INTO payment_outbox (payment_id, kind, next_attempt_at, created_at)"
            " VALUES ($1, 'submit', $2, $2) ON CONFLICT (payment_id, kind) DO NOTHING",
            payment_id, now)
    if target != state or fact.bank_payment_id is not None:
        await conn.execute(_UPDATE, payment_id, target, now, fact.bank_payment_id,
                           fact.reason if target != state else None, fact.return_id,
                           fact.value_date or now.date())
    await conn.execute(_RECORD, payment_id, fact.event, state, target, fact.source,
                       fact.bank_event_id, fact.detail, now)
    return FactResult(payment_id, state, target)
