"""What the provider adapters share: authenticated raw bodies, exact money conversion, field
access with stable error codes, the decision call, and storing events in the inbox.

Identity scheme (every adapter): the canonical authorisation id is ``<provider>:<provider id>``
(``lithic:<ASA token>``, ``marqeta:<JIT funding token>``, ``stripe:<iauth id>``), so ids from
different providers can never collide with each other or with native ids, and the hold carries
the same id. The request's ``provider_id`` stays the provider's own id, so
``GET /v1/authorizations/{id}`` finds an authorisation by either form.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson
from aiohttp import web

from authz.app import AUTHORIZER, CLOCK, METRICS, POOL
from authz.errors import BadRequest, Conflict, Unauthorized
from authz.http import ID_RE, opt_str, refuse_nul, req_id
from authz.providers.countries import alpha2_of
from clearing.events import LifecycleEvent
from clearing.inbox import store_event
from holds.ledger import get_account
from holds.model import MAX_AMOUNT_MINOR, Account, currency_exponent, is_currency
from policies.model import AuthorizationRequest, Decision
from policies.pan import RESTRICTED_KEYS, luhn_valid, mask_pans
from policies.store import load_card

__all__ = [
    "UNKNOWN_COUNTRY",
    "InboxEvent",
    "canonical_id",
    "country",
    "currency_code",
    "decide",
    "drop_restricted",
    "ident",
    "inbox_event",
    "major_to_minor",
    "mcc_code",
    "merchant_text",
    "minor_to_major",
    "note_unknown",
    "obj",
    "opt_list",
    "parse_exact_json",
    "parse_json",
    "ref",
    "store_all",
    "text",
    "usable_account",
    "verified_body",
]

log = logging.getLogger("holdfast.providers")

# ISO 3166 "user-assigned" code: the merchant's country is absent or not a code we know. Rules
# that allow-list countries then decline, rules that block-list them do not match.
UNKNOWN_COUNTRY: Final = "ZZ"
# Provider payloads nest a few levels; anything deeper is refused before it is walked.
_MAX_DEPTH: Final = 32
_MCC_RE: Final = re.compile(r"^[0-9]{4}$")
_DIGITS_RE: Final = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")
_DECIMAL_RE: Final = re.compile(r"^-?[0-9]{1,24}(\.[0-9]{1,24})?$")
# card data some providers name their own way (policies.pan.RESTRICTED_KEYS has the usual names)
_RESTRICTED: Final = RESTRICTED_KEYS | frozenset({
    "cvv_number", "cvv_2", "expiration", "expiration_time", "exp_month", "exp_year",
    "track_1", "track_2", "pin_data", "emv_data",
})
# ISO 8583 data elements that carry card data: PAN, expiry, extended PAN, tracks, PIN, chip data
_RESTRICTED_DE: Final = frozenset({"2", "14", "34", "35", "36", "45", "52", "55"})


async def verified_body(app: web.Application, request: web.BaseRequest,
                        check: Callable[[bytes], object]) -> bytes:
    """The raw body once ``check`` accepted it; a refusal is counted before it propagates.
    (``app`` given, not read from the request: authz/front.py's requests come past the router,
    which is what sets ``request.app``.)"""
    raw = await request.read()
    try:
        check(raw)
    except Unauthorized as exc:
        app[METRICS].auth_failures.labels(request.path, exc.code).inc()
        raise
    return raw


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise BadRequest("invalid_body", f"body is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("invalid_body", "body must be a JSON object")
    _check_depth(body)
    return body


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object whose amounts are integers (Lithic, Stripe): orjson, as native does."""
    refuse_nul(raw)
    try:
        return _object(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "body is not valid JSON") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_exact_json(raw: bytes) -> dict[str, Any]:
    """A JSON object whose decimal numbers stay exact (``Decimal``, never ``float``): Marqeta sends
    money in major units and 0.1 + 0.2 must not become 0.30000000000000004."""
    refuse_nul(raw)
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # includes JSONDecodeError and over-long integers
        raise BadRequest("invalid_json", "body is not valid JSON") from None
    return _object(body)


