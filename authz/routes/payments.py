"""Outbound payments (DESIGN §4, §9) and the bank's webhooks.

- ``POST /v1/payments`` with ``Idempotency-Key``: 201 the new payment; the same key and body
  again: 200 the same payment (as it stands now); the same key with another body: 409
  ``idempotency_conflict``. The intent is stored and its amount and fee held before anything
  leaves; a new or renamed payee is checked with the bank (Confirmation of Payee) within the
  request when the bank answers in time, else by the payments worker.
- ``GET /v1/payments/{id}``: the state and its history; ``POST /v1/payments/{id}/confirm``
  after a close payee match, ``/cancel`` instead (both only from ``pending_confirmation``).
- ``POST /providers/bank/webhooks``: the bank's facts, ``Bank-Signature`` checked on the raw
  bytes before parsing, stored once per event id and applied by the payments worker.

Scopes: ``admin`` and ``customer`` create, confirm and cancel; ``support`` and ``ops`` read too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import asyncpg
from aiohttp import web

from authz.app import CLOCK, METRICS, POOL, SETTINGS
from authz.errors import ApiError, BadRequest, Conflict, NotFound, Unauthorized, Unprocessable
from authz.http import ID_RE, json_response, parse_json_object, req_amount, req_currency
from authz.http import require_scope as _require_scope
from authz.signatures import verify_native
from clearing.payments.bank import BankClient, BankConfig
from clearing.payments.facts import UnknownPayment
from clearing.payments.intents import (
    PaymentRequest,
    cancel_payment,
    confirm_payment,
    create_payment,
    get_payment,
)
from clearing.payments.metrics import PaymentGauges, PaymentMetrics
from clearing.payments.model import InvalidPayment, parse_beneficiary, parse_reference
from clearing.payments.outbox import Outbox, OutboxConfig
from clearing.payments.states import IllegalPaymentTransition
from clearing.payments.stats import read_payment_stats
from clearing.payments.webhooks import parse_webhook, store_bank_event

__all__ = ["OUTBOX", "routes", "setup"]

log = logging.getLogger("holdfast.payments")
routes = web.RouteTableDef()

OUTBOX: Final = web.AppKey("payments_outbox", Outbox)
_METRICS: Final = web.AppKey("payment_metrics", PaymentMetrics)
_GAUGES: Final = web.AppKey("payment_gauges", PaymentGauges)
_KEY_RE: Final = re.compile(r"^[\x21-\x7e]{1,128}$")
_WRITERS: Final = ("customer",)
_READERS: Final = ("customer", "support", "ops")




# what hf_payment_create's refusals mean to the caller: (error class, code, message)
_REFUSALS: Final[dict[str, tuple[type[ApiError], str, str]]] = {
    "conflict": (Conflict, "idempotency_conflict",
                 "this Idempotency-Key was used with a different body"),
    "unknown_account": (NotFound, "unknown_account", "no such account"),
    "wrong_kind": (Conflict, "wrong_account_kind", "payments are made from customer accounts"),
    "account_closed": (Conflict, "account_closed", "the account is closed"),
    "currency_mismatch": (Unprocessable, "currency_mismatch", "currency is not the account's"),
    "insufficient_funds": (Unprocessable, "insufficient_funds",
                           "available funds do not cover the amount and the fee"),
}


def setup(app: web.Application) -> None:
    """Routes, the bank client and the payment gauges (called by ``make_app``)."""
    from authz.routes import banking

    app.add_routes(routes)
    app.add_routes(banking.routes)
    registry = app[METRICS].registry
    app[_METRICS] = PaymentMetrics(registry)
    app[_GAUGES] = PaymentGauges(registry)
    app.cleanup_ctx.append(_bank)


async def _bank(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = aiohttp.ClientSession()
    config = BankConfig(
        url=settings.bank_url,
        api_key=settings.bank_api_key.reveal() if settings.bank_api_key else None,
        submit_timeout_s=settings.bank_submit_timeout_ms / 1000,
        payee_check_timeout_s=settings.payee_check_timeout_ms / 1000)
    app[OUTBOX] = Outbox(app[POOL], BankClient(session, config), OutboxConfig(), app[_METRICS],
                         app[CLOCK])
    stats = asyncio.create_task(_refresh(app))
    yield
    stats.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stats
    await session.close()


async def _refresh(app: web.Application) -> None:
    while True:
        try:
            app[_GAUGES].update(await read_payment_stats(app[POOL]))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not refresh payment stats: %s", type(exc).__name__)
        await asyncio.sleep(app[SETTINGS].stats_interval_s)


def require_scope(request: web.Request, *allowed: str) -> None:
    _require_scope(request, request.app[SETTINGS], *allowed)


def now(request: web.Request) -> dt.datetime:
    return dt.datetime.fromtimestamp(request.app[CLOCK](), tz=dt.UTC)


def _payment_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not ID_RE.match(value):
        raise NotFound("unknown_payment", "no such payment")
    return value


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


def payment_json(found: dict[str, Any]) -> dict[str, Any]:
    p = found["payment"]
    beneficiary: dict[str, Any] = {"name": p["beneficiary_name"]}
    if p["iban"] is not None:
        beneficiary["iban"] = p["iban"]
    else:
        beneficiary.update(sort_code=p["sort_code"], account_number=p["account_number"])
    return {
        "id": p["id"], "status": p["status"], "account_id": p["account_id"],
        "amount": p["amount"], "currency": p["currency"].strip(), "fee": p["fee"],
        "beneficiary": beneficiary, "reference": p["reference"],
        "payee_check": None if p["cop_result"] is None else {
            "result": p["cop_result"], "suggested_name": p["cop_name"]},
        # what the payment holds now: the amount and fee until it settles or is refused
        "held": p["held_amount"] if p["hold_state"] == "open" else 0,
        "bank_payment_id": p["bank_payment_id"], "reason": p["reason"],
        "settled_on": _iso(p["settled_on"]), "returned_on": _iso(p["returned_on"]),
        "created_at": _iso(p["created_at"]), "updated_at": _iso(p["updated_at"]),
        "history": [{"event": e["event"], "from": e["from_state"], "to": e["to_state"],
                     "source": e["source"], "detail": e["detail"], "at": _iso(e["created_at"])}
                    for e in found["events"]],
    }


def parse_payment(body: dict[str, Any]) -> PaymentRequest:
    account_id = body.get("account_id")
    if account_id is None:
        raise BadRequest("missing_field", "account_id is required")
    if not isinstance(account_id, str) or not ID_RE.match(account_id):
        raise BadRequest("invalid_field", "account_id must be an account id")
    amount = req_amount(body)
    currency = req_currency(body)
    try:
        beneficiary = parse_beneficiary(body.get("beneficiary"))
        reference = parse_reference(body.get("reference"))
    except InvalidPayment as exc:
        raise BadRequest(exc.code, exc.message) from None
    if beneficiary.domestic and currency != "GBP":
        raise BadRequest("unsupported_currency",
                         "payments to a sort code and account number are in GBP")
    return PaymentRequest(account_id, amount, currency, beneficiary, reference)


async def _reply(request: web.Request, payment_id: str, status: int = 200) -> web.Response:
    found = await get_payment(request.app[POOL], payment_id)
    if found is None:
        raise NotFound("unknown_payment", "no such payment")
    return json_response(payment_json(found), status=status)


@routes.post("/v1/payments")
async def create(request: web.Request) -> web.Response:
    require_scope(request, *_WRITERS)
    key = request.headers.get("Idempotency-Key")
    if not key or not _KEY_RE.match(key):
        raise BadRequest("missing_idempotency_key",
                         "Idempotency-Key header (1-128 printable characters) is required")
    req = parse_payment(parse_json_object(await request.read()))
    fee = request.app[SETTINGS].payment_fees.get(req.currency, 0)
    outbox = request.app[OUTBOX]
    result = await create_payment(request.app[POOL], f"payment:{key}", req, fee, now(request),
                                  outbox.config.inline_grace_s)
    if result.status in _REFUSALS:
        error, code, message = _REFUSALS[result.status]
        raise error(code, message)
    if result.payment_id is None:
        raise RuntimeError(f"hf_payment_create: {result.status} without a payment")
    if result.status == "created":
        log.info("payment %s created for %s", result.payment_id, req.beneficiary.masked())
        try:  # the payee check now, if the bank answers in time; else the worker does it
            await outbox.run_for(result.payment_id, "payee_check")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("inline payee check for %s failed: %s", result.payment_id,
                        type(exc).__name__)
    return await _reply(request, result.payment_id, 201 if result.status == "created" else 200)


@routes.get("/v1/payments/{id}")
async def read(request: web.Request) -> web.Response:
    require_scope(request, *_READERS)
    return await _reply(request, _payment_id(request))


async def _decide(request: web.Request, event: str) -> web.Response:
    require_scope(request, *_WRITERS)
    payment_id = _payment_id(request)
    action = confirm_payment if event == "confirm" else cancel_payment
    async with request.app[POOL].acquire() as conn:
        try:
            await action(conn, payment_id, now(request))
        except UnknownPayment:
            raise NotFound("unknown_payment", "no such payment") from None
        except IllegalPaymentTransition as exc:
            # a retried call after it worked is answered with the payment as it is now
            done = await conn.fetchval(
                "SELECT 1 FROM payment_events WHERE payment_id = $1 AND event = $2",
                payment_id, event)
            if not done:
                raise Conflict("invalid_state", str(exc)) from None
    return await _reply(request, payment_id)


@routes.post("/v1/payments/{id}/confirm")
async def confirm(request: web.Request) -> web.Response:
    return await _decide(request, "confirm")


@routes.post("/v1/payments/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    return await _decide(request, "cancel")


@routes.post("/providers/bank/webhooks")
async def bank_webhook(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    raw = await request.read()
    try:
        verify_native(request.headers.get("Bank-Signature"), raw, settings.bank_webhook_secrets,
                      app[CLOCK](), settings.signature_tolerance_s)
    except Unauthorized as exc:
        app[METRICS].auth_failures.labels(request.path, exc.code).inc()
        raise Unauthorized(exc.code, exc.message.replace("Holdfast-Signature",
                                                         "Bank-Signature")) from None
    body = parse_json_object(raw)
    try:
        event_id, event_type, canonical = parse_webhook(body)
    except InvalidPayment as exc:
        raise BadRequest(exc.code, exc.message) from None
    status = await store_bank_event(app[POOL], event_id, event_type, body, canonical)
    if status == "conflict":
        raise Conflict("idempotency_conflict",
                       "this event id was received before with a different body")
    return json_response({"id": event_id, "status": status})
