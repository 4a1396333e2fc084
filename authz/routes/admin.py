"""The management API (DESIGN §9): accounts, deposits, cards and their policy, authorisations.

Scopes: ``admin`` may do everything; ``support`` reads, freezes, unfreezes and terminates;
``customer`` reads cards and freezes or unfreezes them; ``ops`` reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, Final

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from authz.app import CACHE, POOL, SETTINGS
from authz.errors import BadRequest, Conflict, NotFound, Unavailable
from authz.hotpath import request_hash
from authz.http import (
    ID_RE,
    json_response,
    opt_str,
    parse_json_object,
    req_amount,
    req_currency,
    req_id,
    require_scope,
)
from authz.providers import lithic, marqeta, stripe
from authz.routes import native
from holds import ledger
from holds.model import Account, AccountKind
from policies.model import Policy, PolicyError
from policies.states import CARD_STATES
from policies.store import (
    CardConflict,
    CardNotFound,
    CardSnapshot,
    UnknownAccount,
    load_card,
    transition,
    upsert_card,
)

__all__ = ["routes"]

log = logging.getLogger("holdfast.admin")
routes = web.RouteTableDef()

_READERS: Final = ("support", "ops")
# where a request id may come from (GET /v1/authorizations/{request id})
_PROVIDERS: Final = (native.PROVIDER, lithic.PROVIDER, marqeta.PROVIDER, stripe.PROVIDER)
_EXPIRES_RE: Final = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
_LAST4_RE: Final = re.compile(r"^[0-9]{4}$")
_KEY_RE: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


def _path_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not ID_RE.match(value):
        raise NotFound("not_found", "no such resource")
    return value


def _account_json(a: Account) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "currency": a.currency,
        "posted": a.posted_minor,
        "held": a.held_minor,
        "available": a.available_minor,
        "overdraft_limit": a.overdraft_limit_minor,
    }


@routes.post("/v1/accounts")
async def create_account(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS])
    body = parse_json_object(await request.read())
    account_id = req_id(body, "id")
    currency = req_currency(body)
    overdraft = body.get("overdraft_limit", 0)
    if overdraft != 0:
        overdraft = req_amount(body, "overdraft_limit", allow_zero=True)
    kind = body.get("kind", AccountKind.CUSTOMER)
    if kind not in AccountKind.ALL:
        raise BadRequest("invalid_field", f"kind must be one of {sorted(AccountKind.ALL)}")
    try:
        account, created = await ledger.create_account(
            request.app[POOL], account_id, kind, currency, overdraft
        )
    except ledger.AccountConflict as exc:
        raise Conflict("account_exists", str(exc)) from None
    return json_response(_account_json(account), status=201 if created else 200)


@routes.get("/v1/accounts/{id}")
async def get_account(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], *_READERS)
    account = await ledger.get_account(request.app[POOL], _path_id(request))
    if account is None:
        raise NotFound("unknown_account", "no such account")
    return json_response(_account_json(account))


@routes.post("/v1/accounts/{id}/deposits")
async def deposit(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS])
    account_id = _path_id(request)
    key = request.headers.get("Idempotency-Key")
    if not key or not _KEY_RE.match(key):
        raise BadRequest("missing_idempotency_key",
                         "Idempotency-Key header (1-128 printable characters) is required")
    body = parse_json_object(await request.read())
    amount = req_amount(body)
    reference = opt_str(body, "reference", 140)
    result = await ledger.deposit(
        request.app[POOL], f"deposit:{account_id}:{key}", account_id, amount, reference,
        request_hash(amount, reference),
    )
    if result.status == "unknown_account":
        raise NotFound("unknown_account", "no such account")
    if result.status == "wrong_kind":
        raise Conflict("wrong_account_kind", "settlement accounts are not funded by deposits")
    if result.status == "conflict":
        raise Conflict("idempotency_conflict",
                       "this Idempotency-Key was used with a different body")
    out = {
        "id": f"dep_{result.transaction_id}",
        "account_id": account_id,
        "amount": amount,
        "currency": result.currency,
        "reference": result.reference,
        "status": "posted",
        "created_at": result.created_at.isoformat() if result.created_at else None,
    }
    return json_response(out, status=201 if result.status == "created" else 200)


async def _publish(request: web.Request, card: CardSnapshot) -> None:
    """Write-through to the Redis cache after the PostgreSQL commit. PostgreSQL re-checks the
    card's state on every authorisation, so a freeze holds even if this fails; policy limits
    need the cache, hence the 503 asking the caller to retry (the write is idempotent)."""
    try:
        await request.app[CACHE].put(card)
    except (RedisError, OSError) as exc:
        log.error("card %s saved but not cached: %s", card.id, type(exc).__name__)
        raise Unavailable(
            "cache_unavailable",
            "the card was saved but the policy cache could not be updated; retry the call",
        ) from None


@routes.put("/v1/cards/{id}")
async def put_card(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS])
    card_id = _path_id(request)
    body = parse_json_object(await request.read())
    account_id = req_id(body, "account_id")
    state = body.get("state", "active")
    if state not in CARD_STATES:
        raise BadRequest("invalid_field", f"state must be one of {sorted(CARD_STATES)}")
    try:
        policy = Policy.parse(body.get("policy"))
    except PolicyError as exc:
        raise BadRequest("invalid_policy", str(exc)) from None
    expires = opt_str(body, "expires", 7)
    if expires is not None and not _EXPIRES_RE.match(expires):
        raise BadRequest("invalid_field", "expires must be YYYY-MM")
    last4 = opt_str(body, "last4", 4)
    if last4 is not None and not _LAST4_RE.match(last4):
        raise BadRequest("invalid_field", "last4 must be four digits")
    async with request.app[POOL].acquire() as conn:
        try:
            card, created = await upsert_card(
                conn, card_id, account_id, str(state), policy, expires, last4
            )
        except UnknownAccount:
            raise NotFound("unknown_account", "no such account") from None
        except CardConflict as exc:
            raise Conflict("card_conflict", str(exc)) from None
    await _publish(request, card)
    return json_response(card.to_json(), status=201 if created else 200)


@routes.get("/v1/cards/{id}")
async def get_card(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], *_READERS, "customer")
    card = await load_card(request.app[POOL], _path_id(request))
    if card is None:
        raise NotFound("unknown_card", "no such card")
    return json_response(card.to_json())


async def _transition(request: web.Request, event: str) -> web.Response:
    card_id = _path_id(request)
    async with request.app[POOL].acquire() as conn:
        try:
            card = await transition(conn, card_id, event)
        except CardNotFound:
            raise NotFound("unknown_card", "no such card") from None
        except CardConflict as exc:
            raise Conflict("card_conflict", str(exc)) from None
    await _publish(request, card)
    return json_response(card.to_json())


@routes.post("/v1/cards/{id}/freeze")
async def freeze(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], "support", "customer")
    return await _transition(request, "freeze")


@routes.post("/v1/cards/{id}/unfreeze")
async def unfreeze(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], "support", "customer")
    return await _transition(request, "unfreeze")


@routes.post("/v1/cards/{id}/terminate")
async def terminate(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], "support")
    return await _transition(request, "terminate")


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.datetime) else value


@routes.get("/v1/authorizations/{id}")
async def get_authorization(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], *_READERS)
    found = await ledger.get_authorization(request.app[POOL], _path_id(request), _PROVIDERS)
    if found is None:
        raise NotFound("unknown_authorization", "no such authorization")
    a = found["authorization"]
    held = a["remaining"] or 0
    out = {
        "id": a["id"],
        "provider": a["provider"],
        "provider_id": a["provider_id"],
        "card_id": a["card_id"],
        "account_id": a["account_id"],
        "currency": a["currency"],
        "state": a["lifecycle_state"],
        "requested_amount": a["requested_amount"],
        "approved_amount": a["approved_amount"],
        "held_amount": held,
        "cleared_amount": a["hold_posted"] or 0,
        "reversed_amount": a["released"] or 0,
        "hold": None if a["hold_state"] is None else {
            "state": a["hold_state"],
            "authorized": a["authorized"],
            "remaining": held,
            "expires_at": _iso(a["expires_at"]),
        },
        "merchant": {"id": a["merchant_id"], "name": a["merchant_name"], "mcc": a["mcc"],
                     "country": a["country"]},
        "channel": a["channel"],
        "created_at": _iso(a["created_at"]),
        "history": [
            {
                "request_id": h["provider_id"],
                "sequence": h["sequence"],
                "kind": h["kind"],
                "amount": h["amount"],
                "currency": h["currency"],
                "decision": h["decision"],
                "approved_amount": h["approved_amount"],
                "reason": h["reason"],
                "stand_in": h["stand_in"],
                "policy_version": h["policy_version"],
                "counters": orjson.loads(h["counters"]) if h["counters"] else None,
                "decided_at": _iso(h["decided_at"]),
            }
            for h in found["history"]
        ],
        "events": [
            {
                "operation_id": e["op_id"],
                "kind": e["kind"],
                "amount": e["requested"],
                "posted": e["posted"],
                "released": e["released"],
                "forced": e["forced"],
                "applied_at": _iso(e["created_at"]),
            }
            for e in found["events"]
        ],
    }
    return json_response(out)
