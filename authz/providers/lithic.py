"""Lithic: Auth Stream Access (``POST /providers/lithic/asa``) and transaction event webhooks
(``POST /providers/lithic/events``), both signed with Standard Webhooks.

ASA identity: the authorisation is ``lithic:<token>`` (Lithic's transaction group). In the 2021
shape a request carries the transaction's earlier ``events``, so the identity is (token,
``sequence = len(events)``) and ``sequence > 0`` raises the hold. In the current shape each
request carries its own ``event_token`` and no history: the identity is the event token, and a
request on a token we already hold raises that hold (incremental). Lithic retries once on a 5xx
with the very same body, which replays the stored decision: the answer is identical.

Amounts are integer minor units: ``amounts.cardholder`` when present, else the deprecated
``authorization_amount``/``amount`` with ``cardholder_currency``; the 2021-era shape (the fixture)
carries no currency at all, and Lithic then meant US cents, so USD is assumed. An incremental's
amount is taken as the additional amount requested (holding more than needed fails safe).

Statuses: AUTHORIZATION and FINANCIAL_AUTHORIZATION are decided (a zero amount is a card
verification: approved when the card is usable, nothing held); BALANCE_INQUIRY answers the
account's balance; CREDIT_AUTHORIZATION and FINANCIAL_CREDIT_AUTHORIZATION (money in) are
approved and recorded in the inbox; an unknown status is recorded, counted and declined.

Events (``/providers/lithic/events``) are stored under their ``webhook-id``. A
``card_transaction.updated`` whose latest event is AUTHORIZATION_REVERSAL, AUTHORIZATION_EXPIRY,
CLEARING (final once the transaction is SETTLED) or RETURN carries that lifecycle meaning, with
the transaction event's token as its id (applied once however often it is delivered).

Decline results (our reason -> Lithic ``result``): insufficient_funds -> INSUFFICIENT_FUNDS;
card_restricted, card_expired, invalid_card -> CARD_PAUSED; not_permitted ->
UNAUTHORIZED_MERCHANT; suspected_fraud -> SUSPECTED_FRAUD; amount_limit_exceeded,
count_limit_exceeded -> VELOCITY_EXCEEDED. Lithic's enum has no word for do_not_honor, duplicate,
issuer_unavailable or system_error: those are sent as our label upper-cased (``DO_NOT_HONOR``...),
which Lithic declines as a custom result (``CUSTOM_ASA_RESULT``), keeping the reason visible on
its side. Partial approvals answer ``APPROVED`` with ``approved_amount``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from authz.app import CLOCK, POOL, SETTINGS
from authz.errors import BadRequest
from authz.hotpath import request_hash
from authz.http import json_response, opt_bool, req_amount, req_str
from authz.providers.auth import verify_standard_webhook
from authz.providers.common import (
    canonical_id,
    country,
    currency_code,
    decide,
    ident,
    inbox_event,
    mcc_code,
    merchant_text,
    note_unknown,
    obj,
    opt_list,
    parse_json,
    ref,
    store_all,
    text,
    usable_account,
    verified_body,
)
from clearing.events import LifecycleEvent
from holds.model import MAX_AMOUNT_MINOR
from policies.model import AuthorizationRequest, Decision, Reason
from policies.pan import mask_pans

__all__ = ["PROVIDER", "asa_result", "parse_asa", "routes"]

routes = web.RouteTableDef()

PROVIDER: Final = "lithic"
_DEBIT: Final = frozenset({"AUTHORIZATION", "FINANCIAL_AUTHORIZATION"})
# money towards the cardholder: approved, no hold; the settlement arrives as an event
_CREDIT: Final = frozenset({"CREDIT_AUTHORIZATION", "FINANCIAL_CREDIT_AUTHORIZATION"})
_INQUIRY: Final = "BALANCE_INQUIRY"
_RESULTS: Final = {
    Reason.INSUFFICIENT_FUNDS: "INSUFFICIENT_FUNDS",
    Reason.CARD_RESTRICTED: "CARD_PAUSED",
    Reason.CARD_EXPIRED: "CARD_PAUSED",
    Reason.INVALID_CARD: "CARD_PAUSED",
    Reason.NOT_PERMITTED: "UNAUTHORIZED_MERCHANT",
    Reason.SUSPECTED_FRAUD: "SUSPECTED_FRAUD",
    Reason.AMOUNT_LIMIT_EXCEEDED: "VELOCITY_EXCEEDED",
    Reason.COUNT_LIMIT_EXCEEDED: "VELOCITY_EXCEEDED",
}
# Lithic webhook event types this version knows; others are stored and counted
_EVENT_TYPES: Final = frozenset({
    "card_transaction.updated", "card_transaction.enhanced_data.created",
    "card_transaction.enhanced_data.updated", "card.created", "card.converted", "card.renewed",
    "card.reissued", "card.shipped", "card.updated", "dispute.updated",
    "dispute_transaction.created", "dispute_transaction.updated", "balance.updated",
    "account_holder.created", "account_holder.updated", "account_holder.verification",
    "tokenization.approval_request", "tokenization.result", "tokenization.updated",
    "tokenization.two_factor_authentication_code", "digital_wallet.tokenization_result",
    "digital_wallet.tokenization_updated", "three_ds_authentication.created",
    "three_ds_authentication.updated", "financial_account.created", "financial_account.updated",
    "payment_transaction.created", "payment_transaction.updated", "settlement_report.updated",
    "statements.created", "book_transfer_transaction.created",
})
# a transaction's latest event -> the canonical lifecycle event it is
_LIFECYCLE: Final = {
    "AUTHORIZATION_REVERSAL": "authorization.reversal",
    "AUTHORIZATION_EXPIRY": "authorization.expiry",
    "CLEARING": "authorization.clearing",
    "RETURN": "refund",
}
_EVENT_KINDS: Final = frozenset(_LIFECYCLE) | frozenset({
    "AUTHORIZATION", "AUTHORIZATION_ADVICE", "BALANCE_INQUIRY", "CREDIT_AUTHORIZATION",
    "CREDIT_AUTHORIZATION_ADVICE", "FINANCIAL_AUTHORIZATION", "FINANCIAL_CREDIT_AUTHORIZATION",
    "RETURN_REVERSAL", "CORRECTION_CREDIT", "CORRECTION_DEBIT",
})


def asa_result(reason: Reason) -> str:
    if reason in (Reason.APPROVED, Reason.PARTIAL_APPROVAL):
        return "APPROVED"
    return _RESULTS.get(reason) or reason.label.upper()


def _channel(pos: dict[str, Any]) -> str:
    terminal = obj(pos, "terminal", "pos.")
    entry = obj(pos, "entry_mode", "pos.")
    kind, pan = terminal.get("type"), entry.get("pan")
    holder, card = entry.get("cardholder"), entry.get("card")
    if kind == "ATM":
        return "atm"
    if kind == "ECOMMERCE" or pan == "ECOMMERCE" or holder == "ELECTRONIC_ORDER":
        return "ecommerce"
    if holder in ("MAIL_ORDER", "TELEPHONE_ORDER"):
        return "moto"
    if pan == "CONTACTLESS":
        return "contactless"
    if card == "PRESENT":
        return "pos"
    # presence not stated: card-not-present rules apply, the stricter reading
    return "ecommerce"


def _amount(body: dict[str, Any], *, allow_zero: bool) -> tuple[int, str]:
    holder = obj(obj(body, "amounts"), "cardholder", "amounts.")
    if holder:
        amount = req_amount(holder, "amount", allow_zero=allow_zero)
        return amount, currency_code(holder.get("currency"), "amounts.cardholder.currency")
    field = "authorization_amount" if body.get("authorization_amount") is not None else "amount"
    amount = req_amount(body, field, allow_zero=allow_zero)
    # the 2021 ASA shape has no currency: Lithic amounts were then US cents
    return amount, currency_code(body.get("cardholder_currency") or "USD", "cardholder_currency")


def parse_asa(app: web.Application, body: dict[str, Any], opened: bool = False
              ) -> AuthorizationRequest:
    """A debit ASA request as the canonical request (PAN and CVV are never read).

    ``opened``: whether ``lithic:<token>`` already exists (only consulted for the current shape,
    where a request carries an ``event_token`` and no ``events`` list)."""
    token = ident(body, "token")
    auth_id = canonical_id(PROVIDER, token)
    card_id = ident(obj(body, "card"), "token", "card.")
    amount, currency = _amount(body, allow_zero=False)
    listed = opt_list(body, "events")
    events = listed or []
    sequence = len(events)
    merchant = obj(body, "merchant")
    merchant_id = merchant_text(text(merchant, "acceptor_id", "merchant.", 64), 64)
    merchant_name = merchant_text(text(merchant, "descriptor", "merchant.", 128))
    mcc = mcc_code(merchant, "mcc", "merchant.")
    where = country(app, PROVIDER, merchant.get("country"), "merchant.country")
    pos = obj(body, "pos")
    channel = _channel(pos)
    partial = opt_bool(obj(pos, "terminal", "pos."), "partial_approval_capable")
    event_token = text(body, "event_token", "", 64)
    provider_id = token
    if listed is None and event_token:
        # current shape: every request of the transaction (initial or incremental) carries its
        # own event_token and no history, so the event is the request's identity and the
        # transaction's existence says whether it raises a hold; a retry keeps its event_token,
        # and its identity is found before the parent is looked at
        provider_id = ident(body, "event_token")
        parent_id = auth_id if opened else None
        identity: object = "event"
    else:
        parent_id = auth_id if sequence > 0 else None
        identity = parent_id
    return AuthorizationRequest(
        provider=PROVIDER, provider_id=provider_id, sequence=sequence, authorization_id=auth_id,
        card_id=card_id, amount_minor=amount, currency=currency, merchant_id=merchant_id,
        merchant_name=merchant_name, mcc=mcc, country=where, channel=channel,
        partial_allowed=partial, parent_id=parent_id,
        request_hash=request_hash(
            card_id, amount, currency, merchant_id, merchant_name, mcc, where, channel, partial,
            identity, event_token,
        ),
    )


def asa_body(token: str, decision: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {"token": token, "result": asa_result(decision.reason)}
    if decision.reason is Reason.PARTIAL_APPROVAL:
        out["approved_amount"] = decision.approved_amount_minor
    return out


def _signed(app: web.Application, request: web.BaseRequest) -> Callable[[bytes], None]:
    settings = app[SETTINGS]

    def check(raw: bytes) -> None:
        verify_standard_webhook(request.headers, raw, settings.lithic_webhook_secrets, app[CLOCK](),
                                settings.signature_tolerance_s)

    return check


@routes.post("/providers/lithic/asa")
async def asa(request: web.Request) -> web.Response:
    return await asa_in(request.app, request)


async def asa_in(app: web.Application, request: web.BaseRequest) -> web.Response:
    """The ASA of ``app``: the routed handler above, and authz/front.py's."""
    started = time.perf_counter()
    body = parse_json(await verified_body(app, request, _signed(app, request)))
    status = req_str(body, "status", 64)
    token = ident(body, "token")
    if status in _DEBIT and _amount(body, allow_zero=True)[0] > 0:
        opened = False
        if body.get("events") is None and body.get("event_token"):
            opened = bool(await app[POOL].fetchval(
                "SELECT 1 FROM authorizations WHERE id = $1", canonical_id(PROVIDER, token)))
        req = parse_asa(app, body, opened)
        decision = await decide(app, req, started)
        return json_response(asa_body(token, decision))
    if status in _DEBIT:
        # a zero-amount verification: nothing to hold, the card only has to be usable
        account = await usable_account(app, ident(obj(body, "card"), "token", "card."))
        return json_response({"token": token,
                              "result": "CARD_PAUSED" if account is None else "APPROVED"})
    if status == _INQUIRY:
        card_id = ident(obj(body, "card"), "token", "card.")
        account = await usable_account(app, card_id)
        if account is None:
            return json_response({"token": token, "result": "CARD_PAUSED"})
        return json_response({"token": token, "result": "APPROVED", "balance": {
            "amount": account.posted_minor, "available": account.available_minor}})
    # credits and statuses this version does not know: recorded for the lifecycle consumers
    known = status in _CREDIT
    if not known:
        note_unknown(app, PROVIDER, "asa.status", status)
    sequence = len(opt_list(body, "events") or [])
    event = inbox_event(PROVIDER, f"asa:{token}:{sequence}", f"asa.{status}", body, None)
    await store_all(app, PROVIDER, [event])
    # a credit is money in: approve; anything unknown may move money out: decline
    result = "APPROVED" if known else asa_result(Reason.DO_NOT_HONOR)
    return json_response({"token": token, "result": result})


