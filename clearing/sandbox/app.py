"""The sandbox as an aiohttp app (the bank's routes and the control routes) with its processor,
and the runner ``holdfast sandbox`` uses."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web

from clearing.sandbox.bank import SandboxBank, bank_routes
from clearing.sandbox.config import SandboxConfig
from clearing.sandbox.delivery import Delivery
from clearing.sandbox.processor import CardProcessor

__all__ = ["SANDBOX", "Sandbox", "make_sandbox_app", "run_sandbox"]

# sandbox defaults that look like real ones: the demo's payees, known to the bank's directory
DEMO_DIRECTORY: Final = {
    "GB:200000/12345678": "Jane Smith",
    "GB:400001/87654321": "Acme Supplies Ltd",
    "GB:600001/11223344": "Robert Jones",
}


@dataclass(slots=True)
class Sandbox:
    config: SandboxConfig
    session: aiohttp.ClientSession
    delivery: Delivery
    bank: SandboxBank
    processor: CardProcessor

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Every webhook sent so far delivered (or given up)."""
        await self.delivery.idle(timeout_s)


SANDBOX: Final = web.AppKey("sandbox", Sandbox)


def make_sandbox_app(config: SandboxConfig) -> web.Application:
    app = web.Application()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        rng = random.Random(config.seed)  # noqa: S311 (a simulation, not a secret)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        delivery = Delivery(session, config, rng)
        bank = SandboxBank(config, delivery, rng, directory=dict(DEMO_DIRECTORY))
        app[SANDBOX] = Sandbox(config, session, delivery, bank,
                               CardProcessor(session, config, delivery))
        yield
        await delivery.close()
        await session.close()

    app.cleanup_ctx.append(resources)
    app.add_routes(bank_routes(lambda request: request.app[SANDBOX].bank))
    return app


async def run_sandbox(config: SandboxConfig, stop: asyncio.Event, demo: bool = False) -> None:
    from clearing.sandbox.demo import run_demo

    app = make_sandbox_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    print(f"holdfast sandbox (processor + bank) on http://{config.host}:{config.port}, "
          f"sending to {config.holdfast_url}", flush=True)
    task = asyncio.create_task(run_demo(app[SANDBOX], stop)) if demo else None
    try:
        await stop.wait()
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
