"""Quarantined events for operators: list them, retry one (scope ``ops``; reading also
``support``). The consumers apply a retried event like any other pending one."""

from __future__ import annotations

from aiohttp import web

from authz.app import POOL, SETTINGS
from authz.errors import BadRequest, NotFound
from authz.http import json_response, require_scope
from clearing.consumer import retry_event

__all__ = ["routes"]

routes = web.RouteTableDef()
_PAGE = 100


@routes.get("/v1/events/quarantined")
async def list_quarantined(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], "ops", "support")
    after = request.query.get("after", "0")
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise BadRequest("invalid_cursor", "after must be an inbox event id")
    rows = await request.app[POOL].fetch(
        "SELECT id, provider, provider_event_id, type, attempts, quarantine_reason, received_at"
        "  FROM inbox_events WHERE status = 'quarantined' AND id > $1 ORDER BY id LIMIT $2",
        int(after), _PAGE)
    events = [
        {"inbox_id": r["id"], "provider": r["provider"], "event_id": r["provider_event_id"],
         "type": r["type"], "attempts": r["attempts"], "reason": r["quarantine_reason"],
         "received_at": r["received_at"].isoformat()}
        for r in rows
    ]
    next_after = str(rows[-1]["id"]) if len(rows) == _PAGE else None
    return json_response({"events": events, "next_after": next_after})


@routes.post("/v1/events/{inbox_id}/retry")
async def retry(request: web.Request) -> web.Response:
    require_scope(request, request.app[SETTINGS], "ops")
    raw = request.match_info["inbox_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound("not_found", "no such event")
    if not await retry_event(request.app[POOL], int(raw)):
        raise NotFound("not_quarantined", "no quarantined event with this id")
    return json_response({"inbox_id": int(raw), "status": "pending"}, status=202)
