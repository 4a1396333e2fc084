"""Virtual account numbers: one active per customer account (a sort code + 8-digit account
number, the same as a UK IBAN, and a reference code for credits sent to the pooled account),
retired when the account closes and never reused. Closing an account lives here too, because
retiring its numbers is what closing means to the outside world."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Final

import asyncpg

from clearing.payments.iban import gb_iban
from holds.db import Conn, Executor
from policies.pan import luhn_valid

__all__ = [
    "REFERENCE_PREFIX",
    "VirtualAccount",
    "allocate",
    "close_account",
    "list_virtual_accounts",
    "new_reference_code",
]

# Reference codes: a fixed prefix (so a code inside a free-text reference is recognisable and a
# credit is only matched by a code that looks like one) and six characters that cannot be
# misread (no I, L, O, U, 0, 1).
REFERENCE_PREFIX: Final = "HF"
_ALPHABET: Final = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
_ATTEMPTS: Final = 20


@dataclass(frozen=True, slots=True)
class VirtualAccount:
    id: int
    account_id: str
    sort_code: str
    account_number: str
    iban: str
    reference_code: str
    status: str
    created_at: dt.datetime
    retired_at: dt.datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "id": f"va_{self.id}",
            "account_id": self.account_id,
            "sort_code": self.sort_code,
            "account_number": self.account_number,
            "iban": self.iban,
            "reference_code": self.reference_code,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }


def new_reference_code() -> str:
    return REFERENCE_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(6))


def _va(row: asyncpg.Record) -> VirtualAccount:
    return VirtualAccount(row["id"], row["account_id"], row["sort_code"], row["account_number"],
                          row["iban"], row["reference_code"], row["status"], row["created_at"],
                          row["retired_at"])


async def _account_state(conn: Conn, account_id: str) -> str:
    row = await conn.fetchrow(
        "SELECT kind, EXISTS (SELECT 1 FROM account_closures c WHERE c.account_id = a.id)"
        " AS closed FROM accounts a WHERE id = $1 FOR UPDATE", account_id)
    if row is None:
        return "unknown_account"
    if row["kind"] != "customer":
        return "wrong_kind"
    return "account_closed" if row["closed"] else "open"


async def _next_number(conn: Conn, sort_code: str) -> str:
    for _ in range(_ATTEMPTS):
        value = await conn.fetchval("SELECT nextval('virtual_account_numbers')")
        number = f"{value:08d}"
        # sort code + account number is the 14-digit run inside the IBAN: never let it look
        # like a card number to a PAN scanner (logs, tables)
        if not luhn_valid(sort_code + number):
            return number
    raise RuntimeError("no account number found")  # 1 in 10 is skipped; 20 misses won't happen


async def allocate(conn: Conn, account_id: str, sort_code: str, bank_code: str,
                   now: dt.datetime) -> tuple[str, VirtualAccount | None]:
    """('created' | 'existing', the account's active virtual account), or a refusal status
    ('unknown_account', 'wrong_kind', 'account_closed') and None."""
    async with conn.transaction():
        state = await _account_state(conn, account_id)
        if state != "open":
            return state, None
        row = await conn.fetchrow(
            "SELECT * FROM virtual_accounts WHERE account_id = $1 AND status = 'active'",
            account_id)
        if row is not None:
            return "existing", _va(row)
        number = await _next_number(conn, sort_code)
        iban = gb_iban(bank_code, sort_code, number)
        for _ in range(_ATTEMPTS):
            row = await conn.fetchrow(
                "INSERT INTO virtual_accounts (account_id, sort_code, account_number, iban,"
                " reference_code, status, created_at) VALUES ($1, $2, $3, $4, $5, 'active', $6)"
                " ON CONFLICT (reference_code) DO NOTHING RETURNING *",
                account_id, sort_code, number, iban, new_reference_code(), now)
            if row is not None:
                return "created", _va(row)
    raise RuntimeError("no free reference code found")


async def list_virtual_accounts(db: Executor, account_id: str) -> list[VirtualAccount]:
    rows = await db.fetch("SELECT * FROM virtual_accounts WHERE account_id = $1 ORDER BY id",
                          account_id)
    return [_va(r) for r in rows]


async def close_account(conn: Conn, account_id: str, now: dt.datetime
                        ) -> tuple[str, dt.datetime | None]:
    """Close a customer account: only when nothing is posted or held and every card on it is
    terminated, so nothing can move on it any more. Retires its virtual accounts. Returns
    ('closed' | 'already_closed', closed_at) or a refusal ('unknown_account', 'wrong_kind',
    'not_empty', 'active_cards', None). A payment returned after closing is still credited:
    the money is the customer's, and operations pay it out."""
    async with conn.transaction():
        closed_at = await conn.fetchval(
            "SELECT closed_at FROM account_closures WHERE account_id = $1", account_id)
        state = await _account_state(conn, account_id)
        if state == "account_closed":
            return "already_closed", closed_at
        if state != "open":
            return state, None
        row = await conn.fetchrow("SELECT posted, held FROM accounts WHERE id = $1", account_id)
        if row is None or row["posted"] != 0 or row["held"] != 0:
            return "not_empty", None
        if await conn.fetchval("SELECT 1 FROM cards WHERE account_id = $1"
                               " AND state <> 'terminated' LIMIT 1", account_id):
            return "active_cards", None
        await conn.execute("INSERT INTO account_closures (account_id, closed_at) VALUES ($1, $2)",
                           account_id, now)
        await conn.execute(
            "UPDATE virtual_accounts SET status = 'retired', retired_at = $2"
            " WHERE account_id = $1 AND status = 'active'", account_id, now)
    return "closed", now
