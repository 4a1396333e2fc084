"""The expiry sweep: release holds past their window in bounded batches (``hf_expire``), each its
own short transaction, so the hot path never waits long on an account lock."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from clearing.metrics import ConsumerMetrics
from holds.db import Executor

__all__ = ["SweepResult", "sweep"]


@dataclass(frozen=True, slots=True)
class SweepResult:
    batches: int
    holds: int
    amount_minor: int
    seconds: float


async def sweep(db: Executor, now: dt.datetime, batch_size: int = 1000,
                max_batches: int | None = None, pause_s: float = 0.0,
                metrics: ConsumerMetrics | None = None, duty: float = 1.0) -> SweepResult:
    """Expire everything due at ``now`` (or ``max_batches`` batches of it).

    ``duty`` (0 < duty <= 1) is the share of the time the sweep may work: after a batch that
    took *t* it rests *t* x (1 - duty) / duty, so a backlog is cleared at a steady pace that
    leaves the hot path CPU, WAL and locks in between, and slows by itself when the machine is
    busy (batches take longer, rests too). ``pause_s`` adds a fixed rest."""
    if not 0 < duty <= 1:
        raise ValueError("duty must be in (0, 1]")
    started = time.perf_counter()
    batches = holds = amount = 0
    while max_batches is None or batches < max_batches:
        t0 = time.perf_counter()
        row = await db.fetchrow("SELECT * FROM hf_expire($1, $2)", now, batch_size)
        if row is None or row["holds_expired"] == 0:
            break
        batches += 1
        holds += row["holds_expired"]
        amount += row["amount_released"]
        if metrics is not None:
            metrics.sweep_seconds.observe(time.perf_counter() - t0)
            metrics.sweep_holds.inc(row["holds_expired"])
            metrics.sweep_amount.inc(row["amount_released"])
        rest = pause_s + (time.perf_counter() - t0) * (1 - duty) / duty
        if rest > 0:
            await asyncio.sleep(rest)
    if metrics is not None:
        metrics.sweep_last_run.set_to_current_time()
    return SweepResult(batches, holds, amount, time.perf_counter() - started)
