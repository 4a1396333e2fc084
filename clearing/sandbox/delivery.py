"""Outgoing webhooks with a realistic network: each is delivered after a delay (plus jitter),
some twice (duplication), some held back so later ones overtake them (reordering), and some
attempts lost (failure, retried with back-off as real providers do). Each event keeps its id and
body across attempts and duplicates; only the signature's timestamp is fresh."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from clearing.sandbox.config import SandboxConfig

__all__ = ["Delivery", "Outgoing"]

log = logging.getLogger("holdfast.sandbox.delivery")


@dataclass(frozen=True, slots=True)
class Outgoing:
    url: str
    body: bytes
    # header name and the function that signs (timestamp, body) for it
    header: str
    signer: Callable[[int, bytes], str]
    extra_headers: dict[str, str] = field(default_factory=dict)


class Delivery:
    def __init__(self, session: aiohttp.ClientSession, config: SandboxConfig,
                 rng: random.Random) -> None:
        self._session = session
        self._config = config
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def send(self, item: Outgoing) -> None:
        copies = 2 if self._rng.random() < self._config.duplicate_rate else 1
        for _ in range(copies):
            delay_ms = self._config.delay_ms + self._rng.uniform(0, self._config.jitter_ms)
            if self._rng.random() < self._config.reorder_rate:
                delay_ms += self._rng.uniform(2, 6) * max(self._config.delay_ms, 20)
            task = asyncio.create_task(self._deliver(item, delay_ms / 1000))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, item: Outgoing, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        for attempt in range(1, self._config.delivery_attempts + 1):
            if self._rng.random() >= self._config.failure_rate and await self._post(item):
                self.delivered += 1
                return
            await asyncio.sleep(min(2.0, 0.05 * 2 ** attempt))
        self.failed += 1
        log.error("webhook to %s given up after %s attempts", item.url,
                  self._config.delivery_attempts)

    async def _post(self, item: Outgoing) -> bool:
        headers = {"Content-Type": "application/json", **item.extra_headers,
                   item.header: item.signer(int(time.time()), item.body)}
        try:
            async with self._session.post(item.url, data=item.body, headers=headers) as resp:
                await resp.read()
                return resp.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Wait until every webhook sent so far has been delivered (or given up)."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
