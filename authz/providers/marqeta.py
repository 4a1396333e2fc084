"""Marqeta Gateway JIT Funding (``POST /providers/marqeta/jit``) and transaction webhooks
(``POST /providers/marqeta/events``), behind HTTP Basic auth plus ``X-Marqeta-Signature`` when an
HMAC secret is configured.

Money arrives in **decimal major units** (``"amount": 1.91``). Bodies are parsed with exact
decimals (never floats) and converted with the currency's exponent; an amount the currency cannot
express (1.915 GBP, 1.5 JPY) or out of range is refused with 400 ``amount_precision`` /
``invalid_amount``, never rounded. Answers echo amounts as exact decimal strings.

JIT identity: ``provider_id`` is ``jit_funding.token`` (sequence 0), the authorisation
``marqeta:<jit token>``. ``pgfs.authorization.incremental`` raises the hold of
``marqeta:<original_jit_funding_token>``. Approve = 200 echoing ``jit_funding`` with the approved
amount (less than requested only when ``pos.partial_approval_capable``); decline = 402 with
``decline_reason``. Informative methods (reversal, refund, capture, credit...) place no hold: they
are recorded in the inbox as informational (the transaction webhook that follows is the fact the
lifecycle applies, so nothing is applied twice) and answered 200. An unknown method is recorded,
counted and declined (it may be a new way of taking money).

Webhooks (``{"transactions": [...], "<category>": [...]}``) are stored one row per item, all or
nothing, the transaction row id being ``transaction:<token>:<state>``. Lifecycle meaning, found
through the JIT link ``original_jit_funding_token`` (without one Marqeta's program funded the
card and we hold nothing: a clearing is then posted by card): authorization.reversal ->
reversal; authorization.advice sent as a JIT reversal -> reversal of the difference;
authorization.clearing -> clearing (never ``final``: Marqeta marks none, the rest of the hold
waits for expiry); authorization.reversal.issuerexpiration -> expiry; refund and
refund.authorization.clearing -> refund; authorization.standin -> advice (held regardless);
chargeback -> chargeback, its completion -> won or reversal (lost), its reversal -> reversal.

Decline reasons (ours -> Marqeta): insufficient_funds -> INSUFFICIENT_FUNDS, card_restricted ->
CARD_NOT_ACTIVE, invalid_card -> INVALID_CARD, card_expired -> EXPIRED_CARD, not_permitted ->
TRANSACTION_NOT_PERMITTED, suspected_fraud -> SUSPECTED_FRAUD, amount_limit_exceeded ->
AMOUNT_LIMIT_EXCEEDED, count_limit_exceeded -> TRANSACTION_COUNT_LIMIT_EXCEEDED, duplicate ->
DUPLICATE_TRANSACTION; do_not_honor, issuer_unavailable, system_error ->
TRANSACTION_NOT_PERMITTED (Marqeta's "not permitted for an unclassified reason").
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from aiohttp import web

from authz.app import SETTINGS
from authz.errors import BadRequest
from authz.hotpath import request_hash
from authz.http import json_response, opt_bool, req_str
from authz.providers.auth import verify_marqeta
from authz.providers.common import (
    InboxEvent,
    canonical_id,
    country,
    currency_code,
    decide,
    drop_restricted,
    ident,
    inbox_event,
    major_to_minor,
    mcc_code,
    merchant_text,
    minor_to_major,
    note_unknown,
    obj,
    opt_list,
    parse_exact_json,
    ref,
    store_all,
    text,
    usable_account,
    verified_body,
)
from clearing.events import LifecycleEvent
from policies.model import AuthorizationRequest, Decision, Reason

__all__ = ["PROVIDER", "decline_reason", "parse_jit", "routes"]

routes = web.RouteTableDef()

PROVIDER: Final = "marqeta"
_INCREMENTAL: Final = "pgfs.authorization.incremental"
_DEBIT: Final = frozenset({"pgfs.authorization", _INCREMENTAL, "pgfs.auth_plus_capture"})
_INQUIRY: Final = frozenset({"pgfs.balanceinquiry", "pgfs.balance_inquiry"})
_VERIFICATION: Final = "pgfs.authorization.account_verification"
_INFORMATIVE: Final = frozenset({
    "pgfs.authorization.reversal", "pgfs.authorization.capture", "pgfs.authorization.clearing",
    "pgfs.authorization.capture.chargeback", "pgfs.authorization.capture.chargeback.reversal",
    "pgfs.refund", "pgfs.refund.authorization", "pgfs.refund.authorization.reversal",
    "pgfs.original.credit.authorization", "pgfs.original.credit.auth_plus_capture",
    "pgfs.adjustment.credit", "pgfs.adjustment.debit", "pgfs.force_capture",
    "pgfs.dispute.credit", "pgfs.dispute.debit", "pgfs.directdeposit.credit",
    "pgfs.directdeposit.debit", "pgfs.directdeposit.credit.reversal",
    "pgfs.directdeposit.debit.reversal",
})
_DECLINES: Final = {
    Reason.INSUFFICIENT_FUNDS: "INSUFFICIENT_FUNDS",
    Reason.CARD_RESTRICTED: "CARD_NOT_ACTIVE",
    Reason.INVALID_CARD: "INVALID_CARD",
    Reason.CARD_EXPIRED: "EXPIRED_CARD",
    Reason.NOT_PERMITTED: "TRANSACTION_NOT_PERMITTED",
    Reason.SUSPECTED_FRAUD: "SUSPECTED_FRAUD",
    Reason.AMOUNT_LIMIT_EXCEEDED: "AMOUNT_LIMIT_EXCEEDED",
    Reason.COUNT_LIMIT_EXCEEDED: "TRANSACTION_COUNT_LIMIT_EXCEEDED",
    Reason.DUPLICATE: "DUPLICATE_TRANSACTION",
}
_CHANNELS: Final = frozenset({"ATM", "ECOMMERCE", "MAIL", "PHONE", "MOTO", "OTHER"})
_CATEGORIES: Final = frozenset({
    "transactions", "cardtransitions", "cardactions", "chargebacktransitions",
    "usertransitions", "businesstransitions", "digitalwallettokentransitions", "directdeposits",
    "directdeposittransitions",
})
# transaction types whose webhook is a lifecycle fact (the JIT decision already covers the rest)
_LIFECYCLE: Final = {
    "authorization.reversal": "authorization.reversal",
    "authorization.reversal.issuerexpiration": "authorization.expiry",
    "authorization.clearing": "authorization.clearing",
    "refund": "refund",
    "refund.authorization.clearing": "refund",
    "authorization.clearing.chargeback": "chargeback",
    "authorization.clearing.chargeback.reversal": "chargeback.reversal",
}
_TYPES: Final = frozenset(_LIFECYCLE) | frozenset({
    "authorization", "authorization.advice", "authorization.incremental", "authorization.standin",
    "authorization.atm.withdrawal", "authorization.cashback", "authorization.quasi.cash",
    "authorization.clearing.atm.withdrawal", "authorization.clearing.cashback",
    "authorization.clearing.quasi.cash", "authorization.clearing.chargeback.completed",
    "authorization.clearing.chargeback.provisional.credit",
    "authorization.clearing.chargeback.provisional.debit",
    "authorization.clearing.chargeback.writeoff", "authorization.clearing.representment",
    "refund.authorization", "refund.authorization.reversal", "original.credit.authorization",
    "original.credit.authorization.clearing", "original.credit.auth_plus_capture",
    "pindebit", "pindebit.atm.withdrawal", "pindebit.refund", "pindebit.reversal",
    "balanceinquiry", "account.credit", "account.debit", "gpa.credit", "gpa.debit",
    "fee.charge", "fee.charge.reversal",
})
# money states that moved nothing
_NO_MONEY: Final = frozenset({"DECLINED", "ERROR"})
_CHARGEBACK_OUTCOMES: Final = {"CASE_WON": "chargeback.won", "CASE_LOST": "chargeback.reversal"}
_MAX_EVENTS: Final = 500
_CATEGORY_RE: Final = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")


def decline_reason(reason: Reason) -> str:
    return _DECLINES.get(reason, "TRANSACTION_NOT_PERMITTED")


def _check(app: web.Application, request: web.BaseRequest) -> Callable[[bytes], None]:
    settings = app[SETTINGS]

    def check(raw: bytes) -> None:
        verify_marqeta(request.headers.get("Authorization"),
                       request.headers.get("X-Marqeta-Signature"), raw,
                       settings.marqeta_basic_auth, settings.marqeta_hmac_secrets)

    return check


def _channel(app: web.Application, body: dict[str, Any], mcc: str) -> str:
    pos = obj(body, "pos")
    payment = obj(body, "transaction_metadata").get("payment_channel")
    if payment is not None and (not isinstance(payment, str) or payment not in _CHANNELS):
        note_unknown(app, PROVIDER, "payment_channel", payment)
    entry = pos.get("pan_entry_mode")
    if payment == "ATM" or mcc == "6011":
        return "atm"
    if payment in ("MAIL", "PHONE", "MOTO"):
        return "moto"
    if payment == "ECOMMERCE":
        return "ecommerce"
    if isinstance(entry, str) and "CONTACTLESS" in entry:
        return "contactless"
    if pos.get("card_presence") is True:
        return "pos"
    return "ecommerce"  # presence not stated: the stricter, card-not-present reading


def _funding(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(order, jit_funding): loads arrive in ``gpa_order``, unloads in ``gpa_order_unload``."""
    key = "gpa_order" if body.get("gpa_order") is not None else "gpa_order_unload"
    order = obj(body, key)
    funding = obj(order, "jit_funding", f"{key}.")
    if not funding:
        raise BadRequest("missing_field", "gpa_order.jit_funding is required")
    return order, funding


