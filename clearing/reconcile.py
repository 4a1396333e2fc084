"""Reconciliation: a bank statement (CSV or JSON lines) against the ledger's bank-facing entries.

Statement lines: ``provider_id, date (YYYY-MM-DD), amount (signed integer minor units: credits
to our account positive, debits negative), currency, reference``. Ledger entries: settled
payments (-amount, the bank's payment id, settlement date), returns (+amount, the bank's return
id) and inbound credits (+amount, the bank's transaction id), dated by the bank's value date.

Matching, in order: by provider id (same id, different amount or currency: an **amount
break**), then the rest by amount + currency + date + normalised reference. What is left is
**missing in ledger** (statement lines) or **missing in statement** (ledger entries dated within
the statement's period). Each run is stored and served as ``GET /v1/reconciliations/{id}``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from clearing.payments.model import new_id, normalise_reference
from holds.db import Conn, Executor
from holds.model import MAX_AMOUNT_MINOR, is_currency

__all__ = [
    "MAX_LINES",
    "Item",
    "LedgerEntry",
    "Result",
    "StatementError",
    "StatementLine",
    "get_reconciliation",
    "load_ledger",
    "match",
    "parse_statement",
    "reconcile",
    "render",
]

MAX_LINES: Final = 200_000
_AMOUNT: Final = re.compile(r"^[+-]?[0-9]{1,16}$")
Format = Literal["csv", "jsonl"]
Kind = Literal["matched", "missing_in_ledger", "missing_in_statement", "amount_break"]


class StatementError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class StatementLine:
    provider_id: str | None
    date: dt.date
    amount_minor: int
    currency: str
    reference: str | None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    provider_id: str | None
    date: dt.date
    amount_minor: int
    currency: str
    reference: str | None
    ledger_ref: str


@dataclass(frozen=True, slots=True)
class Item:
    kind: Kind
    matched_by: str | None
    provider_id: str | None
    currency: str
    statement_amount: int | None
    ledger_amount: int | None
    date: dt.date
    reference: str | None
    ledger_ref: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "matched_by": self.matched_by,
                "provider_id": self.provider_id, "currency": self.currency,
                "statement_amount": self.statement_amount, "ledger_amount": self.ledger_amount,
                "date": self.date.isoformat(), "reference": self.reference,
                "ledger_ref": self.ledger_ref}


@dataclass(frozen=True, slots=True)
class Result:
    items: list[Item]
    period: tuple[dt.date, dt.date] | None

    def count(self, kind: Kind) -> int:
        return sum(1 for i in self.items if i.kind == kind)

    @property
    def ok(self) -> bool:
        return all(i.kind == "matched" for i in self.items)


def _line(raw: dict[str, Any], number: int) -> StatementLine:
    try:
        date = dt.date.fromisoformat(str(raw.get("date")))
    except ValueError:
        raise StatementError(number, "date must be YYYY-MM-DD") from None
    amount = raw.get("amount")
    if isinstance(amount, str) and _AMOUNT.match(amount.strip()):
        amount = int(amount)
    if type(amount) is not int or not 0 < abs(amount) <= MAX_AMOUNT_MINOR:
        raise StatementError(number, "amount must be a non-zero integer in minor units")
    currency = raw.get("currency")
    if not is_currency(currency):
        raise StatementError(number, "currency must be ISO 4217")
    provider_id, reference = raw.get("provider_id") or None, raw.get("reference") or None
    if provider_id is not None and (not isinstance(provider_id, str) or len(provider_id) > 128):
        raise StatementError(number, "provider_id must be text of up to 128 characters")
    if reference is not None and (not isinstance(reference, str) or len(reference) > 140):
        raise StatementError(number, "reference must be text of up to 140 characters")
    return StatementLine(provider_id, date, amount, str(currency), reference)


def parse_statement(text: str, fmt: Format) -> list[StatementLine]:
    """Every line valid, or StatementError naming the first bad one (nothing is stored)."""
    lines: list[StatementLine] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = {"date", "amount", "currency"} - set(reader.fieldnames or ())
        if missing:
            raise StatementError(1, f"header lacks {', '.join(sorted(missing))}")
        rows: Any = ((reader.line_num, row) for row in reader)
    else:
        rows = ((n, raw) for n, raw in enumerate(text.splitlines(), 1) if raw.strip())
    for number, item in rows:
        if len(lines) >= MAX_LINES:
            raise StatementError(number, f"more than {MAX_LINES} lines")
        fields = item
        if fmt == "jsonl":
            try:
                fields = orjson.loads(item)
            except orjson.JSONDecodeError:
                raise StatementError(number, "not a JSON object") from None
            if not isinstance(fields, dict):
                raise StatementError(number, "not a JSON object")
        lines.append(_line(fields, number))
    return lines


def match(statement: list[StatementLine], ledger: list[LedgerEntry]) -> list[Item]:
    """Pure: pair statement lines with ledger entries and classify what is left."""
    items: list[Item] = []
    unused = dict(enumerate(ledger))
    by_id = {e.provider_id: i for i, e in unused.items() if e.provider_id}
    rest: list[StatementLine] = []
    for s in statement:
        index = by_id.pop(s.provider_id, None) if s.provider_id else None
        if index is None:
            rest.append(s)
            continue
        e = unused.pop(index)
        same = (e.amount_minor, e.currency) == (s.amount_minor, s.currency)
        items.append(Item("matched" if same else "amount_break", "provider_id", s.provider_id,
                          s.currency, s.amount_minor, e.amount_minor, s.date, s.reference,
                          e.ledger_ref))
    by_terms: dict[tuple[int, str, dt.date, str], list[int]] = defaultdict(list)
    for i, e in unused.items():
        by_terms[(e.amount_minor, e.currency, e.date,
                  normalise_reference(e.reference or ""))].append(i)
    for s in rest:
        candidates = by_terms.get((s.amount_minor, s.currency, s.date,
                                   normalise_reference(s.reference or "")))
        if candidates:
            e = unused.pop(candidates.pop(0))
            items.append(Item("matched", "amount_date_reference", s.provider_id, s.currency,
                              s.amount_minor, e.amount_minor, s.date, s.reference,
                              e.ledger_ref))
        else:
            items.append(Item("missing_in_ledger", None, s.provider_id, s.currency,
                              s.amount_minor, None, s.date, s.reference, None))
    items += [Item("missing_in_statement", None, e.provider_id, e.currency, None,
                   e.amount_minor, e.date, e.reference, e.ledger_ref) for e in unused.values()]
    return items


_LEDGER: Final = """
SELECT bank_payment_id AS provider_id, settled_on AS day, -amount AS amount, currency,
       reference, id AS ledger_ref
  FROM payments WHERE settled_on BETWEEN $1 AND $2 AND status IN ('settled', 'returned')
