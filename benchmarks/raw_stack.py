"""The "raw stack": the floor Holdfast is measured against.

    HOLDFAST_DATABASE_URL=... HOLDFAST_REDIS_PREFIX=... HOLDFAST_PORT=... \
        python -m benchmarks.raw_stack

``POST /v1/authorize`` reads the body and does what any authorisation server must do at the very
least, with no logic at all: one Redis ``EVALSHA`` of a trivial script and one PostgreSQL
``INSERT``, then a small JSON answer. Everything else is Holdfast's: the same configuration
(``Settings.from_env``), the same asyncpg pool (``authz.app.create_pool``: size, command timeout,
the per-release reset switched off), the same Redis connection for the one call
(``authz.app.hotpath_redis``: the lean pipelined one, or redis-py with the same options when
``HOLDFAST_REDIS_PIPELINE=0``), uvloop, and the same
``AppRunner``/``TCPSite`` setup as ``holdfast serve``. Holdfast's throughput divided by this one's
is then the price of its own work (signature, validation, rules, velocity, ledger function,
metrics), not of the machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import asyncpg
import orjson
import redis.asyncio as aioredis
from aiohttp import web

from authz.app import create_pool, hotpath_redis
from authz.settings import Settings
from policies.resp import PipelinedRedis

__all__ = ["main", "make_app"]

# a trivial script that still touches a key, as every real decision does
_SCRIPT: Final = "return redis.call('INCR', KEYS[1])"
_TABLE: Final = """
CREATE TABLE IF NOT EXISTS bench_raw_stack (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body_bytes integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""
_INSERT: Final = "INSERT INTO bench_raw_stack (body_bytes) VALUES ($1) RETURNING id"

SETTINGS: Final = web.AppKey("settings", Settings)
POOL: Final = web.AppKey("pool", asyncpg.Pool)
REDIS: Final = web.AppKey("redis", aioredis.Redis)
EvalSha = Callable[[], Awaitable[object]]
EVALSHA: Final[web.AppKey[EvalSha]] = web.AppKey("evalsha")
SHA: Final = web.AppKey("sha", str)
KEY: Final = web.AppKey("key", str)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(settings)
    # the options authz.app gives its client
    client = aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_ms / 1000,
        max_connections=256,
    )
    await pool.execute(_TABLE)
    app[POOL] = pool
    app[REDIS] = client
    app[SHA] = await client.script_load(_SCRIPT)
    app[KEY] = f"{settings.redis_prefix}raw-stack"
    fast = hotpath_redis(settings)
    app[EVALSHA] = _evalsha(fast, client, app[SHA], app[KEY])
    yield
    if fast is not None:
        await fast.aclose()
    await client.aclose()
    await pool.close()


def _evalsha(fast: PipelinedRedis | None, client: aioredis.Redis, sha: str, key: str
             ) -> EvalSha:
    if fast is not None:
        return lambda: fast.call("EVALSHA", sha, 1, key)
    return lambda: client.evalsha(sha, 1, key)


async def authorize(request: web.Request) -> web.Response:
    app = request.app
    body = await request.read()
    await app[EVALSHA]()
    row_id = await app[POOL].fetchval(_INSERT, len(body))
    return web.Response(
        body=orjson.dumps({"id": row_id, "decision": "approve"}), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def make_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/authorize", authorize)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(settings: Settings) -> int:
    # as authz.cli._serve: no access log, SO_REUSEPORT, the same backlog
    runner = web.AppRunner(make_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=2048)
    await site.start()
    print(f"raw stack serving on http://{settings.host}:{settings.port} (pid {os.getpid()})",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def main() -> int:
    import uvloop

    settings = Settings.from_env()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(settings))


if __name__ == "__main__":
    sys.exit(main())
