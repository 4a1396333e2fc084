"""The payments outbox: work for the bank written in the same transaction as the state that
needs it, carried out here. A job is claimed with ``FOR UPDATE SKIP LOCKED`` and leased (its
next attempt moved past the call's timeout) so no transaction stays open across an HTTP call
and a crashed worker's job comes back by itself. The bank's answer and the job's completion are
committed together.

- ``payee_check``: ask the bank, apply its answer by the CoP policy.
- ``submit``: send the payment with ``Idempotency-Key: <payment id>``. An acknowledgement moves
  it to ``submitted``; a definitive refusal (4xx) to ``rejected`` (hold released); a timeout or
  5xx leaves it ``queued``, its hold in place, and retries with the same key after a back-off.
  The bank answers a retried key with the payment the first attempt made: never a second one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import asyncpg

from clearing.payments.bank import BankClient, BankRefused, BankUnavailable
from clearing.payments.cop import record_payee_check
from clearing.payments.facts import Fact, PaymentMismatch, apply_fact
from clearing.payments.metrics import PaymentMetrics
from clearing.payments.model import Beneficiary
from clearing.payments.states import IllegalPaymentTransition
from holds.db import Conn

__all__ = ["Job", "Outbox", "OutboxConfig"]

log = logging.getLogger("holdfast.payments.outbox")

_CLAIM: Final = """
WITH due AS (
    SELECT id FROM payment_outbox
     WHERE status = 'pending' AND {when}
     ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE payment_outbox o
   SET attempts = o.attempts + 1, next_attempt_at = $1 + make_interval(secs => $3)
  FROM due WHERE o.id = due.id
RETURNING o.id, o.payment_id, o.kind, o.attempts"""

_PAYMENT: Final = """
SELECT status, amount, currency, beneficiary_name, sort_code, account_number, iban, reference
  FROM payments WHERE id = $1"""


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    batch_size: int = 20
    # longer than any bank call, so a job is never run twice at once
    lease_s: float = 30.0
    # how long a new payment's payee check is left to the API request that created it
    inline_grace_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    payment_id: str
    kind: str
    attempts: int


def backoff_s(config: OutboxConfig, attempts: int) -> float:
    """Exponential, capped: 1, 2, 4, ... seconds after the 1st, 2nd, 3rd failed attempt."""
    return float(min(config.backoff_max_s, config.backoff_base_s * 2 ** max(0, attempts - 1)))


class Outbox:
    def __init__(self, pool: asyncpg.Pool, bank: BankClient, config: OutboxConfig,
                 metrics: PaymentMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._bank = bank
        self.config = config
        self._metrics = metrics or PaymentMetrics()
        self._clock = clock

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    async def _claim(self, limit: int, payment_id: str | None = None,
                     kind: str | None = None) -> list[Job]:
        # a job never tried is the API's to run inline, whenever it is due for the worker
        where = ("next_attempt_at <= $1" if payment_id is None else
                 "(next_attempt_at <= $1 OR attempts = 0) AND payment_id = $4 AND kind = $5")
        args: list[object] = [self._now(), limit, self.config.lease_s]
        if payment_id is not None:
            args += [payment_id, kind]
        rows = await self._pool.fetch(_CLAIM.format(when=where), *args)
        return [Job(r["id"], r["payment_id"], r["kind"], r["attempts"]) for r in rows]

    async def run_due(self) -> int:
        """Carry out up to a batch of due jobs; returns how many were attempted."""
        jobs = await self._claim(self.config.batch_size)
        for job in jobs:
            await self.run(job)
        return len(jobs)

    async def run_for(self, payment_id: str, kind: str) -> bool:
        """Carry out a payment's due job of this kind now, unless a worker holds it (the API's
        inline payee check). True if one was run."""
        jobs = await self._claim(1, payment_id, kind)
        for job in jobs:
            await self.run(job)
        return bool(jobs)

    async def run(self, job: Job) -> None:
        row = await self._pool.fetchrow(_PAYMENT, job.payment_id)
        if row is None:
            raise RuntimeError(f"outbox job {job.id} for a missing payment")
        wanted = "checking_payee" if job.kind == "payee_check" else "queued"
        if row["status"] != wanted:
            # already past this step (e.g. the bank's webhook overtook a lost answer)
            await self._finish(job, None)
            return
        beneficiary = Beneficiary(row["beneficiary_name"], row["sort_code"],
                                  row["account_number"], row["iban"])
        try:
            if job.kind == "payee_check":
                await self._payee_check(job, beneficiary)
            else:
                await self._submit(job, row, beneficiary)
        except BankUnavailable as exc:
            await self._retry(job, str(exc))

    async def _payee_check(self, job: Job, beneficiary: Beneficiary) -> None:
        try:
            check = await self._bank.check_payee(beneficiary)
            result, name = check.result, check.name
        except BankRefused as exc:
            # the bank cannot check this payee: the customer decides (the policy's rule)
            result, name = "unavailable", None
            log.warning("payee check for %s refused: %s", job.payment_id, exc.code)
        self._metrics.payee_checks.labels(result).inc()

        async def apply(conn: Conn, now: dt.datetime) -> None:
            await record_payee_check(conn, job.payment_id, result, name, now)

        await self._finish(job, apply)

    async def _submit(self, job: Job, row: asyncpg.Record, beneficiary: Beneficiary) -> None:
        started = time.perf_counter()
        try:
            sent = await self._bank.submit(job.payment_id, row["amount"], row["currency"],
                                           beneficiary, row["reference"])
        except BankRefused as exc:
            self._metrics.submissions.labels("refused").inc()
            if exc.status == 409:  # our key with another body: never guess, park for a human
                await self._park(job, f"bank answered 409 {exc.code}")
                return
            fact = Fact("rejected", "outbox", reason=exc.code, detail=f"submission {exc.status}")
        else:
            self._metrics.submissions.labels("duplicate" if sent.duplicate else "ok").inc()
            fact = Fact("submitted", "outbox", bank_payment_id=sent.bank_payment_id)
        finally:
            self._metrics.submission_seconds.observe(time.perf_counter() - started)

        async def apply(conn: Conn, now: dt.datetime) -> None:
            await apply_fact(conn, job.payment_id, fact, now)

        await self._finish(job, apply)

    async def _finish(self, job: Job,
                      apply: Callable[[Conn, dt.datetime], Awaitable[None]] | None) -> None:
        now = self._now()
        async with self._pool.acquire() as conn, conn.transaction():
            if apply is not None:
                try:
                    async with conn.transaction():
                        await apply(conn, now)
                except IllegalPaymentTransition as exc:
                    # the payment moved on meanwhile (a bank fact overtook us): nothing to do
                    log.info("outbox %s for %s: %s", job.kind, job.payment_id, exc)
                except PaymentMismatch as exc:
                    # the bank's answer disagrees with what it told us before: a human decides
                    await conn.execute(
                        "UPDATE payment_outbox SET status = 'failed', last_error = $2"
                        " WHERE id = $1", job.id, f"mismatch: {exc}"[:200])
                    log.error("outbox %s for %s parked: %s", job.kind, job.payment_id, exc)
                    return
            await conn.execute(
                "UPDATE payment_outbox SET status = 'done', done_at = $2, last_error = NULL"
                " WHERE id = $1", job.id, now)

    async def _retry(self, job: Job, error: str) -> None:
        self._metrics.outbox_retries.labels(job.kind).inc()
        delay = backoff_s(self.config, job.attempts)
        log.warning("outbox %s for %s failed (attempt %s, next in %.0f s): %s", job.kind,
                    job.payment_id, job.attempts, delay, error)
        await self._pool.execute(
            "UPDATE payment_outbox SET next_attempt_at = $2, last_error = $3 WHERE id = $1",
            job.id, self._now() + dt.timedelta(seconds=delay), error[:200])

    async def _park(self, job: Job, error: str) -> None:
        log.error("outbox %s for %s parked: %s", job.kind, job.payment_id, error)
        await self._pool.execute(
            "UPDATE payment_outbox SET status = 'failed', last_error = $2 WHERE id = $1",
            job.id, error[:200])
