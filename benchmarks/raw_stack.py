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

With ``HOLDFAST_RAW_WRITES=ledger`` (``make bench`` ``--raw-writes ledger``) the one statement
writes instead what an approval writes in Holdfast's own tables: the authorisation with its hold,
its request and the account's ``held`` (one statement, data-modifying CTEs), with the tables'
keys, checks, foreign keys and triggers, and nothing of Holdfast's decision: no replay or
conflict lookup, no locks taken first, no funds check, no group commit, every request approved
as a new authorisation of its card (the card and amount from the body; the holds go on a twin
of the card's account, made at start with an overdraft limit that covers them, so that the raw
stack spends nothing Holdfast decides on and `holdfast verify` stays clean). Holdfast's
throughput divided by this one's is then the price of its logic alone, with the rows it must
write on both sides.
"""

from __future__ import annotations

import asyncio
import itertools
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
from authz.scheduling import SchedulingError, run_realtime
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
# an approval's rows in Holdfast's tables, as hf_authorize writes them for a new authorisation
# (its hold and the request that created it on its row: migrations 0011, 0017)
_LEDGER_WRITE: Final = """
WITH authorization_row AS (
    INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency, state,
        requested_amount, approved_amount, merchant_id, merchant_name, mcc, country, channel,
        created_at, updated_at, hold_state, hold_authorized, hold_posted, hold_over_posted,
        hold_released, hold_remaining, hold_expires_at, hold_created_at, hold_updated_at,
        hold_forced, request_sequence, request_amount, request_partial, request_approved,
        request_reason, request_stand_in, request_policy_version, request_counters,
        request_hash, request_counted)
    VALUES ($1, 'raw', $1, $2, $3, $4, 'pending', $5, $5, 'raw', 'raw', '5999', 'GB', 'pos',
        now(), now(), 'open', $5, 0, 0, 0, $5, now() + interval '7 days', now(), now(), false,
        0, $5, false, $5, 'approved', false, 1, NULL, $1, true))
UPDATE accounts SET held = held + $5, updated_at = now() WHERE id = $3"""
# each customer account's twin, for the raw stack's holds alone: approving without a funds
# check, it must not spend what Holdfast decides on (its overdraft limit keeps `verify` clean)
_TWINS: Final = ("INSERT INTO accounts (id, kind, currency, overdraft_limit)"
                 " SELECT 'raw:' || a.id, 'customer', a.currency, 1000000000000000"
                 " FROM accounts a WHERE a.kind = 'customer' AND a.id NOT LIKE 'raw:%'"
                 " ON CONFLICT (id) DO NOTHING")
_CARDS: Final = ("SELECT c.id, 'raw:' || c.account_id, a.currency FROM cards c"
                 " JOIN accounts a ON a.id = c.account_id")
_IDS: Final = itertools.count()  # the raw stack's authorisation ids: raw-<pid>-<n>

SETTINGS: Final = web.AppKey("settings", Settings)
POOL: Final = web.AppKey("pool", asyncpg.Pool)
REDIS: Final = web.AppKey("redis", aioredis.Redis)
EvalSha = Callable[[], Awaitable[object]]
EVALSHA: Final[web.AppKey[EvalSha]] = web.AppKey("evalsha")
SHA: Final = web.AppKey("sha", str)
KEY: Final = web.AppKey("key", str)
WRITES: Final = web.AppKey("writes", str)  # HOLDFAST_RAW_WRITES: insert | ledger
# card id -> (its account's twin, currency), for HOLDFAST_RAW_WRITES=ledger
CARDS: Final = web.AppKey("cards", dict[str, tuple[str, str]])


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
    if app[WRITES] == "ledger":
        await pool.execute(_TWINS)
        app[CARDS] = {r[0]: (r[1], r[2].strip()) for r in await pool.fetch(_CARDS)}
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


async def authorize_ledger(request: web.Request) -> web.Response:
    app = request.app
    body = orjson.loads(await request.read())
    account, currency = app[CARDS][body["card_id"]]
    await app[EVALSHA]()
    auth_id = f"raw-{os.getpid()}-{next(_IDS)}"
    await app[POOL].execute(_LEDGER_WRITE, auth_id, body["card_id"], account, currency,
                            int(body["amount"]))
    return web.Response(
        body=orjson.dumps({"id": auth_id, "decision": "approve"}), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def make_app(settings: Settings, writes: str = "insert") -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[WRITES] = writes
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/authorize", authorize_ledger if writes == "ledger" else authorize)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(settings: Settings, writes: str) -> int:
    if settings.realtime_priority:  # as authz.cli._serve: both servers scheduled alike
        run_realtime(settings.realtime_priority)
    # as authz.cli._serve: no access log, SO_REUSEPORT, the same backlog
    runner = web.AppRunner(make_app(settings, writes), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=2048)
    await site.start()
    print(f"raw stack ({writes}) serving on http://{settings.host}:{settings.port}"
          f" (pid {os.getpid()})", flush=True)
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
    writes = os.environ.get("HOLDFAST_RAW_WRITES", "insert")
    if writes not in ("insert", "ledger"):
        print(f"HOLDFAST_RAW_WRITES must be insert or ledger, not {writes!r}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(_serve(settings, writes))
        except SchedulingError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
