"""Fixtures: a PostgreSQL database and a Redis key prefix of this run's own (created here, dropped
at the end), one server on a loopback port, an injectable clock, and ``holdfast verify`` after
every test."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from authz.app import AUTHORIZER, make_app
from authz.front import start_runner
from authz.logs import JsonFormatter
from authz.settings import Secret, Settings, parse_admin_tokens
from holds.migrate import migrate
from holds.verify import verify
from tests.support import Api, FakeClock, Server

RUN_ID = uuid.uuid4().hex[:10]
PG_ADMIN_URL = os.environ.get("HOLDFAST_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HOLDFAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
TOKENS = {
    "admin": "test-admin-token-0001",
    "support": "test-support-token-01",
    "customer": "test-customer-token-1",
    "ops": "test-ops-token-000001",
}
WEBHOOK_SECRET = "test-webhook-secret"


SESSION_LOG_NAME = "holdfast-session.log"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suite-wide scan for card numbers and secrets runs after everything else."""
    last = [item for item in items if item.path.name == "test_zzz_scan.py"]
    if last:
        items[:] = [item for item in items if item.path.name != "test_zzz_scan.py"] + last


@pytest.fixture(scope="session", autouse=True)
def _session_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything logged in this process during the session, written as production writes it
    (the JSON formatter with its data-class filter), for tests/test_zzz_scan.py; holdfast's own
    loggers at INFO, as in production."""
    path = tmp_path_factory.getbasetemp() / SESSION_LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    ours = logging.getLogger("holdfast")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    yield path
    logging.getLogger().removeHandler(handler)
    handler.close()
    ours.setLevel(level)


def _db_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    name = f"holdfast_test_{RUN_ID}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _db_url(name)
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    yield url
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    from tests.providers import keys

    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_prefix=f"hft:{RUN_ID}:",
        admin_tokens=parse_admin_tokens(",".join(f"{t}={s}" for s, t in TOKENS.items())),
        webhook_secrets=(Secret(WEBHOOK_SECRET), Secret("rotated-out-old-secret")),
        lithic_webhook_secrets=tuple(Secret(s) for s in keys.LITHIC_SECRETS),
        marqeta_basic_auth=tuple(Secret(s) for s in keys.MARQETA_BASIC_AUTH),
        marqeta_hmac_secrets=tuple(Secret(s) for s in keys.MARQETA_HMAC_SECRETS),
        stripe_webhook_secrets=tuple(Secret(s) for s in keys.STRIPE_SECRETS),
        pg_pool_size=20,
        # scenario tests are about correctness, not time: a shared 2-core machine under load
        # must not turn them into deadline declines (tests/test_resilience.py tests the deadline)
        decision_deadline_ms=5_000,
        redis_timeout_ms=2_000,
    )


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])
    await client.aclose()


@pytest.fixture(scope="session")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _reset_clock(clock: FakeClock) -> Iterator[None]:
    yield
    clock.reset()


@pytest.fixture(scope="session")
async def server(settings: Settings, clock: FakeClock, redis: aioredis.Redis
                 ) -> AsyncIterator[Server]:
    application = make_app(settings, clock=clock)
    runner = await start_runner(application, access_log=None)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield Server(application, f"http://{host}:{port}")
    await runner.cleanup()


@pytest.fixture(scope="session")
async def api(server: Server, clock: FakeClock) -> AsyncIterator[Api]:
    client = Api(server.base_url, clock, WEBHOOK_SECRET, TOKENS)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(autouse=True)
async def _verify_after(db: asyncpg.Pool, server: Server) -> AsyncIterator[None]:
    """Every test ends with the ledger's invariants proven (after pending give-backs ran)."""
    yield
    await server.app[AUTHORIZER].drain()
    async with db.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report.render()
