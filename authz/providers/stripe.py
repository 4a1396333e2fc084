"""Stripe Issuing webhooks (``POST /providers/stripe/webhooks``), signed with ``Stripe-Signature``.

``issuing_authorization.request`` is answered synchronously: 200 ``{"approved": bool,
"amount"?, "metadata"}`` with the ``Stripe-Version`` header (the event's ``api_version``, or
``DEFAULT_API_VERSION`` when the event names none). ``amount`` is sent only when
``pending_request.is_amount_controllable`` (then partial approvals are allowed); ``metadata``
carries our reason and ISO code for the dashboard.

Identity: incremental requests arrive on the same ``iauth_`` id with the earlier requests in
``request_history``, so ``provider_id`` is the iauth id and
``sequence = len(request_history)``; a request with ``sequence > 0`` raises the hold of
``stripe:<iauth>`` (its ``pending_request.amount`` is the additional amount).

Every other event type is verified, stored in the inbox and acknowledged with 200. Lifecycle
meaning is given where it is unambiguous: ``issuing_transaction.created`` capture -> clearing
(Stripe signs captures negative; stored as a magnitude) and refund -> refund; an
``issuing_authorization.updated`` whose held amount fell while pending or reversed -> reversal of
the difference, and status ``expired`` -> expiry; an ``issuing_authorization.created`` that
Stripe approved on ``network_fallback`` (it could not ask us) -> advice. The rest (other
created/updated, closed, disputes, cards...) is informational for now.

A zero-amount request (card verification) places no hold: approved when the card is usable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from authz.app import CLOCK, SETTINGS
from authz.errors import BadRequest
from authz.hotpath import request_hash
from authz.http import json_response, opt_bool, req_amount, req_str
from authz.providers.auth import verify_stripe
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
from policies.model import AuthorizationRequest, Decision

__all__ = ["DEFAULT_API_VERSION", "PROVIDER", "parse_request", "reply", "routes"]

routes = web.RouteTableDef()

PROVIDER: Final = "stripe"
DEFAULT_API_VERSION: Final = "2025-03-31.basil"
_API_VERSION_RE: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(\.[a-z]{1,32})?$")
_REQUEST: Final = "issuing_authorization.request"
_METHODS: Final = {
    "online": "ecommerce", "contactless": "contactless", "swipe": "pos", "chip": "pos",
    # a number typed into a terminal or phoned in: mail/telephone order
    "keyed_in": "moto",
}
_STATUSES: Final = frozenset({"pending", "closed", "reversed", "expired"})
_EVENT_TYPES: Final = frozenset({
    _REQUEST, "issuing_authorization.created", "issuing_authorization.updated",
    "issuing_transaction.created", "issuing_transaction.updated",
    "issuing_dispute.created", "issuing_dispute.updated", "issuing_dispute.closed",
    "issuing_dispute.submitted", "issuing_dispute.funds_reinstated",
    "issuing_dispute.funds_rescinded", "issuing_card.created", "issuing_card.updated",
    "issuing_cardholder.created", "issuing_cardholder.updated", "issuing_token.created",
    "issuing_token.updated",
})


def _channel(app: web.Application, auth: dict[str, Any], mcc: str) -> str:
    method = auth.get("authorization_method")
    channel = _METHODS.get(method) if isinstance(method, str) else None
    if channel is None:
        note_unknown(app, PROVIDER, "authorization_method", method)
        channel = "ecommerce"  # unknown: the stricter, card-not-present reading
    return "atm" if mcc == "6011" else channel


def _card_id(auth: dict[str, Any]) -> str:
    card = auth.get("card")
    return ref(card if isinstance(card, str) else obj(auth, "card").get("id"), "card.id")


def parse_request(app: web.Application, auth: dict[str, Any]) -> AuthorizationRequest:
    """An ``issuing.authorization`` with its ``pending_request`` as the canonical request."""
    iauth = ident(auth, "id", "data.object.")
    auth_id = canonical_id(PROVIDER, iauth)
    card_id = _card_id(auth)
    pending = obj(auth, "pending_request")
    if not pending:
        raise BadRequest("missing_field", f"pending_request is required for {_REQUEST}")
    amount = req_amount(pending, "amount")
    currency = currency_code(pending.get("currency"), "pending_request.currency")
    controllable = opt_bool(pending, "is_amount_controllable")
    sequence = len(opt_list(auth, "request_history") or [])
    status = auth.get("status")
    if not isinstance(status, str) or status not in _STATUSES:
        note_unknown(app, PROVIDER, "authorization.status", status)
    merchant = obj(auth, "merchant_data")
    merchant_id = merchant_text(text(merchant, "network_id", "merchant_data.", 64), 64)
    merchant_name = merchant_text(text(merchant, "name", "merchant_data.", 128))
    mcc = mcc_code(merchant, "category_code", "merchant_data.")
    where = country(app, PROVIDER, merchant.get("country"), "merchant_data.country")
    channel = _channel(app, auth, mcc)
    parent_id = auth_id if sequence > 0 else None
    return AuthorizationRequest(
        provider=PROVIDER, provider_id=iauth, sequence=sequence, authorization_id=auth_id,
        card_id=card_id, amount_minor=amount, currency=currency, merchant_id=merchant_id,
        merchant_name=merchant_name, mcc=mcc, country=where, channel=channel,
        partial_allowed=controllable, parent_id=parent_id,
        request_hash=request_hash(
            card_id, amount, currency, merchant_id, merchant_name, mcc, where, channel,
            controllable, parent_id,
        ),
    )


def reply(decision: Decision, controllable: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"approved": decision.approved}
    if controllable and decision.approved:
        out["amount"] = decision.approved_amount_minor
    out["metadata"] = {"holdfast_reason": decision.reason.label,
                       "holdfast_code": decision.reason.code}
    return out


def _lifecycle(event_type: str, event_id: str, body: dict[str, Any], item: dict[str, Any]
               ) -> LifecycleEvent | None:
    if event_type == "issuing_transaction.created":
        kind = {"capture": "authorization.clearing", "refund": "refund"}.get(str(item.get("type")))
        if kind is None:
            return None
        amount = item.get("amount")
        if type(amount) is not int or abs(amount) > MAX_AMOUNT_MINOR:
            raise BadRequest("invalid_amount", "data.object.amount must be an integer")
        authorization, card = item.get("authorization"), item.get("card")
        return LifecycleEvent(
            id=event_id, type=kind,
            # force captures have no authorisation: the consumers post them by card
            authorization_id=canonical_id(PROVIDER, ref(authorization, "authorization"))
            if authorization else None,
            card_id=ref(card, "card") if isinstance(card, str) else None,
            amount_minor=abs(amount), currency=currency_code(item.get("currency"), "currency"),
            # Stripe closes the authorisation itself (issuing_authorization.updated, closed)
            final=False,
        )
    if event_type not in ("issuing_authorization.updated", "issuing_authorization.created"):
        return None
    auth_id = canonical_id(PROVIDER, ident(item, "id", "data.object."))
    currency = currency_code(item.get("currency"), "currency")
    now = item.get("amount")
    if event_type == "issuing_authorization.created":
        # approved by Stripe while the network could not reach us (stand-in): hold it anyway
        history = opt_list(item, "request_history") or []
        last = history[-1] if history else None
        if (not isinstance(last, dict) or last.get("reason") != "network_fallback"
                or last.get("approved") is not True or type(last.get("amount")) is not int):
            return None
        return LifecycleEvent(event_id, "authorization.advice", auth_id, _card_id(item),
                              int(last["amount"]), currency, False)
    status = item.get("status")
    if status == "expired":
        return LifecycleEvent(event_id, "authorization.expiry", auth_id, None, 0, currency, False)
    before = obj(obj(body, "data"), "previous_attributes").get("amount")
    if (status in ("pending", "reversed") and type(before) is int and type(now) is int
            and before > now >= 0):
        return LifecycleEvent(event_id, "authorization.reversal", auth_id, None, before - now,
                              currency, False)
    return None


def _check(app: web.Application, request: web.BaseRequest) -> Callable[[bytes], None]:
    settings = app[SETTINGS]

    def check(raw: bytes) -> None:
        verify_stripe(request.headers.get("Stripe-Signature"), raw,
                      settings.stripe_webhook_secrets, app[CLOCK](), settings.signature_tolerance_s)

    return check


@routes.post("/providers/stripe/webhooks")
async def webhooks(request: web.Request) -> web.Response:
    return await webhooks_in(request.app, request)


async def webhooks_in(app: web.Application, request: web.BaseRequest) -> web.Response:
    """Stripe's webhooks to ``app`` (authorisation requests and the rest): the routed handler
    above, and authz/front.py's."""
    started = time.perf_counter()
    body = parse_json(await verified_body(app, request, _check(app, request)))
    event_id = ident(body, "id")
    event_type = req_str(body, "type", 128)
    item = obj(obj(body, "data"), "object", "data.")
    if event_type == _REQUEST:
        version = body.get("api_version")
        if not isinstance(version, str) or not _API_VERSION_RE.match(version):
            version = DEFAULT_API_VERSION
        if req_amount(obj(item, "pending_request"), "amount", allow_zero=True) == 0:
            # a zero-amount verification: nothing to hold, the card only has to be usable
            usable = await usable_account(app, _card_id(item)) is not None
            return json_response({"approved": usable}, headers={"Stripe-Version": version})
        req = parse_request(app, item)
        decision = await decide(app, req, started)
        return json_response(reply(decision, req.partial_allowed),
                             headers={"Stripe-Version": version})
    if event_type not in _EVENT_TYPES:
        note_unknown(app, PROVIDER, "event.type", event_type)
    canonical = _lifecycle(event_type, event_id, body, item)
    # pending_webhooks is delivery bookkeeping that changes between retries of the same event;
    # kept, a redelivery after a lost answer would look like a different event (409)
    stored = {k: v for k, v in body.items() if k != "pending_webhooks"}
    event = inbox_event(PROVIDER, event_id, event_type, stored, canonical)
    [status] = await store_all(app, PROVIDER, [event])
    return json_response({"id": event_id, "status": status})
