"""Inbound credits: money the bank received for us. Each is credited once (keyed by the bank's
transaction id, whatever event carried it), to the first of:

1. the account whose **active virtual account** it was sent to (sort code + account number, or
   IBAN), in that account's currency;
2. the account whose **reference code** appears in the payer's reference, once normalised
   (case, spacing and punctuation ignored: "hf-k7m2 qx." finds HFK7M2QX), if exactly one does;
3. otherwise the **suspense** account of its currency, with the reason, for operations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

from clearing.payments.model import normalise_reference
from clearing.payments.virtual_accounts import REFERENCE_PREFIX
from holds.db import Conn

__all__ = ["SUSPENSE_REASONS", "Credit", "CreditResult", "apply_credit", "reference_candidates"]

SUSPENSE_REASONS: Final = frozenset({
    "virtual_account_retired",   # sent to the number of a closed account
    "currency_mismatch",         # the matched account holds another currency
    "ambiguous_reference",       # the reference names several accounts
    "no_match",                  # no virtual account and no reference code
})
_CODE_LEN: Final = 8


@dataclass(frozen=True, slots=True)
class Credit:
    transaction_id: str
    amount_minor: int
    currency: str
    sort_code: str | None
    account_number: str | None
    iban: str | None
    reference: str | None
    payer_name: str | None
    value_date: dt.date

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Credit:
        return cls(str(raw["transaction_id"]), int(raw["amount"]), str(raw["currency"]),
                   raw.get("sort_code"), raw.get("account_number"), raw.get("iban"),
                   raw.get("reference"), raw.get("payer_name"),
                   dt.date.fromisoformat(str(raw["value_date"])))


@dataclass(frozen=True, slots=True)
class CreditResult:
    status: str  # credited | duplicate
    account_id: str
    matched_by: str  # virtual_account | reference | suspense
    suspense_reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    account_id: str | None
    virtual_account_id: int | None
    matched_by: str
    reason: str | None


def reference_candidates(reference: str | None) -> list[str]:
    """Every code-shaped substring of the normalised reference."""
    text = normalise_reference(reference or "")
    return sorted({text[i:i + _CODE_LEN] for i in range(len(text) - _CODE_LEN + 1)
                   if text.startswith(REFERENCE_PREFIX, i)})


async def _by_destination(conn: Conn, credit: Credit) -> tuple[Any, str | None]:
    if credit.iban is not None:
        row = await conn.fetchrow(
            "SELECT v.id, v.account_id, v.status, a.currency FROM virtual_accounts v"
            " JOIN accounts a ON a.id = v.account_id WHERE v.iban = $1", credit.iban)
    elif credit.sort_code is not None and credit.account_number is not None:
        row = await conn.fetchrow(
            "SELECT v.id, v.account_id, v.status, a.currency FROM virtual_accounts v"
            " JOIN accounts a ON a.id = v.account_id"
            " WHERE v.sort_code = $1 AND v.account_number = $2",
            credit.sort_code, credit.account_number)
    else:
        return None, None
    if row is None:
        return None, None
    if row["status"] != "active":
        return None, "virtual_account_retired"
    if row["currency"] != credit.currency:
        return None, "currency_mismatch"
    return row, None


async def _match(conn: Conn, credit: Credit) -> _Target:
    row, reason = await _by_destination(conn, credit)
    if row is not None:
        return _Target(row["account_id"], row["id"], "virtual_account", None)
    rows = await conn.fetch(
        "SELECT v.id, v.account_id, a.currency FROM virtual_accounts v"
        " JOIN accounts a ON a.id = v.account_id"
        " WHERE v.reference_code = ANY($1::text[]) AND v.status = 'active'",
        reference_candidates(credit.reference))
    accounts = {r["account_id"] for r in rows}
    if len(accounts) == 1:
        if rows[0]["currency"] == credit.currency:
            return _Target(rows[0]["account_id"], rows[0]["id"], "reference", None)
        reason = reason or "currency_mismatch"
    elif len(accounts) > 1:
        reason = reason or "ambiguous_reference"
    return _Target(None, None, "suspense", reason or "no_match")


async def apply_credit(conn: Conn, bank_event_id: str, credit: Credit, now: dt.datetime
                       ) -> CreditResult:
    """Credit it (inside the caller's transaction), or find it credited already."""
    # serialise concurrent deliveries of one bank transaction under different event ids
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('credit:' || $1))",
                       credit.transaction_id)
    prior = await conn.fetchrow(
        "SELECT account_id, matched_by, suspense_reason FROM inbound_credits"
        " WHERE bank_transaction_id = $1", credit.transaction_id)
    if prior is not None:
        return CreditResult("duplicate", prior["account_id"], prior["matched_by"],
                            prior["suspense_reason"])
    target = await _match(conn, credit)
    account = target.account_id or await conn.fetchval(
        "SELECT hf_suspense_account($1)", credit.currency)
    await conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account)
    tx = await conn.fetchval(
        "SELECT hf_transfer('inbound_credit', $1, NULL, $2, $3, $4, false, $5)",
        f"credit:{credit.transaction_id}", account, credit.currency, credit.amount_minor,
        credit.reference)
    await conn.execute(
        "INSERT INTO inbound_credits (bank_transaction_id, bank_event_id, account_id, currency,"
        " amount, matched_by, suspense_reason, virtual_account_id, payer_name, reference,"
        " value_date, transaction_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        credit.transaction_id, bank_event_id, account, credit.currency, credit.amount_minor,
        target.matched_by, target.reason, target.virtual_account_id, credit.payer_name,
        credit.reference, credit.value_date, tx, now)
    return CreditResult("credited", str(account), target.matched_by, target.reason)