def _lifecycle(body: dict[str, Any], message_id: str) -> LifecycleEvent | None:
    """The canonical event of a ``card_transaction.updated`` webhook (its latest event), if it
    is one the lifecycle applies. Its id is the transaction event's own token, so the same event
    delivered again in another message is still applied once."""
    txn = obj(body, "payload") or body  # the older Events API nests the transaction
    events = opt_list(txn, "events") or []
    last = events[-1] if events else None
    if not isinstance(last, dict):
        return None
    kind = _LIFECYCLE.get(str(last.get("type")))
    if kind is None:
        return None
    token = ident(txn, "token")
    card = txn.get("card_token") or obj(txn, "card").get("token")
    holder = obj(obj(last, "amounts"), "cardholder", "amounts.")
    amount = (holder or last).get("amount")
    if type(amount) is not int or abs(amount) > MAX_AMOUNT_MINOR:
        raise BadRequest("invalid_amount", "event amount must be an integer in minor units")
    currency = currency_code(
        holder.get("currency") or txn.get("cardholder_currency") or "USD", "currency")
    event_token = last.get("token")
    return LifecycleEvent(
        id=ref(event_token, "events.token") if event_token else mask_pans(message_id), type=kind,
        authorization_id=canonical_id(PROVIDER, token),
        card_id=ref(card, "card_token") if card else None,
        # magnitudes: the direction is in the type (Lithic signs returns negative)
        amount_minor=abs(amount), currency=currency,
        final=kind == "authorization.clearing" and txn.get("status") == "SETTLED",
    )


@routes.post("/providers/lithic/events")
async def events(request: web.Request) -> web.Response:
    app = request.app
    raw = await verified_body(app, request, _signed(app, request))
    message_id = request.headers["webhook-id"]  # present: the signature covered it
    body = parse_json(raw)
    event_type = text(body, "event_type", "", 64) or "unknown"
    canonical = None
    if event_type not in _EVENT_TYPES:
        note_unknown(app, PROVIDER, "event_type", event_type)
    elif event_type == "card_transaction.updated":
        txn = obj(body, "payload") or body
        latest = (opt_list(txn, "events") or [None])[-1]
        kind = latest.get("type") if isinstance(latest, dict) else None
        if kind is not None and (not isinstance(kind, str) or kind not in _EVENT_KINDS):
            note_unknown(app, PROVIDER, "transaction.event.type", kind)
        canonical = _lifecycle(body, message_id)
    event = inbox_event(PROVIDER, message_id, event_type, body, canonical)
    [status] = await store_all(app, PROVIDER, [event])
    return json_response({"id": message_id, "status": status})
