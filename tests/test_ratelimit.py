"""Rate limits on the management API: per bearer token, a sliding minute counted in Redis and
shared by every server process; 429 ``rate_limited`` with ``Retry-After``; the card-processor
routes never limited; open when Redis is down."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from authz.app import METRICS, make_app
from authz.front import start_runner
from authz.ratelimit import WINDOW_S, retry_after_s
from authz.settings import Settings
from tests.conftest import TOKENS, WEBHOOK_SECRET
from tests.support import Api, FakeClock, Reply, auth_body, uid

LIMIT = 5
# 10 s into a minute, so "the next minute" is a known distance away
T0 = 1_900_000_000 // WINDOW_S * WINDOW_S + 10


@dataclasses.dataclass
class Limited:
    api: Api
    app: web.Application
    clock: FakeClock

    def metric(self, name: str) -> float:
        return self.app[METRICS].registry.get_sample_value(name) or 0.0


@contextlib.asynccontextmanager
async def limited_server(settings: Settings, prefix: str, clock: FakeClock, limit: int = LIMIT,
                         redis_url: str | None = None) -> AsyncIterator[Limited]:
    app = make_app(dataclasses.replace(
        settings, redis_prefix=prefix, admin_rate_limit_per_min=limit, pg_pool_size=2,
        redis_url=redis_url or settings.redis_url, redis_timeout_ms=200 if redis_url else 2000,
    ), clock=clock)
    runner = await start_runner(app, access_log=None)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    api = Api(f"http://{host}:{port}", clock, WEBHOOK_SECRET, TOKENS)
    try:
        yield Limited(api, app, clock)
    finally:
        await api.close()
        await runner.cleanup()


@pytest.fixture
def prefix(settings: Settings) -> str:
    # under the run's prefix, so the session's Redis clean-up removes these keys too
    return f"{settings.redis_prefix}{uid('rl')}:"


@pytest.fixture
def fixed_clock() -> FakeClock:
    clock = FakeClock()
    clock.set(T0)
    return clock


async def read_account(s: Limited, account: str, scope: str = "admin") -> Reply:
    return await s.api.admin("GET", f"/v1/accounts/{account}", scope=scope)


def test_retry_after_is_the_time_until_the_sliding_window_has_room() -> None:
    w = WINDOW_S * 1000
    # this minute alone is full: the rest of it, then until enough of it has slid out of the
    # next one (exactly at the boundary the count equals the limit: still refused)
    assert retry_after_s(5, w, 10_000, previous=0, current=5) == 51  # 50 s + 1 ms
    assert retry_after_s(5, w, 10_000, previous=0, current=10) == 81  # 50 s + 30 s + 1 ms
    # the previous minute still weighs: 6 * (60 - e) / 60 + 2 < 5  =>  e > 30 s
    assert retry_after_s(5, w, 10_000, previous=6, current=2) == 21
    assert retry_after_s(5, w, 29_500, previous=6, current=2) == 1
    assert retry_after_s(5, w, 59_500, previous=100, current=4) == 1  # never below one second


async def test_a_token_over_its_limit_gets_429_with_retry_after(
        settings: Settings, prefix: str, fixed_clock: FakeClock, api: Api) -> None:
    account = await api.account("GBP")
    async with limited_server(settings, prefix, fixed_clock) as s:
        for _ in range(LIMIT):
            assert (await read_account(s, account)).status == 200
        refused = await read_account(s, account)
        assert refused.status == 429
        assert refused.body["error"]["code"] == "rate_limited"
        assert set(refused.body["error"]) == {"code", "message"}
        assert refused.headers["Retry-After"] == str(WINDOW_S - 10 + 1)
        # refusals are not counted: still refused, with the same wait, at the same instant
        again = await read_account(s, account)
        assert (again.status, again.headers["Retry-After"]) == (429, str(WINDOW_S - 10 + 1))
        assert s.metric("holdfast_admin_rate_limited_total") == 2
        assert s.app[METRICS].registry.get_sample_value(
            "holdfast_http_errors_total", {"status": "429", "code": "rate_limited"}) == 2

        # each token has its own window
        assert (await read_account(s, account, scope="support")).status == 200
        # a write is limited like a read
        r = await s.api.admin("POST", "/v1/accounts", {"id": uid("acct"), "currency": "GBP"})
        assert r.status == 429


async def test_the_window_slides(settings: Settings, prefix: str, fixed_clock: FakeClock,
                                 api: Api) -> None:
    account = await api.account("GBP")
    async with limited_server(settings, prefix, fixed_clock) as s:
        for _ in range(LIMIT):
            assert (await read_account(s, account)).status == 200
        # 60 s later the full previous minute still weighs 5 * 50/60 = 4.2: room for one more
        fixed_clock.advance(WINDOW_S)
        assert (await read_account(s, account)).status == 200
        refused = await read_account(s, account)
        assert refused.status == 429
        # 5 * (60 - e)/60 + 1 < 5  =>  e > 12 s into the minute, and it is 10 s in
        wait = int(refused.headers["Retry-After"])
        assert wait == 3  # 2 s and 1 ms, in whole seconds
        fixed_clock.advance(wait - 1)
        assert (await read_account(s, account)).status == 429  # exactly at the boundary
        fixed_clock.advance(1)
        assert (await read_account(s, account)).status == 200


async def test_the_limit_is_shared_by_every_server_process(
        settings: Settings, prefix: str, fixed_clock: FakeClock, api: Api) -> None:
    account = await api.account("GBP")
    async with limited_server(settings, prefix, fixed_clock) as one, \
            limited_server(settings, prefix, fixed_clock) as two:
        for i in range(LIMIT):
            assert (await read_account(one if i % 2 else two, account)).status == 200
        assert (await read_account(one, account)).status == 429
        assert (await read_account(two, account)).status == 429


async def test_card_processor_routes_are_never_limited(
        settings: Settings, prefix: str, fixed_clock: FakeClock, api: Api) -> None:
    account = await api.account("GBP", funds=100_000)
    card = await api.card(account)
    async with limited_server(settings, prefix, fixed_clock, limit=1) as s:
        assert (await read_account(s, account)).status == 200
        assert (await read_account(s, account)).status == 429
        # even carrying the exhausted token, the hot path and the provider routes answer
        bearer = {"Authorization": f"Bearer {TOKENS['admin']}"}
        for _ in range(3):
            raw = orjson.dumps(auth_body(card, 100))
            r = await s.api.raw("POST", "/v1/authorize", raw, {
                **bearer, "Content-Type": "application/json",
                "Holdfast-Signature": s.api.sign(raw)})
            assert (r.status, r.body["decision"]) == (200, "approve"), r.body
        r = await s.api.raw("POST", "/providers/stripe/webhooks", b"{}", bearer)
        assert r.status == 401  # its own authentication, not a 429
        # probes and scrapes carry no token: never limited
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await s.api.raw("GET", path)).status == 200


async def test_unknown_tokens_are_not_counted(settings: Settings, prefix: str,
                                              fixed_clock: FakeClock, redis: aioredis.Redis
                                              ) -> None:
    async with limited_server(settings, prefix, fixed_clock, limit=1) as s:
        for _ in range(3):
            r = await s.api.raw("GET", "/v1/accounts/x", None,
                                {"Authorization": "Bearer not-a-known-token-at-all"})
            assert (r.status, r.body["error"]["code"]) == (401, "bad_token")
    assert [k async for k in redis.scan_iter(match=f"{prefix}*")] == []


async def test_counters_live_under_the_prefix_and_expire(
        settings: Settings, prefix: str, fixed_clock: FakeClock, redis: aioredis.Redis,
        api: Api) -> None:
    account = await api.account("GBP")
    async with limited_server(settings, prefix, fixed_clock) as s:
        assert (await read_account(s, account)).status == 200
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    assert len(keys) == 1
    assert keys[0].startswith(f"{prefix}{{admin-rl:")
    assert TOKENS["admin"] not in keys[0]  # the token's hash names it, never the token
    assert 0 < await redis.pttl(keys[0]) <= 2 * WINDOW_S * 1000


async def test_redis_down_fails_open(settings: Settings, prefix: str, fixed_clock: FakeClock,
                                     api: Api) -> None:
    account = await api.account("GBP")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_redis = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    async with limited_server(settings, prefix, fixed_clock, limit=1,
                              redis_url=dead_redis) as s:
        for _ in range(3):
            assert (await read_account(s, account)).status == 200
        assert s.metric("holdfast_admin_rate_limit_errors_total") == 3
        assert s.metric("holdfast_admin_rate_limited_total") == 0


async def test_zero_turns_the_limit_off(settings: Settings, prefix: str, fixed_clock: FakeClock,
                                        api: Api) -> None:
    account = await api.account("GBP")
    async with limited_server(settings, prefix, fixed_clock, limit=0) as s:
        for _ in range(LIMIT + 2):
            assert (await read_account(s, account)).status == 200
        assert s.app[METRICS].registry.get_sample_value(
            "holdfast_admin_rate_limited_total") is None


def test_the_limit_is_configured_per_minute() -> None:
    assert Settings.from_env({}).admin_rate_limit_per_min == 6000
    assert Settings.from_env({"HOLDFAST_ADMIN_RATE_LIMIT": "120"}).admin_rate_limit_per_min == 120
    assert Settings.from_env({"HOLDFAST_ADMIN_RATE_LIMIT": "0"}).admin_rate_limit_per_min == 0
