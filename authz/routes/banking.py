"""Account extras for banking (DESIGN §4): statements, virtual account numbers, closing, and
reconciliation reports.

- ``GET /v1/accounts/{id}/entries?limit=&cursor=``: postings, newest first; ``next_cursor``
  (opaque) fetches the next, older page, null on the last one.
- ``POST /v1/accounts/{id}/virtual-accounts``: the account's active virtual account (201 when
  allocated now, 200 when it had one); ``GET`` lists them all, retired ones included.
- ``POST /v1/accounts/{id}/close``: only an empty account without live cards; retires its
  virtual accounts (200 again when already closed).
- ``GET /v1/reconciliations/{id}``: a stored ``holdfast reconcile`` run and its breaks.

Scopes: ``admin`` allocates and closes; ``customer``, ``support`` and ``ops`` read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, NoReturn

from aiohttp import web

from authz.app import POOL, SETTINGS
from authz.errors import BadRequest, Conflict, NotFound
from authz.http import ID_RE, json_response
from authz.routes.payments import now, require_scope
from clearing.payments.statements import DEFAULT_LIMIT, MAX_LIMIT, InvalidCursor, entries
from clearing.payments.virtual_accounts import allocate, close_account, list_virtual_accounts
from clearing.reconcile import get_reconciliation

__all__ = ["routes"]

routes = web.RouteTableDef()

_READERS: Final = ("customer", "support", "ops")
_ACCOUNT_REFUSALS: Final = {
    "unknown_account": (NotFound, "unknown_account", "no such account"),
    "wrong_kind": (Conflict, "wrong_account_kind", "only customer accounts have this"),
    "account_closed": (Conflict, "account_closed", "the account is closed"),
    "not_empty": (Conflict, "account_not_empty",
                  "the account still has a posted or held balance"),
    "active_cards": (Conflict, "account_has_cards", "terminate the account's cards first"),
}


def _account_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not ID_RE.match(value):
        raise NotFound("unknown_account", "no such account")
    return value


def _refuse(status: str) -> NoReturn:
    error, code, message = _ACCOUNT_REFUSALS[status]
    raise error(code, message)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest("invalid_limit", f"limit must be from 1 to {MAX_LIMIT}")
    return int(raw)


@routes.get("/v1/accounts/{id}/entries")
async def account_entries(request: web.Request) -> web.Response:
    require_scope(request, *_READERS)
    account_id = _account_id(request)
    limit = _limit(request)
    pool = request.app[POOL]
    if await pool.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
        raise NotFound("unknown_account", "no such account")
    try:
        page = await entries(pool, account_id, request.query.get("cursor"), limit)
    except InvalidCursor:
        raise BadRequest("invalid_cursor", "cursor is not one this API returned") from None
    return json_response({"account_id": account_id, "order": "newest_first",
                          "entries": [e.to_json() for e in page.entries],
                          "next_cursor": page.next_cursor})


@routes.post("/v1/accounts/{id}/virtual-accounts")
async def allocate_virtual_account(request: web.Request) -> web.Response:
    require_scope(request)
    settings = request.app[SETTINGS]
    async with request.app[POOL].acquire() as conn:
        status, va = await allocate(conn, _account_id(request), settings.virtual_sort_code,
                                    settings.iban_bank_code, now(request))
    if va is None:
        _refuse(status)
    return json_response(va.to_json(), status=201 if status == "created" else 200)


@routes.get("/v1/accounts/{id}/virtual-accounts")
async def virtual_accounts(request: web.Request) -> web.Response:
    require_scope(request, *_READERS)
    account_id = _account_id(request)
    pool = request.app[POOL]
    if await pool.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
        raise NotFound("unknown_account", "no such account")
    found = await list_virtual_accounts(pool, account_id)
    return json_response({"account_id": account_id,
                          "virtual_accounts": [v.to_json() for v in found]})


@routes.post("/v1/accounts/{id}/close")
async def close(request: web.Request) -> web.Response:
    require_scope(request)
    account_id = _account_id(request)
    async with request.app[POOL].acquire() as conn:
        status, closed_at = await close_account(conn, account_id, now(request))
    if closed_at is None:
        _refuse(status)
    return json_response({"id": account_id, "status": "closed",
                          "closed_at": closed_at.isoformat()})


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


@routes.get("/v1/reconciliations/{id}")
async def reconciliation(request: web.Request) -> web.Response:
    require_scope(request, "ops", "support")
    recon_id = request.match_info["id"]
    found = None if not ID_RE.match(recon_id) else await get_reconciliation(
        request.app[POOL], recon_id)
    if found is None:
        raise NotFound("unknown_reconciliation", "no such reconciliation")
    r = found["reconciliation"]
    summary = {k: r[k] for k in ("matched", "missing_in_ledger", "missing_in_statement",
                                 "amount_breaks")}
    out: dict[str, Any] = {
        "id": r["id"], "source": r["source"], "format": r["format"],
        "period": {"from": _iso(r["period_from"]), "to": _iso(r["period_to"])},
        "created_at": _iso(r["created_at"]), "summary": summary,
        "ok": summary["missing_in_ledger"] + summary["missing_in_statement"]
        + summary["amount_breaks"] == 0,
        "breaks": [{"kind": b["kind"], "provider_id": b["provider_id"],
                    "currency": b["currency"].strip(), "statement_amount": b["statement_amount"],
                    "ledger_amount": b["ledger_amount"], "date": _iso(b["entry_date"]),
                    "reference": b["reference"], "ledger_ref": b["ledger_ref"]}
                   for b in found["breaks"]],
    }
    return json_response(out)