def parse_jit(app: web.Application, body: dict[str, Any], funding: dict[str, Any],
              amount: int, currency: str) -> AuthorizationRequest:
    token = ident(funding, "token", "jit_funding.")
    auth_id = canonical_id(PROVIDER, token)
    parent_id = None
    if funding.get("method") == _INCREMENTAL:
        original = ident(funding, "original_jit_funding_token", "jit_funding.")
        parent_id = canonical_id(PROVIDER, original)
    card_id = ident(body, "card_token")
    acceptor = obj(body, "card_acceptor")
    merchant_id = merchant_text(text(acceptor, "mid", "card_acceptor.", 64), 64)
    merchant_name = merchant_text(text(acceptor, "name", "card_acceptor.", 128))
    mcc = mcc_code(acceptor, "mcc", "card_acceptor.")
    where = country(app, PROVIDER, acceptor.get("country_code") or acceptor.get("country"),
                    "card_acceptor.country_code")
    channel = _channel(app, body, mcc)
    partial = opt_bool(obj(body, "pos"), "partial_approval_capable") or (
        obj(acceptor, "poi").get("partial_approval_capable") == "1")
    return AuthorizationRequest(
        provider=PROVIDER, provider_id=token, sequence=0, authorization_id=auth_id,
        card_id=card_id, amount_minor=amount, currency=currency, merchant_id=merchant_id,
        merchant_name=merchant_name, mcc=mcc, country=where, channel=channel,
        partial_allowed=partial, parent_id=parent_id,
        request_hash=request_hash(
            card_id, amount, currency, merchant_id, merchant_name, mcc, where, channel, partial,
            parent_id,
        ),
    )