UNION ALL
SELECT return_id, returned_on, amount, currency, reference, id || ':return'
  FROM payments WHERE returned_on BETWEEN $1 AND $2 AND status = 'returned'
UNION ALL
SELECT bank_transaction_id, value_date, amount, currency, reference, 'credit:' || id
  FROM inbound_credits WHERE value_date BETWEEN $1 AND $2"""


async def load_ledger(db: Executor, first: dt.date, last: dt.date) -> list[LedgerEntry]:
    rows = await db.fetch(_LEDGER, first, last)
    return [LedgerEntry(r["provider_id"], r["day"], r["amount"], r["currency"], r["reference"],
                        r["ledger_ref"]) for r in rows]


async def _store(conn: Conn, source: str, fmt: Format, result: Result, now: dt.datetime) -> str:
    recon_id = new_id("rec")
    first, last = result.period or (None, None)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO reconciliations (id, source, format, period_from, period_to, matched,"
            " missing_in_ledger, missing_in_statement, amount_breaks, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            recon_id, source[:255], fmt, first, last, result.count("matched"),
            result.count("missing_in_ledger"), result.count("missing_in_statement"),
            result.count("amount_break"), now)
        await conn.executemany(
            "INSERT INTO reconciliation_items (reconciliation_id, kind, matched_by,"
            " provider_id, currency, statement_amount, ledger_amount, entry_date, reference,"
            " ledger_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(recon_id, i.kind, i.matched_by, i.provider_id, i.currency, i.statement_amount,
              i.ledger_amount, i.date, i.reference, i.ledger_ref) for i in result.items])
    return recon_id


async def reconcile(conn: Conn, source: str, text: str, fmt: Format, now: dt.datetime
                    ) -> tuple[str, Result]:
    """Parse, match against the ledger over the statement's period, store. StatementError on
    a bad statement (nothing stored)."""
    statement = parse_statement(text, fmt)
    period = (min(s.date for s in statement), max(s.date for s in statement)) if statement \
        else None
    ledger = await load_ledger(conn, *period) if period else []
    result = Result(match(statement, ledger), period)
    return await _store(conn, source, fmt, result, now), result


async def get_reconciliation(db: Executor, recon_id: str, max_items: int = 1000
                             ) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM reconciliations WHERE id = $1", recon_id)
    if row is None:
        return None
    breaks = await db.fetch(
        "SELECT * FROM reconciliation_items WHERE reconciliation_id = $1 AND kind <> 'matched'"
        " ORDER BY id LIMIT $2", recon_id, max_items)
    return {"reconciliation": dict(row), "breaks": [dict(b) for b in breaks]}


def render(recon_id: str, result: Result) -> str:
    counts = {k: result.count(k) for k in ("matched", "missing_in_ledger",
                                           "missing_in_statement", "amount_break")}
    period = (f"{result.period[0]}..{result.period[1]}" if result.period else "empty")
    lines = [f"reconciliation {recon_id} ({period}): "
             + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())]
    for i in result.items:
        if i.kind != "matched":
            lines.append(f"  {i.kind:<21} {i.date} {i.currency} statement={i.statement_amount}"
                         f" ledger={i.ledger_amount} id={i.provider_id} ref={i.ledger_ref}")
    lines.append("OK: no breaks" if result.ok else "BREAKS found")
    return "\n".join(lines)
