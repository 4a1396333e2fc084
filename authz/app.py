"""The aiohttp application: typed ``AppKey`` per resource, ``cleanup_ctx`` for the PostgreSQL pool
and the Redis client, one error middleware, and the routes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from authz.errors import ApiError, PayloadTooLarge
from authz.hotpath import Authorizer
from authz.http import json_response
from authz.metrics import Metrics
from authz.settings import Settings
from authz.standin import run_stand_in_reconciler
from clearing.stats import read_open_holds, read_stats
from policies.cache import PolicyCache, RedisClient
from policies.resp import PipelinedRedis

__all__ = [
    "AUTHORIZER",
    "CACHE",
    "CLOCK",
    "METRICS",
    "POOL",
    "REDIS",
    "SETTINGS",
    "create_pool",
    "make_app",
    "redis_client",
]

log = logging.getLogger("holdfast.http")

SETTINGS: Final = web.AppKey("settings", Settings)
METRICS: Final = web.AppKey("metrics", Metrics)
CLOCK: Final[web.AppKey[Callable[[], float]]] = web.AppKey("clock")
POOL: Final = web.AppKey("pool", asyncpg.Pool)
REDIS: Final[web.AppKey[RedisClient]] = web.AppKey("redis")
CACHE: Final = web.AppKey("cache", PolicyCache)
AUTHORIZER: Final = web.AppKey("authorizer", Authorizer)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Request = TypeVar("_Request", bound=web.BaseRequest)


async def _reset(conn: asyncpg.Connection) -> None:
    # The default pool reset sends a second round trip (advisory unlock, CLOSE ALL, UNLISTEN,
    # RESET ALL) on every release. Pool connections here never hold advisory locks, cursors,
    # listeners or session settings, so only an abandoned transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# asyncpg replaces a pooled connection after 50,000 queries and closes one idle for 300 s. Its
# pool hands out the most recently released connection first, so under load the same one or two
# connections carry the ledger calls, and every 50,000 of them one was swapped for a cold
# backend: a new connection, then its first hf_authorize_batch ~20 ms instead of ~2 (plans,
# PL/pgSQL compiled again), with the requests queued behind it. Connections here are kept:
# PostgreSQL's per-backend caches are bounded by the schema, not by the number of queries.
_KEEP_FOREVER = 2**62


async def create_pool(settings: Settings, size: int | None = None) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=size or settings.pg_pool_size,
        max_queries=_KEEP_FOREVER,
        max_inactive_connection_lifetime=0,
        command_timeout=settings.pg_command_timeout_s,
        reset=_reset,
        server_settings={"application_name": "holdfast"},
    )
    if pool is None:
        raise RuntimeError("asyncpg.create_pool returned None")
    return pool


def redis_client(settings: Settings) -> RedisClient:
    """The Redis client of a server process: a single Redis, or a Redis Cluster when
    ``HOLDFAST_REDIS_CLUSTER`` is set (the URL then names any one node)."""
    timeout_s = settings.redis_timeout_ms / 1000
    if settings.redis_cluster:
        # max_connections is per node here; the socket timeouts bound each node's calls
        return aioredis.RedisCluster.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, max_connections=256,
        )
    return aioredis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, max_connections=256,
    )


def hotpath_redis(settings: Settings, on_connect: Callable[[], None] | None = None
                  ) -> PipelinedRedis | None:
    """The hot path's own pipelined connection (policies/resp.py), or None to keep redis-py:
    on a cluster, for a URL it does not speak, or with ``HOLDFAST_REDIS_PIPELINE=0``.
    ``on_connect`` is called each time it opens a connection."""
    if settings.redis_cluster or not settings.redis_pipeline:
        return None
    timeout_s = settings.redis_timeout_ms / 1000
    fast = PipelinedRedis.from_url(settings.redis_url, connect_timeout_s=timeout_s,
                                   stale_s=timeout_s, reply_timeout_s=timeout_s,
                                   on_connect=on_connect)
    if fast is None:
        log.info("HOLDFAST_REDIS_URL is not a plain redis:// URL: the hot path uses redis-py")
    return fast


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(settings)
    client = redis_client(settings)
    fast = hotpath_redis(settings, app[METRICS].redis_connects.inc)
    cache = PolicyCache(client, settings.redis_prefix, settings.dedupe_ttl_s, fast)
    try:
        await cache.load_scripts()
    except Exception as exc:  # Redis down at start-up: serve in stand-in until it returns
        log.warning("could not load Lua scripts at start-up: %s", type(exc).__name__)
    app[POOL] = pool
    app[REDIS] = client
    app[CACHE] = cache
    app[AUTHORIZER] = Authorizer(pool, cache, settings, app[METRICS], app[CLOCK])
    workers = [
        asyncio.create_task(_refresh_stats(
            pool, app[METRICS], settings.stats_interval_s, settings.open_holds_interval_s)),
        asyncio.create_task(run_stand_in_reconciler(pool, cache, app[CLOCK],
                                                    settings.stand_in_reconcile_interval_s)),
    ]
    yield
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await app[AUTHORIZER].close()
    if fast is not None:
        await fast.aclose()
    await client.aclose()
    await pool.close()


async def _refresh_stats(pool: asyncpg.Pool, metrics: Metrics, interval_s: float,
                         open_holds_interval_s: float) -> None:
    """Keep the ledger gauges fresh; a failed read leaves the last values and logs. The open
    holds (a count over every one of them) on their own, slower, clock."""
    loop = asyncio.get_running_loop()
    open_holds_due = loop.time()
    while True:
        try:
            stats = await read_stats(pool)
            metrics.inbox_pending.set(stats.inbox_pending)
            metrics.inbox_oldest_age.set(stats.inbox_oldest_pending_s)
            metrics.quarantined.set(stats.quarantined)
            metrics.sweep_lag.set(stats.oldest_due_hold_s)
            if loop.time() >= open_holds_due:
                open_holds_due = loop.time() + open_holds_interval_s
                for currency, (count, amount) in (await read_open_holds(pool)).items():
                    metrics.open_holds.labels(currency).set(count)
                    metrics.open_holds_amount.labels(currency).set(amount)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not refresh ledger stats: %s", type(exc).__name__)
        await asyncio.sleep(interval_s)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await answer_errors(request.app, request, handler)


async def answer_errors(app: web.Application, request: _Request,
                        handler: Callable[[_Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """The handler's answer, or its failure as the API's JSON error (the error middleware's
    work; authz/front.py calls it for the authorisation routes, which pass no middleware)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(app, exc.status, exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge:
        exc2 = PayloadTooLarge("body_too_large", "request body exceeds the size limit")
        return _error(app, exc2.status, exc2.code, exc2.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return _error(app, exc.status, code, exc.reason)
    except Exception:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                      request_id)
        return _error(app, 500, "system_error", f"internal error; request id {request_id}")


def _error(app: web.Application, status: int, code: str, message: str) -> web.Response:
    app[METRICS].http_errors.labels(str(status), code).inc()
    return json_response({"error": {"code": code, "message": message}}, status=status)


def make_app(settings: Settings, clock: Callable[[], float] = time.time) -> web.Application:
    # imported here: the route modules import this one for the AppKeys
    from authz.providers import lithic, marqeta, stripe
    from authz.ratelimit import setup_rate_limit
    from authz.routes import admin, native, ops, payments, quarantine

    app = web.Application(middlewares=[errors_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[CLOCK] = clock
    setup_rate_limit(app)  # management (bearer-token) routes only
    app.cleanup_ctx.append(_resources)
    app.add_routes(native.routes)
    app.add_routes(admin.routes)
    app.add_routes(ops.routes)
    app.add_routes(quarantine.routes)
    app.add_routes(lithic.routes)
    app.add_routes(marqeta.routes)
    app.add_routes(stripe.routes)
    payments.setup(app)  # payments, accounts extras, bank webhooks
    return app