def obj(parent: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """A nested object; absent or null reads as empty (providers omit what does not apply)."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("invalid_field", f"{where}{key} must be an object")
    return value


def opt_list(parent: Mapping[str, Any], key: str, where: str = "", max_items: int = 1000
             ) -> list[Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > max_items:
        raise BadRequest("invalid_field", f"{where}{key} must be a list of at most {max_items}")
    return value


def text(parent: Mapping[str, Any], key: str, where: str = "", max_len: int = 256) -> str | None:
    """An optional string field; empty reads as absent."""
    if parent.get(key) == "":
        return None
    return opt_str(parent, key, max_len, where)


def _not_a_card_number(value: str, field: str) -> str:
    """Ids are stored as given, so an id that is a card number is refused. Only unbroken digit
    runs count: joined by dashes, the digit groups of about one UUID in 500 would pass Luhn."""
    for match in _DIGITS_RE.finditer(value):
        if luhn_valid(match.group(0)):
            raise BadRequest("invalid_field", f"{field} must not be a card number")
    return value


def ident(parent: Mapping[str, Any], key: str, where: str = "") -> str:
    """A required provider id (token, card token): id-shaped, and not a card number."""
    return _not_a_card_number(req_id(parent, key, where), f"{where}{key}")


def ref(value: object, field: str) -> str:
    """A provider id taken from anywhere in a payload: an id-shaped string."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise BadRequest("invalid_field", f"{field} may contain only letters, digits and . _ : -")
    return _not_a_card_number(value, field)


def canonical_id(provider: str, provider_id: str) -> str:
    value = f"{provider}:{provider_id}"
    if len(value) > 64 or not ID_RE.match(value):
        raise BadRequest("invalid_field", f"{provider} authorisation id is too long or malformed")
    return _not_a_card_number(value, f"{provider} authorisation id")


def currency_code(value: object, field: str) -> str:
    if value is None:
        raise BadRequest("missing_field", f"{field} is required")
    code = value.upper() if isinstance(value, str) else value
    if not is_currency(code):
        raise BadRequest("unknown_currency", f"{field} must be an ISO 4217 alphabetic code")
    return str(code)


def major_to_minor(value: object, currency: str, field: str, *, allow_zero: bool = False) -> int:
    """Exact conversion of a decimal amount in major units to integer minor units, using the
    currency's exponent (JPY 0, GBP 2, BHD 3). A value the currency cannot express exactly is
    refused, never rounded."""
    if value is None:
        raise BadRequest("missing_field", f"{field} is required")
    if isinstance(value, bool):
        raise BadRequest("invalid_amount", f"{field} must be a decimal amount")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and _DECIMAL_RE.match(value):
        amount = Decimal(value)
    else:
        raise BadRequest("invalid_amount", f"{field} must be a decimal amount")
    sign, digits, exponent = amount.as_tuple()
    # bounds first, so a hostile exponent (1e999999) costs nothing to refuse
    if not isinstance(exponent, int) or len(digits) > 40 or not -40 <= exponent <= 40:
        raise BadRequest("invalid_amount", f"{field} is out of range")
    coefficient = int("".join(map(str, digits)) or "0")
    places = currency_exponent(currency)
    shift = exponent + places
    if shift >= 0:
        minor = int(coefficient * 10**shift)
    else:
        divisor = int(10**-shift)
        if coefficient % divisor:
            raise BadRequest(
                "amount_precision", f"{field} has more decimal places than {currency} allows "
                f"({places})")
        minor = coefficient // divisor
    if sign:
        minor = -minor
    low = 0 if allow_zero else 1
    if not low <= minor <= MAX_AMOUNT_MINOR:
        raise BadRequest("invalid_amount", f"{field} is out of range")
    return minor


def minor_to_major(minor: int, currency: str) -> str:
    """Integer minor units as an exact decimal string in major units (191 GBP -> "1.91")."""
    places = currency_exponent(currency)
    digits = str(abs(minor)).rjust(places + 1, "0")
    body = digits if places == 0 else f"{digits[:-places]}.{digits[-places:]}"
    return f"-{body}" if minor < 0 else body


def mcc_code(parent: Mapping[str, Any], key: str, where: str = "") -> str:
    value = parent.get(key)
    if value is None or value == "":
        raise BadRequest("missing_field", f"{where}{key} is required")
    if not isinstance(value, str) or not _MCC_RE.match(value):
        raise BadRequest("invalid_mcc", f"{where}{key} must be four digits (ISO 18245)")
    return value


def country(app: web.Application, provider: str, value: object, field: str) -> str:
    """Alpha-2 for an alpha-2, alpha-3 or numeric code; ``ZZ`` for absent or unknown codes."""
    if value is None or value == "":
        return UNKNOWN_COUNTRY
    code = alpha2_of(value) if isinstance(value, str) and len(value) <= 3 else None
    if code is None:
        note_unknown(app, provider, field, value)
        return UNKNOWN_COUNTRY
    return code


def merchant_text(value: str | None, max_len: int = 128) -> str:
    """Merchant fields are free text from the network: masked, so a number typed into a
    descriptor never reaches a table."""
    return mask_pans(value or "")[:max_len]


def note_unknown(app: web.Application, provider: str, field: str, value: object) -> None:
    """A provider enum grew: count it by field (the value itself is unbounded, so it is only
    logged, masked and truncated)."""
    app[METRICS].provider_unknown_values.labels(provider, field).inc()
    log.warning("unknown %s %s value %r", provider, field, mask_pans(str(value))[:64])


async def decide(app: web.Application, req: AuthorizationRequest, started: float) -> Decision:
    decision = await app[AUTHORIZER].authorize(req)
    app[METRICS].observe_decision(
        req.provider, decision.approved, decision.reason.label, time.perf_counter() - started
    )
    return decision


def drop_restricted(value: Any) -> Any:
    """A copy without card numbers, CVVs, PIN or track data (by key, including ISO 8583 data
    elements under ``raw_iso8583``), and with card numbers in text masked."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in _RESTRICTED:
                continue
            if key == "raw_iso8583" and isinstance(item, dict):
                out[key] = drop_restricted(
                    {k: v for k, v in item.items() if k not in _RESTRICTED_DE})
            else:
                out[key] = drop_restricted(item)
        return out
    if isinstance(value, list):
        return [drop_restricted(v) for v in value]
    if isinstance(value, str):
        return mask_pans(value)
    if isinstance(value, Decimal) or (
            type(value) is int and not -(2**63) <= value < 2**64):
        # exact, and JSON-serialisable by the inbox (orjson refuses Decimal and big integers)
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class InboxEvent:
    id: str
    type: str
    payload: Any
    canonical: LifecycleEvent | None


def inbox_event(provider: str, event_id: str, provider_type: str, raw: Any,
                canonical: LifecycleEvent | None) -> InboxEvent:
    """The inbox row for a provider event: the provider's payload as received (card data
    removed) and, when the adapter can say what it means for the ledger, its canonical lifecycle
    event. The row's type is then the canonical type; otherwise ``<provider>:<provider type>``
    and the event is informational (recorded, applied as nothing)."""
    row_type = canonical.type if canonical else f"{provider}:{mask_pans(provider_type)}"
    # the id and type are stored as given (not scrubbed like payloads): masked here, which is
    # deterministic, so a redelivery still finds its first copy
    return InboxEvent(mask_pans(event_id), row_type, drop_restricted(raw), canonical)


async def store_all(app: web.Application, provider: str, events: Sequence[InboxEvent]
                    ) -> list[str]:
    """Store a delivery's events all or nothing: a conflicting id (same id, other payload) rolls
    the whole delivery back and answers 409, so the provider retries and nothing is half-kept."""
    statuses: list[str] = []
    async with app[POOL].acquire() as conn, conn.transaction():
        for event in events:
            canonical = None if event.canonical is None else event.canonical.to_json()
            stored = await store_event(conn, provider, event.id, event.type, event.payload,
                                       canonical=canonical)
            if stored.status == "conflict":
                raise Conflict("idempotency_conflict",
                               "an event with this id was received before with another body")
            statuses.append(stored.status)
    return statuses


async def usable_account(app: web.Application, card_id: str) -> Account | None:
    """The account behind an active, unexpired card, for requests that place no hold (balance
    inquiries, zero-amount verifications); None when the card may not be used."""
    pool = app[POOL]
    card = await load_card(pool, card_id)
    if card is None or card.state != "active":
        return None
    month = time.strftime("%Y-%m", time.gmtime(app[CLOCK]()))
    if card.expires is not None and month > card.expires:
        return None
    return await get_account(pool, card.account_id)
