"""The payments worker (started inside ``holdfast consumers``): carry out due outbox jobs,
apply stored bank webhooks, and put back quarantined bank facts whose payment has moved on
(a return that arrived before its settlement). Woken by ``LISTEN holdfast_payments``, with a
polling fallback; any number may run (``SKIP LOCKED`` everywhere)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import orjson

from clearing.payments.bank import BankClient
from clearing.payments.metrics import PaymentMetrics
from clearing.payments.outbox import Outbox, OutboxConfig
from clearing.payments.webhooks import Applied, apply_bank_event

__all__ = ["PaymentsWorker", "WorkerConfig", "requeue_bank_events"]

log = logging.getLogger("holdfast.payments")

_CLAIM = """
SELECT id, provider_event_id, type, canonical::text AS canonical FROM bank_events
 WHERE status = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"""

# a transition newer than the one the fact was tried against (not a clock: clocks can stand
# still in tests and step back on hosts)
_REQUEUE = """
UPDATE bank_events e SET status = 'pending'
 WHERE e.status = 'quarantined' AND e.retryable
   AND EXISTS (SELECT 1 FROM payment_events pe
                WHERE pe.payment_id = e.canonical ->> 'payment_id'
                  AND pe.id > coalesce(e.waiting_after, 0) AND pe.from_state <> pe.to_state)"""

_DONE = """
UPDATE bank_events SET status = $2, quarantine_reason = $3, retryable = $4,
       attempts = attempts + 1, processed_at = $5,
       waiting_after = CASE WHEN $4 THEN (SELECT max(id) FROM payment_events
                                            WHERE payment_id = canonical ->> 'payment_id')
                       END
 WHERE id = $1"""


_REFUSED = (asyncpg.IntegrityConstraintViolationError, asyncpg.RaiseError, asyncpg.DataError,
            KeyError, ValueError, TypeError)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch_size: int = 200
    poll_interval_s: float = 1.0
    outbox: OutboxConfig = field(default_factory=OutboxConfig)


async def requeue_bank_events(pool: asyncpg.Pool) -> int:
    result = await pool.execute(_REQUEUE)
    return int(result.split()[-1])


class PaymentsWorker:
    def __init__(self, pool: asyncpg.Pool, bank: BankClient, config: WorkerConfig,
                 metrics: PaymentMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._config = config
        self._metrics = metrics or PaymentMetrics()
        self._clock = clock
        self.outbox = Outbox(pool, bank, config.outbox, self._metrics, clock)
        self._wake = asyncio.Event()

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    async def apply_one(self) -> bool:
        """Claim and apply one stored bank event. False when none is pending."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM)
            if row is None:
                return False
            canonical = orjson.loads(row["canonical"]) if row["canonical"] else None
            now = self._now()
            try:
                async with conn.transaction():  # a savepoint: a refusal undoes only this event
                    done = await apply_bank_event(conn, row["provider_event_id"], canonical,
                                                  now)
            except _REFUSED as exc:
                # the ledger refused it (a guard, a constraint): park it for an operator rather
                # than retry a poison event forever
                done = Applied("quarantined", f"refused by the ledger: {type(exc).__name__}: "
                               f"{str(exc)[:200]}", kind=str(row["type"]))
            await conn.execute(_DONE, row["id"], done.status, done.reason, done.retryable, now)
        self._metrics.bank_events.labels(done.kind, done.status).inc()
        if done.status == "quarantined":
            log.warning("quarantined bank event %s (%s): %s", row["provider_event_id"],
                        row["type"], done.reason)
        return True

    async def run_once(self) -> int:
        """One pass: bank facts first (they may make outbox jobs moot), then due jobs, then
        put back waiting facts. Returns the amount of work done."""
        work = 0
        while work < self._config.batch_size and await self.apply_one():
            work += 1
        work += await self.outbox.run_due()
        requeued = await requeue_bank_events(self._pool)
        if requeued:
            self._metrics.bank_events_requeued.inc(requeued)
        return work + requeued

    async def drain(self, max_passes: int = 50) -> None:
        """Run until nothing is left that is due now (tests, and a clean shutdown)."""
        for _ in range(max_passes):
            if not await self.run_once():
                return

    async def run(self, stop: asyncio.Event) -> None:
        listener = await self._pool.acquire()
        await listener.add_listener("holdfast_payments", self._notified)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    busy = await self.run_once()
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                    log.error("payments worker lost PostgreSQL, retrying: %s",
                              type(exc).__name__)
                    busy = 0
                except Exception:
                    # never die silently beside the lifecycle consumer: log, wait, go on (a
                    # leased outbox job comes back after its lease)
                    log.exception("payments worker pass failed; retrying")
                    busy = 0
                if busy:
                    continue
                waiters = [asyncio.ensure_future(self._wake.wait()),
                           asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, timeout=self._config.poll_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            await listener.remove_listener("holdfast_payments", self._notified)
            await self._pool.release(listener)

    def _notified(self, *_: object) -> None:
        self._wake.set()
