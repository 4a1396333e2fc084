"""The expiry sweep: release holds past their window in bounded batches, each its own short
transaction (``hf_expire_holds``), so the hot path never waits long on an account lock.

It reads the due holds a window at a time (``window`` holds, oldest first) and cuts the window
into batches grouped by account: a batch then updates one ``accounts`` row per account in it
rather than one per hold, which is most of what a batch of holds spread over many accounts costs
PostgreSQL, and it locks fewer of the accounts the hot path is deciding on (see migration 0010
and benchmarks/README.md, "Expiry sweep")."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from clearing.metrics import ConsumerMetrics
from holds.db import Executor

__all__ = ["SweepResult", "sweep"]

_DUE = """
SELECT d.id FROM (SELECT h.id, h.account_id FROM holds h
                   WHERE h.state = 'open' AND h.expires_at <= $1
                   ORDER BY h.expires_at LIMIT $2) d
 ORDER BY d.account_id, d.id
"""


@dataclass(frozen=True, slots=True)
class SweepResult:
    batches: int
    holds: int
    amount_minor: int
    seconds: float


class _Pace:
    """Rest after each piece of work in proportion to its time (the duty cycle)."""

    def __init__(self, duty: float, pause_s: float) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self._factor = (1 - duty) / duty
        self._pause_s = pause_s

    async def rest_after(self, started: float, pause: bool) -> None:
        rest = (time.perf_counter() - started) * self._factor + (self._pause_s if pause else 0.0)
        if rest > 0:
            await asyncio.sleep(rest)


async def sweep(db: Executor, now: dt.datetime, batch_size: int = 1000,
                max_batches: int | None = None, pause_s: float = 0.0,
                metrics: ConsumerMetrics | None = None, duty: float = 1.0,
                window: int = 200_000) -> SweepResult:
    """Expire everything due at ``now`` (or ``max_batches`` batches of it).

    ``window`` due holds (at least a batch) are read at a time and expired in batches of
    ``batch_size`` in account order. ``duty`` (0 < duty <= 1) is the share of the time the
    sweep may work: after a read or a batch that took *t* it rests *t* x (1 - duty) / duty, so
    a backlog is cleared at a steady pace that leaves the hot path CPU, WAL and locks in
    between, and slows by itself when the machine is busy. ``pause_s`` adds a fixed rest after
    each batch. A window in which nothing could be expired (every hold taken by another sweeper
    or a lifecycle event meanwhile) ends the sweep; the next one finds what is left."""
    pace = _Pace(duty, pause_s)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    window = max(window, batch_size)
    started = time.perf_counter()
    batches = holds = amount = 0
    while max_batches is None or batches < max_batches:
        t0 = time.perf_counter()
        ids: list[str] = [r["id"] for r in await db.fetch(_DUE, now, window)]
        await pace.rest_after(t0, pause=False)
        expired_in_window = 0
        for i in range(0, len(ids), batch_size):
            if max_batches is not None and batches >= max_batches:
                break
            t0 = time.perf_counter()
            row = await db.fetchrow("SELECT * FROM hf_expire_holds($1, $2)",
                                    now, ids[i:i + batch_size])
            count, released = (row["holds_expired"], row["amount_released"]) if row else (0, 0)
            batches += 1
            holds += count
            amount += released
            expired_in_window += count
            if metrics is not None:
                metrics.sweep_seconds.observe(time.perf_counter() - t0)
                metrics.sweep_holds.inc(count)
                metrics.sweep_amount.inc(released)
            await pace.rest_after(t0, pause=True)
        if len(ids) < window or expired_in_window == 0:
            break
    if metrics is not None:
        metrics.sweep_last_run.set_to_current_time()
    return SweepResult(batches, holds, amount, time.perf_counter() - started)