def _echo(funding: dict[str, Any], amount: int, currency: str) -> dict[str, Any]:
    """The ``jit_funding`` object Marqeta expects back: its identifiers and the amount funded."""
    out: dict[str, Any] = {}
    for key in ("token", "method", "user_token", "acting_user_token", "business_token",
                "original_jit_funding_token"):
        value = text(funding, key, "jit_funding.", 64)
        if value is not None:
            out[key] = value
    out["amount"] = minor_to_major(amount, currency)
    return out


def _answer(funding: dict[str, Any], currency: str, decision: Decision, requested: int
            ) -> web.Response:
    if decision.approved:
        body = _echo(funding, decision.approved_amount_minor, currency)
        body["memo"] = decision.reason.label
        return json_response({"jit_funding": body})
    body = _echo(funding, requested, currency)
    body["decline_reason"] = decline_reason(decision.reason)
    body["memo"] = decision.reason.label
    return json_response({"jit_funding": body}, status=402)


@routes.post("/providers/marqeta/jit")
async def jit(request: web.Request) -> web.Response:
    return await jit_in(request.app, request)


async def jit_in(app: web.Application, request: web.BaseRequest) -> web.Response:
    """JIT Funding of ``app``: the routed handler above, and authz/front.py's."""
    started = time.perf_counter()
    body = parse_exact_json(await verified_body(app, request, _check(app, request)))
    order, funding = _funding(body)
    method = req_str(funding, "method", 64, "jit_funding.")
    token = ident(funding, "token", "jit_funding.")
    currency = currency_code(order.get("currency_code") or body.get("currency_code"),
                             "gpa_order.currency_code")
    amount = major_to_minor(funding.get("amount"), currency, "jit_funding.amount",
                            allow_zero=method not in _DEBIT)
    if method in _DEBIT:
        req = parse_jit(app, body, funding, amount, currency)
        # every field of the answer is validated before the decision places a hold: a request
        # we would refuse must not leave one behind
        _echo(funding, amount, currency)
        return _answer(funding, currency, await decide(app, req, started), amount)
    if method in _INQUIRY or method == _VERIFICATION:
        account = await usable_account(app, ident(body, "card_token"))
        if account is None:
            declined = {**_echo(funding, amount, currency), "decline_reason": "CARD_NOT_ACTIVE"}
            return json_response({"jit_funding": declined}, status=402)
        answer = _echo(funding, amount, currency)
        if method in _INQUIRY:
            cur = account.currency
            answer["balances"] = {cur: {
                "currency_code": cur,
                "available_balance": minor_to_major(account.available_minor, cur),
                "ledger_balance": minor_to_major(account.posted_minor, cur)}}
        return json_response({"jit_funding": answer})
    known = method in _INFORMATIVE
    if not known:
        note_unknown(app, PROVIDER, "jit_funding.method", method)
    await store_all(app, PROVIDER, [
        inbox_event(PROVIDER, f"jit:{token}", f"jit.{method}", body, None)])
    if known:
        return json_response({"jit_funding": _echo(funding, amount, currency)})
    declined = {**_echo(funding, amount, currency), "decline_reason": "TRANSACTION_NOT_PERMITTED"}
    return json_response({"jit_funding": declined}, status=402)


