"""The bank's webhooks: map them to canonical facts (the only place besides ``bank.py`` that
knows the bank's field names), store them raw and immutable exactly once per event id, and
apply stored ones (payment facts through the state table, credits through ``credits.py``).

Envelope: ``{"id", "type", "created_at", "data": {...}}``. Types:

- ``payment.accepted | payment.settled | payment.rejected | payment.returned``: ``data`` =
  ``{"id" (the bank's payment id), "end_to_end_id" (our payment id), "amount", "currency",
  "reason"?, "return_id"? (returns), "value_date"? (YYYY-MM-DD)}``
- ``credit.received``: ``data`` = ``{"id" (the bank's transaction id), "amount", "currency",
  "creditor": {"sort_code", "account_number"} | {"iban"} | null, "debtor": {"name"}?,
  "reference"?, "value_date"}``

Anything else is stored as informational.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from clearing.payments.credits import Credit, apply_credit
from clearing.payments.facts import Fact, PaymentMismatch, UnknownPayment, apply_fact
from clearing.payments.iban import is_valid_iban, normalise_iban
from clearing.payments.model import InvalidPayment
from clearing.payments.states import IllegalPaymentTransition, could_apply_later
from holds.db import Conn, Executor
from holds.model import MAX_AMOUNT_MINOR, is_currency
from policies.pan import mask_pans, scrub

__all__ = ["PAYMENT_FACTS", "Applied", "apply_bank_event", "parse_webhook", "store_bank_event"]

PROVIDER: Final = "bank"
PAYMENT_FACTS: Final = {
    "payment.accepted": "accepted",
    "payment.settled": "settled",
    "payment.rejected": "rejected",
    "payment.returned": "returned",
}
_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DIGITS: Final = re.compile(r"^[0-9]+$")


def _id(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidPayment("invalid_field", f"{where}{key} must be an id")
    return value


def _money(data: Mapping[str, Any]) -> tuple[int, str]:
    amount, currency = data.get("amount"), data.get("currency")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT_MINOR:
        raise InvalidPayment("invalid_amount", "data.amount must be a positive integer")
    if not is_currency(currency):
        raise InvalidPayment("unknown_currency", "data.currency must be ISO 4217")
    return amount, str(currency)


def _date(data: Mapping[str, Any], required: bool) -> str | None:
    value = data.get("value_date")
    if value is None and not required:
        return None
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise InvalidPayment("invalid_field", "data.value_date must be YYYY-MM-DD") from None


def _free_text(data: Mapping[str, Any], key: str, max_len: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidPayment("invalid_field", f"{key} must be text of up to {max_len}")
    return mask_pans(value)  # payers type anything into a reference


def _creditor(data: Mapping[str, Any]) -> dict[str, str | None]:
    raw = data.get("creditor")
    out: dict[str, str | None] = {"sort_code": None, "account_number": None, "iban": None}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise InvalidPayment("invalid_field", "data.creditor must be an object")
    if raw.get("iban") is not None:
        iban = normalise_iban(str(raw["iban"]))
        if not is_valid_iban(iban):
            raise InvalidPayment("invalid_iban", "data.creditor.iban is not valid")
        out["iban"] = iban
        return out
    sort_code, number = str(raw.get("sort_code", "")), str(raw.get("account_number", ""))
    if not (len(sort_code) == 6 and len(number) == 8 and _DIGITS.match(sort_code + number)):
        raise InvalidPayment("invalid_field", "data.creditor needs sort_code and account_number")
    out["sort_code"], out["account_number"] = sort_code, number
    return out


def _payment_fact(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    amount, currency = _money(data)
    reason = data.get("reason")
    return {
        "kind": "payment", "event": PAYMENT_FACTS[event_type],
        "payment_id": _id(data, "end_to_end_id", "data."),
        "bank_payment_id": _id(data, "id", "data."),
        "amount": amount, "currency": currency,
        "reason": str(reason)[:64] if isinstance(reason, str) else None,
        "return_id": _id(data, "return_id", "data.") if event_type == "payment.returned"
        else None,
        "value_date": _date(data, required=False),
    }


def _credit(data: Mapping[str, Any]) -> dict[str, Any]:
    amount, currency = _money(data)
    debtor = data.get("debtor")
    payer = _free_text(debtor, "name", 140) if isinstance(debtor, dict) else None
    return {
        "kind": "credit", "transaction_id": _id(data, "id", "data."),
        "amount": amount, "currency": currency, **_creditor(data),
        "reference": _free_text(data, "reference", 140), "payer_name": payer,
        "value_date": _date(data, required=True),
    }


def parse_webhook(body: Mapping[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(event id, type, canonical fact or None for informational). Raises InvalidPayment."""
    event_id = _id(body, "id", "")
    event_type = body.get("type")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 64:
        raise InvalidPayment("invalid_field", "type must be a string")
    data = body.get("data")
    if event_type in PAYMENT_FACTS or event_type == "credit.received":
        if not isinstance(data, dict):
            raise InvalidPayment("invalid_field", "data must be an object")
        fact = (_credit(data) if event_type == "credit.received"
                else _payment_fact(event_type, data))
        return event_id, event_type, fact
    return event_id, event_type, None


