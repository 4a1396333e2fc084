"""One Python call per ledger operation, each one PL/pgSQL call (one round trip).

The functions in ``migrations/`` lock rows in a fixed order, check for a replay of the operation's
id, then act; Python only passes arguments and reads the result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from holds.db import Executor
from holds.model import Account

__all__ = [
    "AUTHORIZE_BATCH_SQL",
    "AccountConflict",
    "AuthorizeItem",
    "AuthorizeResult",
    "DepositResult",
    "authorize_many",
    "create_account",
    "deposit",
    "get_account",
    "get_authorization",
]


_AUTHORIZE = (
    "SELECT status, authorization_id, decision, approved_amount, reason, stand_in, counted FROM "
    "hf_authorize($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb,$13,$14,$15,$16,$17,$18,$19,$20,"
    "$21,$22,$23)"
)
# one array of records (migration 0016): asyncpg encodes a record's fields directly, while an
# array of columns costs it a Python-level isinstance test per element and field. The raw rows
# (idx first) are what the set-wise test and the ledger benchmark compare, so they send this too.
AUTHORIZE_BATCH_SQL = (
    "SELECT idx, status, authorization_id, decision, approved_amount, reason, stand_in, counted "
    "FROM hf_authorize_batch($1::hf_authorize_request[], $2)"
)


class AuthorizeItem(NamedTuple):
    """One authorisation request as the ledger takes it (``hf_authorize``'s arguments but the
    stand-in cap, which is a server setting). A tuple: in a batch it is sent as it is, one
    ``hf_authorize_request`` record (migration 0016), whose fields are these, in this order."""

    provider: str
    provider_id: str
    sequence: int
    authorization_id: str
    parent_id: str | None
    card_id: str
    amount_minor: int
    currency: str
    partial_allowed: bool
    # the Redis policy verdict (None: every rule passed)
    rule_reason: str | None
    policy_version: int | None
    # the velocity counters the decision saw (JSON text), None when Redis did not count it
    counters: str | None
    request_hash: str
    now: dt.datetime
    hold_expires: dt.datetime
    merchant_id: str
    merchant_name: str
    mcc: str
    country: str
    channel: str
    stand_in: bool
    counted: bool


class AuthorizeResult(NamedTuple):
    status: str  # 'new' | 'replay' | 'conflict'
    authorization_id: str
    approved: bool
    approved_amount_minor: int
    reason: str
    stand_in: bool
    # whether the attempt that recorded the decision had counted it in the velocity counters
    counted: bool


def _result(row: Sequence[Any]) -> AuthorizeResult:
    # (status, authorization_id, decision, approved_amount, reason, stand_in, counted)
    return AuthorizeResult(row[0], row[1], row[2] == "approve", row[3], row[4], row[5], row[6])


async def authorize_many(
    db: Executor,
    items: Sequence[AuthorizeItem],
    *,
    stand_in_cap_minor: int,
    timeout_s: float | None = None,
) -> list[AuthorizeResult]:
    """Decide funds, record the decision and place (or raise) the hold for each item, in order,
    in one transaction (``hf_authorize_batch``; a single item goes to ``hf_authorize``). Either
    every item is recorded or none is. With ``timeout_s``, a call still running then is
    cancelled on the server (rolled back) and TimeoutError raised."""
    if len(items) == 1:
        item = items[0]
        row = await db.fetchrow(
            _AUTHORIZE, *item[:21], stand_in_cap_minor, item.counted, timeout=timeout_s)
        if row is None:  # the function always returns one row
            raise RuntimeError("hf_authorize returned no row")
        return [_result(row)]
    rows = await db.fetch(AUTHORIZE_BATCH_SQL, items, stand_in_cap_minor, timeout=timeout_s)
    if len(rows) != len(items):
        raise RuntimeError(f"hf_authorize_batch answered {len(rows)} rows for {len(items)}")
    results: list[AuthorizeResult | None] = [None] * len(items)
    for row in rows:
        results[row[0] - 1] = _result(row[1:])
    if any(r is None for r in results):
        raise RuntimeError("hf_authorize_batch left a request unanswered")
    return [r for r in results if r is not None]


class AccountConflict(ValueError):
    """An account with this id exists with other attributes."""


_ACCOUNT_COLUMNS = "id, kind, currency, posted, held, overdraft_limit"


def _account(row: asyncpg.Record) -> Account:
    return Account(
        id=row["id"],
        kind=row["kind"],
        currency=row["currency"],
        posted_minor=row["posted"],
        held_minor=row["held"],
        overdraft_limit_minor=row["overdraft_limit"],
    )


async def create_account(
    db: Executor, account_id: str, kind: str, currency: str, overdraft_limit_minor: int
) -> tuple[Account, bool]:
    """Create an account; the same id with the same attributes again is a no-op (created=False),
    with other attributes an ``AccountConflict``."""
    row = await db.fetchrow(
        f"INSERT INTO accounts (id, kind, currency, overdraft_limit) VALUES ($1, $2, $3, $4)"
        f" ON CONFLICT (id) DO NOTHING RETURNING {_ACCOUNT_COLUMNS}",
        account_id, kind, currency, overdraft_limit_minor,
    )
    if row is not None:
        return _account(row), True
    existing = await get_account(db, account_id)
    if existing is None:  # deleted in between: accounts are never deleted
        raise RuntimeError(f"account {account_id} vanished")
    same = (existing.kind, existing.currency, existing.overdraft_limit_minor) == (
        kind, currency, overdraft_limit_minor,
    )
    if not same:
        raise AccountConflict(f"account {account_id} exists with other attributes")
    return existing, False


async def get_account(db: Executor, account_id: str) -> Account | None:
    """The account with deltas not yet rolled up counted in (settlement accounts)."""
    row = await db.fetchrow(
        "SELECT id, kind, currency, held, overdraft_limit, posted + coalesce("
        "(SELECT sum(amount) FROM account_deltas d WHERE d.account_id = a.id), 0)::bigint AS posted"
        " FROM accounts a WHERE id = $1",
        account_id,
    )
    return None if row is None else _account(row)


@dataclass(frozen=True, slots=True)
class DepositResult:
    status: str  # 'created' | 'replay' | 'conflict' | 'unknown_account' | 'wrong_kind'
    transaction_id: int | None
    account_id: str
    amount_minor: int
    currency: str | None
    reference: str | None
    created_at: dt.datetime | None


async def deposit(
    db: Executor, key: str, account_id: str, amount_minor: int, reference: str | None,
    request_hash: str,
) -> DepositResult:
    row = await db.fetchrow(
        "SELECT * FROM hf_deposit($1, $2, $3, $4, $5)",
        key, account_id, amount_minor, reference, request_hash,
    )
    if row is None:
        raise RuntimeError("hf_deposit returned no row")
    return DepositResult(
        status=row["status"],
        transaction_id=row["transaction_id"],
        account_id=row["account_id"],
        amount_minor=row["amount"],
        currency=row["currency"],
        reference=row["reference"],
        created_at=row["created_at"],
    )


async def get_authorization(db: Executor, authorization_id: str, providers: Sequence[str]
                            ) -> dict[str, Any] | None:
    """The authorisation (found by its id or by the id of any of its requests at one of
    ``providers``, an index lookup each) with its hold, the history of its decisions and the
    lifecycle operations applied to it."""
    auth = await db.fetchrow(
        "SELECT a.*, hf_authorization_state(a.state, h.state) AS lifecycle_state,"
        " h.state AS hold_state, h.authorized, h.posted AS hold_posted, h.released,"
        " h.remaining, h.expires_at"
        "  FROM authorizations a LEFT JOIN holds h ON h.id = a.id"
        " WHERE a.id = COALESCE("
        "   (SELECT id FROM authorizations WHERE id = $1),"
        "   (SELECT authorization_id FROM authorization_requests"
        "     WHERE provider = ANY($2::text[]) AND provider_id = $1"
        "     ORDER BY id NULLS FIRST LIMIT 1))",
        authorization_id, list(providers),
    )
    if auth is None:
        return None
    history = await db.fetch(
        "SELECT provider_id, sequence, kind, amount, currency, decision, approved_amount, reason,"
        " stand_in, policy_version, counters::text AS counters, decided_at"
        "  FROM authorization_requests WHERE authorization_id = $1"
        " ORDER BY id NULLS FIRST",  # the initial request (NULL id: on its authorisation) first
        auth["id"],
    )
    events = await db.fetch(
        "SELECT op_id, kind, requested, posted, released, forced, created_at"
        "  FROM ledger_operations WHERE authorization_id = $1 ORDER BY id",
        auth["id"],
    )
    return {"authorization": dict(auth), "history": [dict(r) for r in history],
            "events": [dict(r) for r in events]}
