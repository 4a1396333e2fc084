"""Confirmation of Payee: the policy that turns the bank's answer into the payment's next step,
and recording the answer. The bank compares the names; we decide what may proceed.

| result        | policy  | the payment                                                   |
|---------------|---------|---------------------------------------------------------------|
| match         | proceed | queued for submission; the payee is remembered                |
| close_match   | confirm | pending_confirmation with the bank's suggested name           |
| unavailable   | confirm | pending_confirmation (the bank could not check: the customer decides) |
| no_match      | block   | blocked, hold released                                        |

A payee is checked before the first payment to it and again whenever its name changes; once a
check passes (or a close match is confirmed) later payments to it go straight to the queue.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from clearing.payments.facts import Fact, FactResult, apply_fact
from clearing.payments.model import name_key
from holds.db import Conn

__all__ = ["COP_RESULTS", "POLICY", "record_payee_check", "remember_payee"]

COP_RESULTS: Final = frozenset({"match", "close_match", "no_match", "unavailable"})
POLICY: Final[dict[str, str]] = {
    "match": "payee_ok",
    "close_match": "payee_close",
    "unavailable": "payee_close",
    "no_match": "payee_blocked",
}

_PAYEE = """
INSERT INTO payees (account_id, identifier, name_key, cop_result, confirmed_at)
SELECT account_id, coalesce(iban, 'GB:' || sort_code || '/' || account_number), $2, $3, $4
  FROM payments WHERE id = $1
ON CONFLICT (account_id, identifier) DO UPDATE
   SET name_key = EXCLUDED.name_key, cop_result = EXCLUDED.cop_result,
       confirmed_at = EXCLUDED.confirmed_at"""


async def remember_payee(conn: Conn, payment_id: str, cop_result: str, now: dt.datetime) -> None:
    """The payment's beneficiary, under the name it was sent with, needs no check next time."""
    name = await conn.fetchval("SELECT beneficiary_name FROM payments WHERE id = $1",
                               payment_id)
    await conn.execute(_PAYEE, payment_id, name_key(str(name)), cop_result, now)


async def record_payee_check(conn: Conn, payment_id: str, result: str, suggested: str | None,
                             now: dt.datetime) -> FactResult:
    """Apply the bank's answer by the policy (inside the caller's transaction)."""
    if result not in COP_RESULTS:
        raise ValueError(f"unknown Confirmation of Payee result {result!r}")
    done = await apply_fact(conn, payment_id,
                            Fact(POLICY[result], "outbox", detail=f"cop:{result}"), now)
    await conn.execute(
        "UPDATE payments SET cop_result = $2, cop_name = $3 WHERE id = $1",
        payment_id, result, suggested if result == "close_match" else None)
    if result == "match":
        await remember_payee(conn, payment_id, result, now)
    return done
