"""The expiry sweep: release holds past their window in bounded batches, each its own short
transaction (``hf_expire_holds``), so the hot path never waits long on an account lock.

It reads the due holds a window at a time (``window`` holds, oldest first) and cuts the window
into batches grouped by account: a batch then updates one ``accounts`` row per account in it
rather than one per hold, which is most of what a batch of holds spread over many accounts costs
PostgreSQL, and it locks fewer of the accounts the hot path is deciding on (see migration 0010
and benchmarks/README.md, "Expiry sweep"). The window is read in pages of ``_PAGE_ROWS`` (by
expiry, then id) and grouped as it comes, so no single step of the sweep, reading included,
holds a core for much longer than one batch does.

The sweep's session asks PostgreSQL to hand its writes to the disk as it goes
(``backend_flush_after``): it is the bulk writer that cycles the expired rows through the
buffer cache, and left to the kernel its dirty pages went out in bursts of ~350 MB every 30 s
that made the hot path's WAL flushes wait ~0.3 s (benchmarks/README.md, "Expiry sweep"). It
commits without waiting for the disk and compresses the full-page images in its WAL where the
role may (see ``_session``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from clearing.metrics import ConsumerMetrics
from holds.db import Conn, Executor

__all__ = ["SweepResult", "sweep"]

# one page of the due holds after ($2, $3) in (expiry, id) order; `expires_at >= $2` lets the
# partial index holds_open_expiry start at the page instead of at the oldest due hold
_DUE_PAGE = """
SELECT h.id, h.account_id, h.expires_at FROM holds h
 WHERE h.state = 'open' AND h.expires_at <= $1 AND h.expires_at >= $2
   AND (h.expires_at, h.id) > ($2, $3)
 ORDER BY h.expires_at, h.id LIMIT $4
"""
_PAGE_ROWS = 10_000
# PostgreSQL's largest: the sweep's backend asks the kernel to write back every 2 MB it writes
_FLUSH_AFTER = "2MB"
_FIRST = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
# fastest first; pglz is in every build
_WAL_COMPRESSION = ("lz4", "pglz")


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
    ``batch_size`` grouped by account. ``duty`` (0 < duty <= 1) is the share of the time the
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
    tally = _Tally()
    async with _session(db) as conn:
        while max_batches is None or tally.batches < max_batches:
            ids, full = await _window(conn, now, window, pace)
            expired = await _expire(conn, now, ids, batch_size, max_batches, pace, metrics, tally)
            if not full or expired == 0:
                break
    if metrics is not None:
        metrics.sweep_last_run.set_to_current_time()
    return SweepResult(tally.batches, tally.holds, tally.amount, time.perf_counter() - started)


@dataclass(slots=True)
class _Tally:
    batches: int = 0
    holds: int = 0
    amount: int = 0


@asynccontextmanager
async def _session(db: Executor) -> AsyncIterator[Conn]:
    """One connection for the whole sweep, writing back as it goes and compressing its
    full-page images where it may; put back as it was."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, _session(conn) as same:
            yield same
        return
    await db.execute(f"SET backend_flush_after = '{_FLUSH_AFTER}'")
    compressing = await _compress_wal(db)
    # The sweep's commits do not wait for their WAL to reach the disk: a crash forgets at most
    # the last few batches (wal_writer_delay x 3), whose holds are then still open and due and
    # the next sweep expires them. Nothing outside learns of an expiry before that, and a
    # decision that spends funds a batch released commits after it, so its own (synchronous)
    # commit makes the batch durable first. The sweep waits on the disk much less
    # (benchmarks/README.md, "Session 5").
    await db.execute("SET synchronous_commit = off")
    try:
        yield db
    finally:
        await db.execute("RESET backend_flush_after")
        await db.execute("RESET synchronous_commit")
        if compressing:
            await db.execute("RESET wal_compression")


async def _compress_wal(db: Conn) -> bool:
    """Compress the full-page images the sweep's WAL carries, which are most of it: the sweep
    is the first writer of each page of old holds since the last checkpoint. Every commit of the
    hot path flushes the WAL written before it, the sweep's included, so the sweep's WAL is
    what slows the hot path most while it runs (benchmarks/README.md, "Session 5": lz4 took
    ~40 % off the sweep's WAL for ~2 us of CPU per hold). Only where this role may change the
    setting (a superuser, or ``GRANT SET ON PARAMETER wal_compression``) and the server has a
    compressor; a server that compresses all its WAL already needs nothing."""
    if await db.fetchval("SHOW wal_compression") != "off":
        return False
    for method in _WAL_COMPRESSION:
        try:
            await db.execute(f"SET wal_compression = {method}")
        except asyncpg.InsufficientPrivilegeError:
            return False
        except (asyncpg.InvalidParameterValueError, asyncpg.FeatureNotSupportedError):
            continue  # built without this compressor
        return True
    return False


async def _expire(conn: Conn, now: dt.datetime, ids: list[str], batch_size: int,
                  max_batches: int | None, pace: _Pace, metrics: ConsumerMetrics | None,
                  tally: _Tally) -> int:
    """Expire a window's holds in batches (each its own transaction); how many it expired."""
    expired = 0
    for i in range(0, len(ids), batch_size):
        if max_batches is not None and tally.batches >= max_batches:
            break
        t0 = time.perf_counter()
        row = await conn.fetchrow("SELECT * FROM hf_expire_holds($1, $2)",
                                  now, ids[i:i + batch_size])
        count, released = (row["holds_expired"], row["amount_released"]) if row else (0, 0)
        tally.batches += 1
        tally.holds += count
        tally.amount += released
        expired += count
        if metrics is not None:
            metrics.sweep_seconds.observe(time.perf_counter() - t0)
            metrics.sweep_holds.inc(count)
            metrics.sweep_amount.inc(released)
        await pace.rest_after(t0, pause=True)
    return expired


async def _window(db: Conn, now: dt.datetime, window: int, pace: _Pace
                  ) -> tuple[list[str], bool]:
    """Up to ``window`` due holds, oldest first, read a page at a time (resting after each as
    after a batch) and returned grouped by account; True when the window filled up (more may
    be due)."""
    by_account: dict[str, list[str]] = {}
    after: tuple[dt.datetime, str] = (_FIRST, "")
    taken = 0
    while taken < window:
        t0 = time.perf_counter()
        want = min(_PAGE_ROWS, window - taken)
        rows = await db.fetch(_DUE_PAGE, now, after[0], after[1], want)
        for r in rows:
            by_account.setdefault(r["account_id"], []).append(r["id"])
        taken += len(rows)
        await pace.rest_after(t0, pause=False)
        if len(rows) < want:
            break
        after = (rows[-1]["expires_at"], rows[-1]["id"])
    return [i for held in by_account.values() for i in held], taken >= window
