"""Fixtures for the payments tests: the sandbox (card processor and bank) on a loopback port, a
Holdfast server configured to use it as its bank (over real HTTP, both ways), and a payments
worker driven step by step by the tests."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from authz.app import make_app
from authz.settings import Secret, Settings
from clearing.payments.bank import BankClient, BankConfig
from clearing.payments.outbox import OutboxConfig
from clearing.payments.worker import PaymentsWorker, WorkerConfig
from clearing.sandbox.app import SANDBOX, make_sandbox_app
from clearing.sandbox.config import SandboxConfig
from tests.conftest import TOKENS, WEBHOOK_SECRET
from tests.payments.support import BANK_API_KEY, BANK_SECRET, FEE, Flow
from tests.support import Api, FakeClock, Server


@pytest.fixture(scope="session")
async def sandbox_app(settings: Settings) -> AsyncIterator[tuple[web.Application, str]]:
    stripe = settings.stripe_webhook_secrets
    config = SandboxConfig(
        native_secret=WEBHOOK_SECRET, bank_webhook_secret=BANK_SECRET,
        stripe_secret=stripe[0].reveal() if stripe else None, bank_api_key=BANK_API_KEY,
        delay_ms=2, jitter_ms=3, hang_s=1.0)
    app = make_sandbox_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield app, f"http://{host}:{port}"
    await runner.cleanup()


@pytest.fixture(scope="session")
def pay_settings(settings: Settings, sandbox_app: tuple[web.Application, str]) -> Settings:
    return dataclasses.replace(
        settings, bank_url=f"{sandbox_app[1]}/bank", bank_api_key=Secret(BANK_API_KEY),
        bank_webhook_secrets=(Secret(BANK_SECRET), Secret("bank-secret-being-rotated-out")),
        payment_fees={"GBP": FEE}, bank_submit_timeout_ms=300, payee_check_timeout_ms=2000,
        stats_interval_s=1, pg_pool_size=8)


@pytest.fixture(scope="session")
async def pay_server(pay_settings: Settings, clock: FakeClock,
                     sandbox_app: tuple[web.Application, str]) -> AsyncIterator[Server]:
    app = make_app(pay_settings, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    # the sandbox sends its webhooks and card traffic to this server
    sandbox_app[0][SANDBOX].config.holdfast_url = base
    yield Server(app, base)
    await runner.cleanup()


@pytest.fixture(scope="session")
async def pay_api(pay_server: Server, clock: FakeClock) -> AsyncIterator[Api]:
    client = Api(pay_server.base_url, clock, WEBHOOK_SECRET, TOKENS)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def bank_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def flow(pay_api: Api, db: asyncpg.Pool, clock: FakeClock, pay_settings: Settings,
               sandbox_app: tuple[web.Application, str], bank_session: aiohttp.ClientSession
               ) -> AsyncIterator[Flow]:
    bank = BankClient(bank_session, BankConfig(
        pay_settings.bank_url, BANK_API_KEY, submit_timeout_s=0.3, payee_check_timeout_s=2.0))
    worker = PaymentsWorker(db, bank, WorkerConfig(outbox=OutboxConfig(backoff_base_s=1.0)),
                            clock=clock)
    sandbox = sandbox_app[0][SANDBOX]
    yield Flow(pay_api, db, worker, sandbox, clock, sandbox_app[1])
    # whatever a test left in flight lands before verify runs (conftest)
    await sandbox.idle()
    await worker.drain()
    sandbox.bank.next_submissions.clear()
    sandbox.bank.next_lives.clear()
    sandbox.bank.business_date = None