def _canonical(txn: dict[str, Any], kind: str, event_id: str) -> LifecycleEvent | None:
    """What a transaction webhook means for the ledger. The authorisation is found through the
    JIT link (``original_jit_funding_token``): without one the card was funded by Marqeta's
    program, we placed no hold, and a clearing is posted by card (a force post)."""
    order = obj(txn, "gpa_order") or obj(txn, "gpa_order_unload")
    funding = obj(order, "jit_funding")
    original = text(funding, "original_jit_funding_token", "jit_funding.", 64)
    card = txn.get("card_token")
    card_id = ref(card, "transaction.card_token") if card else None
    auth_id = canonical_id(PROVIDER, original) if original else None
    chargeback = kind.startswith("authorization.clearing.chargeback")
    if str(txn.get("state")) in _NO_MONEY and not chargeback:
        return None

    def event(kind_: str, amount: object, auth: str | None, field: str = "amount"
              ) -> LifecycleEvent:
        currency = currency_code(txn.get("currency_code"), "transaction.currency_code")
        minor = major_to_minor(amount, currency, f"transaction.{field}",
                               allow_zero=kind_ == "authorization.expiry")
        # Marqeta marks no final clearing: the remainder stays held until expiry (fails safe)
        return LifecycleEvent(event_id, kind_, auth, card_id, minor, currency, False)

    if kind == "authorization.advice":
        # an advice that lowers the amount arrives as a JIT reversal of the difference
        if funding.get("method") != "pgfs.authorization.reversal" or auth_id is None:
            return None
        return event("authorization.reversal", funding.get("amount"), auth_id, "jit_amount")
    if kind == "authorization.standin":
        # approved by Marqeta's stand-in (Commando Mode) without asking us: held regardless
        anchor = text(funding, "token", "jit_funding.", 64) or ident(txn, "token")
        return event("authorization.advice", txn.get("amount"), canonical_id(PROVIDER, anchor))
    if kind == "authorization.clearing.chargeback.completed":
        outcome = _CHARGEBACK_OUTCOMES.get(str(obj(txn, "chargeback").get("state")))
        if outcome is None:
            return None
        return event(outcome, obj(txn, "chargeback").get("amount") or txn.get("amount"), auth_id)
    lifecycle = _LIFECYCLE.get(kind)
    if lifecycle is None:
        return None
    return event(lifecycle, txn.get("amount"), auth_id)