async def store_bank_event(db: Executor, event_id: str, event_type: str, payload: Any,
                           canonical: Mapping[str, Any] | None) -> str:
    """'accepted' (stored now), 'duplicate' (same event before) or 'conflict' (same id, other
    payload: the first one is kept)."""
    clean = orjson.dumps(scrub(payload), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(clean).hexdigest()
    mapped = None if canonical is None else orjson.dumps(canonical).decode()
    inserted = await db.fetchval(
        "INSERT INTO bank_events (provider, provider_event_id, type, payload, payload_hash,"
        " canonical) VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb)"
        " ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id",
        PROVIDER, event_id, event_type, clean.decode(), digest, mapped)
    if inserted is not None:
        return "accepted"
    prior = await db.fetchval(
        "SELECT payload_hash FROM bank_events WHERE provider = $1 AND provider_event_id = $2",
        PROVIDER, event_id)
    return "duplicate" if prior == digest else "conflict"


@dataclass(frozen=True, slots=True)
class Applied:
    status: Literal["applied", "quarantined"]
    reason: str | None = None
    retryable: bool = False
    kind: str = "informational"


def _fact(raw: dict[str, Any], event_key: str) -> Fact:
    value_date = raw.get("value_date")
    return Fact(
        event=str(raw["event"]), source="bank", bank_event_id=event_key,
        bank_payment_id=raw.get("bank_payment_id"), amount_minor=int(raw["amount"]),
        currency=str(raw["currency"]), reason=raw.get("reason"), return_id=raw.get("return_id"),
        value_date=dt.date.fromisoformat(value_date) if value_date else None,
        detail=raw.get("reason"))


async def apply_bank_event(conn: Conn, provider_event_id: str, canonical: dict[str, Any] | None,
                           now: dt.datetime) -> Applied:
    """Apply one stored event inside the caller's transaction (a savepoint per event)."""
    if canonical is None:
        return Applied("applied")
    event_key = f"{PROVIDER}:{provider_event_id}"
    if canonical.get("kind") == "credit":
        result = await apply_credit(conn, event_key, Credit.from_json(canonical), now)
        return Applied("applied", kind=f"credit_{result.matched_by}")
    fact = _fact(canonical, event_key)
    try:
        async with conn.transaction():
            await apply_fact(conn, str(canonical["payment_id"]), fact, now)
    except UnknownPayment:
        return Applied("quarantined", "unknown_payment", kind=fact.event)
    except PaymentMismatch as exc:
        return Applied("quarantined", f"mismatch: {exc}", kind=fact.event)
    except IllegalPaymentTransition as exc:
        return Applied("quarantined", str(exc), could_apply_later(exc.state, exc.event),
                       kind=fact.event)
    return Applied("applied", kind=fact.event)
