"""Payment intents: create one (stored and its funds held before anything leaves, idempotent on
the caller's key), read one with its history, and the customer's decisions after a close payee
match (confirm, cancel)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from clearing.payments.cop import remember_payee
from clearing.payments.facts import Fact, FactResult, apply_fact
from clearing.payments.model import Beneficiary, name_key, new_id
from holds.db import Conn, Executor

__all__ = [
    "CreateResult",
    "PaymentRequest",
    "cancel_payment",
    "confirm_payment",
    "create_payment",
    "get_payment",
    "new_payment_id",
]


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    account_id: str
    amount_minor: int
    currency: str
    beneficiary: Beneficiary
    reference: str

    def digest(self) -> str:
        """Identifies the request's meaning: the same key with another digest is a conflict."""
        b = self.beneficiary
        parts = (self.account_id, self.amount_minor, self.currency, b.name, b.sort_code,
                 b.account_number, b.iban, self.reference)
        raw = "\x1f".join("" if p is None else str(p) for p in parts)
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class CreateResult:
    # created | replay | conflict | unknown_account | wrong_kind | account_closed |
    # currency_mismatch | insufficient_funds
    status: str
    payment_id: str | None


def new_payment_id() -> str:
    return new_id("pay")


async def create_payment(db: Executor, key: str, req: PaymentRequest, fee_minor: int,
                         now: dt.datetime, check_grace_s: float = 0.0) -> CreateResult:
    """Store and hold. A payee check, if needed, is left to the caller for ``check_grace_s``
    (the API runs it inline) before the payments worker may take it."""
    b = req.beneficiary
    row = await db.fetchrow(
        "SELECT status, payment_id FROM hf_payment_create($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10, $11, $12, $13, $14, $15, $16)",
        new_payment_id(), key, req.digest(), req.account_id, req.currency, req.amount_minor,
        fee_minor, b.name, b.sort_code, b.account_number, b.iban, req.reference, b.identifier,
        name_key(b.name), now, now + dt.timedelta(seconds=check_grace_s))
    if row is None:
        raise RuntimeError("hf_payment_create returned no row")
    return CreateResult(row["status"], row["payment_id"])


_PAYMENT = """
SELECT p.*, h.amount AS held_amount, h.state AS hold_state FROM payments p
  JOIN payment_holds h ON h.payment_id = p.id WHERE p.id = $1"""


async def get_payment(db: Executor, payment_id: str) -> dict[str, Any] | None:
    """The payment row with its hold and its history (oldest first)."""
    row = await db.fetchrow(_PAYMENT, payment_id)
    if row is None:
        return None
    events = await db.fetch(
        "SELECT event, from_state, to_state, source, detail, created_at FROM payment_events"
        " WHERE payment_id = $1 ORDER BY id", payment_id)
    return {"payment": dict(row), "events": [dict(e) for e in events]}


async def confirm_payment(conn: Conn, payment_id: str, now: dt.datetime) -> FactResult:
    """The customer saw the bank's suggested name and wants to pay this payee all the same."""
    async with conn.transaction():
        done = await apply_fact(conn, payment_id, Fact("confirm", "api"), now)
        await remember_payee(conn, payment_id, "confirmed", now)
    return done


async def cancel_payment(conn: Conn, payment_id: str, now: dt.datetime) -> FactResult:
    async with conn.transaction():
        return await apply_fact(conn, payment_id, Fact("cancel", "api"), now)
