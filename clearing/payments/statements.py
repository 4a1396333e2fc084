"""Account statements: the postings of one account, newest first, paged by an opaque cursor.

The cursor names the last entry returned (``base64url("e1:<posting id>")``), so a page is a
range scan of the ``(account_id, id)`` index however deep it is, and entries posted meanwhile
never shift a page (they appear on the first page, not in the middle of a walk)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Final

from holds.db import Executor

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Entry", "InvalidCursor", "Page", "decode_cursor",
           "encode_cursor", "entries"]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
_PREFIX: Final = "e1:"

_QUERY: Final = """
SELECT p.id, p.transaction_id, p.amount, p.currency, p.created_at, t.kind, t.reference, t.forced
  FROM postings p JOIN ledger_transactions t ON t.id = p.transaction_id
 WHERE p.account_id = $1 AND ($2::bigint IS NULL OR p.id < $2)
 ORDER BY p.id DESC LIMIT $3"""


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    transaction_id: int
    kind: str
    amount_minor: int
    currency: str
    reference: str | None
    forced: bool
    created_at: dt.datetime

    def to_json(self) -> dict[str, object]:
        return {
            "id": f"ent_{self.id}",
            "transaction_id": f"txn_{self.transaction_id}",
            "kind": self.kind,
            "amount": self.amount_minor,
            "currency": self.currency,
            "reference": self.reference,
            "forced": self.forced,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next_cursor: str | None


def encode_cursor(posting_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{posting_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(cursor) from None
    value = raw.removeprefix(_PREFIX)
    if raw == value or not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise InvalidCursor(cursor)
    return int(value)


async def entries(db: Executor, account_id: str, cursor: str | None,
                  limit: int = DEFAULT_LIMIT) -> Page:
    before = None if cursor is None else decode_cursor(cursor)
    rows = await db.fetch(_QUERY, account_id, before, limit + 1)
    found = [Entry(r["id"], r["transaction_id"], r["kind"], r["amount"], r["currency"],
                   r["reference"], r["forced"], r["created_at"]) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(found, encode_cursor(found[-1].id) if more and found else None)