def _transaction(app: web.Application, txn: dict[str, Any]) -> InboxEvent:
    token = ident(txn, "token", "transaction.")
    kind = text(txn, "type", "transaction.", 128) or "unknown"
    state = text(txn, "state", "transaction.", 32)
    if kind not in _TYPES:
        note_unknown(app, PROVIDER, "transaction.type", kind)
    # a transaction is re-sent when its state moves (PENDING -> COMPLETION): each state is
    # stored, but it is one movement of money, so its canonical id is the transaction's alone
    event_id = f"transaction:{token}:{state}" if state else f"transaction:{token}"
    return inbox_event(PROVIDER, event_id, kind, txn,
                       _canonical(txn, kind, f"transaction:{token}"))


def _other(app: web.Application, category: str, value: Any) -> list[InboxEvent]:
    """Non-transaction webhooks: each item stored under its token; a shape this version does not
    know is stored whole (by content digest) rather than refused."""
    if isinstance(value, list) and all(isinstance(v, dict) and v.get("token") for v in value):
        return [inbox_event(PROVIDER, f"{category}:{ref(v['token'], 'webhook item token')}",
                            category, v, None) for v in value]
    note_unknown(app, PROVIDER, "webhook.shape", category)
    digest = hashlib.sha256(
        orjson.dumps(drop_restricted(value), option=orjson.OPT_SORT_KEYS)).hexdigest()
    # grouped by eight, so no run of digits in the id can pass for a card number
    event_id = f"{category}:" + "-".join(digest[i:i + 8] for i in range(0, 32, 8))
    # kept under its key, so key-based card-data removal still sees e.g. raw_iso8583
    return [inbox_event(PROVIDER, event_id, category, {category: value}, None)]


@routes.post("/providers/marqeta/events")
async def events(request: web.Request) -> web.Response:
    app = request.app
    body = parse_exact_json(await verified_body(app, request, _check(app, request)))
    batch: list[InboxEvent] = []
    for category, value in body.items():
        if not _CATEGORY_RE.match(category):
            raise BadRequest("invalid_field", "webhook categories are short lower-case names")
        if category == "pings":  # Marqeta's health check
            continue
        if category == "transaction" and isinstance(value, dict):
            # one transaction with its raw ISO 8583 message beside it (simulation responses)
            batch.append(_transaction(app, {**value, "raw_iso8583": body.get("raw_iso8583")}))
        elif category == "raw_iso8583" and isinstance(body.get("transaction"), dict):
            continue
        elif category == "transactions":
            for txn in opt_list(body, category, "", _MAX_EVENTS) or []:
                if not isinstance(txn, dict):
                    raise BadRequest("invalid_field", "transactions must hold objects")
                batch.append(_transaction(app, txn))
        else:
            if category not in _CATEGORIES:
                note_unknown(app, PROVIDER, "webhook.category", category)
            batch.extend(_other(app, category, value))
        if len(batch) > _MAX_EVENTS:
            raise BadRequest("too_many_events", f"at most {_MAX_EVENTS} events per delivery")
    statuses = await store_all(app, PROVIDER, batch)
    return json_response({"received": len(batch), "accepted": statuses.count("accepted"),
                          "duplicate": statuses.count("duplicate")})
