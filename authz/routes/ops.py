"""Operations: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (dependencies answer, schema
current), ``/openapi.json``."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from authz.app import METRICS, POOL, REDIS
from authz.http import json_response
from authz.openapi import spec
from holds.migrate import pending

__all__ = ["routes"]

routes = web.RouteTableDef()
_PROBE_TIMEOUT_S = 1.0


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    # the pid tells which process answered when `serve --workers N` shares the port
    return json_response({"status": "ok", "pid": os.getpid()})


async def _probe_postgres(request: web.Request) -> dict[str, object]:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            async with request.app[POOL].acquire() as conn:
                missing = await pending(conn)
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": not missing, "pending_migrations": [m.version for m in missing]}


async def _probe_redis(request: web.Request) -> dict[str, object]:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await request.app[REDIS].ping()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "stand_in": True}
    return {"ok": True}


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    pg, rd = await asyncio.gather(_probe_postgres(request), _probe_redis(request))
    # without PostgreSQL nothing can be approved; without Redis decisions stand in, which is
    # degraded but still serving: report it, and stay ready
    ready = bool(pg["ok"])
    body = {"status": "ready" if ready else "not_ready", "postgres": pg, "redis": rd}
    return json_response(body, status=200 if ready else 503)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(spec())
