"""The native card-processor API: ``POST /v1/authorize`` (DESIGN §9)."""

from __future__ import annotations

import re
import time
from typing import Any, Final

from aiohttp import web

from authz.app import AUTHORIZER, CLOCK, METRICS, POOL, SETTINGS
from authz.errors import BadRequest, Conflict, Unauthorized
from authz.hotpath import request_hash
from authz.http import (
    json_response,
    opt_bool,
    opt_str,
    parse_json_object,
    req_amount,
    req_currency,
    req_id,
    req_str,
)
from authz.signatures import verify_native
from clearing.events import EVENT_TYPES, NEEDS_AUTHORIZATION
from clearing.inbox import store_event
from policies.model import CHANNELS, AuthorizationRequest, Decision

__all__ = ["authorize_in", "decision_body", "parse_authorize", "parse_event", "routes"]

routes = web.RouteTableDef()

PROVIDER: Final = "native"
_MCC_RE: Final = re.compile(r"^[0-9]{4}$")
_COUNTRY_RE: Final = re.compile(r"^[A-Z]{2}$")


def parse_authorize(body: dict[str, Any]) -> AuthorizationRequest:
    """Validate a native authorisation body into the canonical request."""
    request_id = req_id(body, "id")
    card_id = req_id(body, "card_id")
    amount = req_amount(body)
    currency = req_currency(body)
    merchant = body.get("merchant")
    if merchant is None:
        raise BadRequest("missing_field", "merchant is required")
    if not isinstance(merchant, dict):
        raise BadRequest("invalid_field", "merchant must be an object")
    merchant_id = req_str(merchant, "id", 64, "merchant.")
    merchant_name = opt_str(merchant, "name", 128, "merchant.") or ""
    mcc = req_str(merchant, "mcc", 16, "merchant.")
    if not _MCC_RE.match(mcc):
        raise BadRequest("invalid_mcc", "merchant.mcc must be four digits (ISO 18245)")
    country = req_str(merchant, "country", 16, "merchant.")
    if not _COUNTRY_RE.match(country):
        raise BadRequest("invalid_country", "merchant.country must be ISO 3166 alpha-2 (e.g. GB)")
    channel = req_str(body, "channel", 16)
    if channel not in CHANNELS:
        raise BadRequest("invalid_channel", f"channel must be one of {sorted(CHANNELS)}")
    partial = opt_bool(body, "partial_allowed")
    parent_id = req_id(body, "parent_id") if body.get("parent_id") is not None else None
    if parent_id == request_id:
        raise BadRequest("invalid_field", "parent_id must name another authorisation")
    return AuthorizationRequest(
        provider=PROVIDER,
        provider_id=request_id,
        sequence=0,
        authorization_id=request_id,
        card_id=card_id,
        amount_minor=amount,
        currency=currency,
        merchant_id=merchant_id,
        merchant_name=merchant_name,
        mcc=mcc,
        country=country,
        channel=channel,
        partial_allowed=partial,
        parent_id=parent_id,
        request_hash=request_hash(
            card_id, amount, currency, merchant_id, merchant_name, mcc, country, channel,
            partial, parent_id,
        ),
    )


def decision_body(request_id: str, decision: Decision) -> dict[str, Any]:
    return {
        "id": request_id,
        "decision": "approve" if decision.approved else "decline",
        "approved_amount": decision.approved_amount_minor,
        "reason": decision.reason.label,
        "code": decision.reason.code,
        "stand_in": decision.stand_in,
        "authorization_id": decision.authorization_id,
    }


async def signed_body(request: web.Request) -> bytes:
    """The raw body, once its native signature is verified (before anything parses it)."""
    return await signed_body_in(request.app, request)


async def signed_body_in(app: web.Application, request: web.BaseRequest) -> bytes:
    settings = app[SETTINGS]
    raw = await request.read()
    try:
        verify_native(
            request.headers.get("Holdfast-Signature"), raw, settings.webhook_secrets,
            app[CLOCK](), settings.signature_tolerance_s,
        )
    except Unauthorized as exc:
        app[METRICS].auth_failures.labels(request.path, exc.code).inc()
        raise
    return raw


@routes.post("/v1/authorize")
async def authorize(request: web.Request) -> web.Response:
    return await authorize_in(request.app, request)


async def authorize_in(app: web.Application, request: web.BaseRequest) -> web.Response:
    """``POST /v1/authorize`` of ``app``: the routed handler above, and authz/front.py's (which
    comes here straight from the connection, past the router and the middlewares)."""
    started = time.perf_counter()
    req = parse_authorize(parse_json_object(await signed_body_in(app, request)))
    decision = await app[AUTHORIZER].authorize(req)
    app[METRICS].observe_decision(
        PROVIDER, decision.approved, decision.reason.label, time.perf_counter() - started
    )
    return json_response(decision_body(req.provider_id, decision))


def parse_event(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a native lifecycle event; returns the canonical payload stored in the inbox."""
    event_id = req_id(body, "id")
    event_type = req_str(body, "type", 64)
    if event_type not in EVENT_TYPES:
        raise BadRequest("invalid_event_type", f"type must be one of {sorted(EVENT_TYPES)}")
    authorization_id = req_id(body, "authorization_id") if body.get("authorization_id") else None
    card_id = req_id(body, "card_id") if body.get("card_id") else None
    if event_type in NEEDS_AUTHORIZATION and authorization_id is None:
        raise BadRequest("missing_field", f"authorization_id is required for {event_type}")
    if authorization_id is None and card_id is None:
        raise BadRequest("missing_field", "authorization_id or card_id is required")
    if event_type == "authorization.advice" and card_id is None:
        raise BadRequest("missing_field", "card_id is required for authorization.advice")
    amount = req_amount(body, allow_zero=event_type == "authorization.expiry")
    currency = req_currency(body)
    return {
        "id": event_id,
        "type": event_type,
        "authorization_id": authorization_id,
        "card_id": card_id,
        "amount": amount,
        "currency": currency,
        "final": opt_bool(body, "final"),
    }


@routes.post("/v1/events")
async def events(request: web.Request) -> web.Response:
    app = request.app
    event = parse_event(parse_json_object(await signed_body(request)))
    stored = await store_event(app[POOL], PROVIDER, event["id"], event["type"], event,
                               canonical=event)
    if stored.status == "conflict":
        raise Conflict("idempotency_conflict",
                       "this event id was received before with a different body")
    return json_response({"id": event["id"], "status": stored.status}, status=202)
