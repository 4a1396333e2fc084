"""The inbox consumer: claim pending events with ``FOR UPDATE SKIP LOCKED`` (so any number of
consumer processes can run), apply each in one transaction together with its ledger change and
its inbox status, quarantine what cannot be applied, and put quarantined events back when what
they were waiting for appears. Woken by ``LISTEN holdfast_inbox``, with a polling fallback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import orjson

from clearing.disputes import IllegalDisputeTransition
from clearing.events import LifecycleEvent
from clearing.handlers import HoldWindows, Outcome, apply_event
from clearing.lifecycle import IllegalTransition
from clearing.metrics import ConsumerMetrics
from clearing.sweep import sweep
from holds.db import Conn, Executor

__all__ = ["Consumer", "ConsumerConfig", "requeue_quarantined", "retry_event"]

log = logging.getLogger("holdfast.consumer")

_CLAIM = """
SELECT id, provider, provider_event_id, type, canonical::text AS canonical
  FROM inbox_events WHERE status = 'pending'
 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"""

# a business rule refused the event: quarantine it (anything else is retried)
_REFUSALS = (IllegalTransition, IllegalDisputeTransition, asyncpg.CheckViolationError,
             asyncpg.RaiseError)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    batch_size: int = 200
    poll_interval_s: float = 1.0
    sweep_interval_s: float = 60.0
    sweep_batch_size: int = 200
    sweep_window: int = 100_000
    sweep_duty: float = 1.0
    rollup_batch_size: int = 5000
    windows: HoldWindows = field(default_factory=HoldWindows)


class Consumer:
    def __init__(self, pool: asyncpg.Pool, config: ConsumerConfig,
                 metrics: ConsumerMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._config = config
        self._metrics = metrics or ConsumerMetrics()
        self._clock = clock
        self._wake = asyncio.Event()

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    async def apply_one(self) -> bool:
        """Claim and apply one pending event. False when none is pending."""
        started = time.perf_counter()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM)
            if row is None:
                return False
            outcome = await self._apply(conn, row)
            await conn.execute(
                "UPDATE inbox_events SET status = $2, quarantine_reason = $3,"
                " attempts = attempts + 1, processed_at = $4 WHERE id = $1",
                row["id"], outcome.status, outcome.reason, self._now())
        self._metrics.applied.labels(row["type"], outcome.status).inc()
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        if outcome.status == "quarantined":
            log.warning("quarantined %s event %s: %s", row["provider"], row["provider_event_id"],
                        outcome.reason)
        return True

    async def _apply(self, conn: Conn, row: asyncpg.Record) -> Outcome:
        if row["canonical"] is None:
            return Outcome("applied", "informational")
        try:
            ev = LifecycleEvent.from_json(orjson.loads(row["canonical"]))
        except (KeyError, ValueError, TypeError) as exc:
            return Outcome("quarantined", f"malformed canonical event: {type(exc).__name__}")
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes only this event
                return await apply_event(conn, row["provider"], ev, self._now(),
                                         self._config.windows)
        except _REFUSALS as exc:
            return Outcome("quarantined", str(exc)[:500])

    async def run_batch(self) -> int:
        applied = 0
        while applied < self._config.batch_size and await self.apply_one():
            applied += 1
        return applied

    async def housekeeping(self) -> None:
        requeued = await requeue_quarantined(self._pool)
        if requeued:
            self._metrics.requeued.inc(requeued)
            self._wake.set()
        rolled = await self._pool.fetchval("SELECT hf_rollup_deltas($1)",
                                           self._config.rollup_batch_size)
        self._metrics.deltas_rolled_up.inc(rolled or 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: apply, tidy up, sweep when due, sleep until woken."""
        listener = await self._pool.acquire()

        def wake(*_: object) -> None:
            self._wake.set()

        await listener.add_listener("holdfast_inbox", wake)
        next_sweep = 0.0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    busy = await self.run_batch()
                    await self.housekeeping()
                    if time.monotonic() >= next_sweep:
                        await sweep(self._pool, self._now(), self._config.sweep_batch_size,
                                    metrics=self._metrics, duty=self._config.sweep_duty,
                                    window=self._config.sweep_window)
                        next_sweep = time.monotonic() + self._config.sweep_interval_s
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                    log.error("consumer lost PostgreSQL, retrying: %s", type(exc).__name__)
                    busy = 0
                if busy >= self._config.batch_size:
                    continue  # more is waiting
                waiters = [asyncio.ensure_future(self._wake.wait()),
                           asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, timeout=self._config.poll_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            await listener.remove_listener("holdfast_inbox", wake)
            await self._pool.release(listener)


async def requeue_quarantined(db: Executor) -> int:
    """Put back quarantined events whose authorisation now exists (out-of-order delivery)."""
    result = await db.execute(
        "UPDATE inbox_events e SET status = 'pending'"
        " WHERE status = 'quarantined' AND quarantine_reason = 'unknown_authorization'"
        " AND EXISTS (SELECT 1 FROM authorizations a"
        "             WHERE a.id = e.canonical ->> 'authorization_id')")
    return int(result.split()[-1])


async def retry_event(db: Executor, inbox_id: int) -> bool:
    """An operator's retry of one quarantined event. True if it was quarantined."""
    result = await db.execute(
        "UPDATE inbox_events SET status = 'pending' WHERE id = $1 AND status = 'quarantined'",
        inbox_id)
    return result.endswith(" 1")
