"""The expiry sweep: release holds past their window in bounded batches, each its own short
transaction (``hf_expire_holds``), so the hot path never waits long on an account lock.

It reads the due holds a window at a time (``window`` holds, oldest first) and cuts the window
into batches grouped by account: a batch then updates one ``accounts`` row per account in it
rather than one per hold, which is most of what a batch of holds spread over many accounts costs
PostgreSQL, and it locks fewer of the accounts the hot path is deciding on (see migration 0010
and benchmarks/README.md, "Expiry sweep"), and its accounts in id order (fewer of their pages).
The window is read in pages of ``_PAGE_ROWS`` (by expiry, then id), so no single step of the
sweep, reading included, holds a core for much longer than one batch does.

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
from itertools import chain

import asyncpg

from clearing.metrics import ConsumerMetrics
from holds.db import Conn, Executor

__all__ = ["SweepResult", "sweep"]

# one page of the due holds after ($2, $3) in (expiry, id) order, as two arrays (one aggregate
# pass fills both, so they stay aligned) and the page's last (expiry, id); no row when none is
# due. `expires_at >= $2` lets the index holds_expiry (every hold's expiry, closed ones too)
# start at the page.
_DUE_PAGE = """
WITH page AS MATERIALIZED (
    SELECT h.id, h.account_id, h.expires_at FROM holds h
     WHERE h.state = 'open' AND h.expires_at <= $1 AND h.expires_at >= $2
       AND (h.expires_at, h.id) > ($2, $3)
     ORDER BY h.expires_at, h.id LIMIT $4)
SELECT g.accounts, g.ids, l.expires_at, l.id
  FROM (SELECT array_agg(p.account_id) AS accounts, array_agg(p.id) AS ids FROM page p) g,
       (SELECT p.expires_at, p.id FROM page p ORDER BY p.expires_at DESC, p.id DESC LIMIT 1) l
"""
# a pass begins: below the mark no hold is open; FOR UPDATE waits for the writers placing a
# hold that expires within a day (migration 0012) to commit; later ones expire after it
_MARK_AT_START = """
SELECT swept_to, clock_timestamp() AS began FROM hold_expiry_mark FOR UPDATE
"""
_RAISE_MARK = """
UPDATE hold_expiry_mark SET swept_to = greatest(swept_to, $1)
"""
# the soonest expiry among a batch's holds still open after it (locked by another writer)
_LEFT_OPEN = """
SELECT min(expires_at) FROM holds WHERE id = ANY ($1::text[]) AND state = 'open'
"""
_PAGE_ROWS = 10_000
# PostgreSQL's largest: the sweep's backend asks the kernel to write back every 2 MB it writes
_FLUSH_AFTER = "2MB"
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


async def sweep(db: Executor, now: dt.datetime, batch_size: int = 200,
                max_batches: int | None = None, pause_s: float = 0.0,
                metrics: ConsumerMetrics | None = None, duty: float = 1.0,
                window: int = 100_000) -> SweepResult:
    """Expire everything due at ``now`` (or ``max_batches`` batches of it).

    ``window`` due holds (at least a batch) are read at a time and expired in batches of
    ``batch_size`` grouped by account. ``duty`` (0 < duty <= 1) is the share of the time the
    sweep may work: after a read or a batch that took *t* it rests *t* x (1 - duty) / duty, so
    a backlog is cleared at a steady pace that leaves the hot path CPU, WAL and locks in
    between, and slows by itself when the machine is busy. ``pause_s`` adds a fixed rest after
    each batch.

    The sweep reads from the low-water mark (``hold_expiry_mark``: no hold below it is open)
    up to ``now``, once, and raises the mark after each window it finishes and at the end (see
    ``_raise_mark``). A hold another writer holds meanwhile is left to it, and the mark stays
    at or below its expiry, so the next sweep reads it again."""
    pace = _Pace(duty, pause_s)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    window = max(window, batch_size)
    started = time.perf_counter()
    tally = _Tally()
    async with _session(db) as conn:
        mark, began = await _begin_pass(conn)
        cursor = _Cursor(mark, "")
        complete = False
        while max_batches is None or tally.batches < max_batches:
            ids, full = await _window(conn, now, window, pace, cursor)
            finished = await _expire(conn, now, ids, batch_size, max_batches, pace, metrics,
                                     tally)
            if not full:
                complete = finished
                break
            if finished:  # every hold due up to the cursor is expired now, or left open
                await _raise_mark(conn, cursor.expires_at, began, tally.left_open)
        if complete:
            await _raise_mark(conn, now, began, tally.left_open)
    if metrics is not None:
        metrics.sweep_last_run.set_to_current_time()
    return SweepResult(tally.batches, tally.holds, tally.amount, time.perf_counter() - started)


@dataclass(slots=True)
class _Tally:
    batches: int = 0
    holds: int = 0
    amount: int = 0
    left_open: dt.datetime | None = None  # the soonest expiry of a due hold left open


@dataclass(slots=True)
class _Cursor:
    """Where the pass has read to, in (expiry, id) order."""

    expires_at: dt.datetime
    id: str


async def _begin_pass(conn: Conn) -> tuple[dt.datetime, dt.datetime]:
    """The mark, and the database's clock once every writer placing a soon-due hold before
    now has committed (a short transaction of its own)."""
    async with conn.transaction():
        row = await conn.fetchrow(_MARK_AT_START)
    if row is None:
        raise RuntimeError("hold_expiry_mark has no row: run holdfast migrate")
    mark: dt.datetime = row["swept_to"]
    began: dt.datetime = row["began"]
    return mark, began


async def _raise_mark(conn: Conn, upto: dt.datetime, began: dt.datetime,
                      left_open: dt.datetime | None) -> None:
    """Raise the mark to what the pass has proved closed: every hold due up to ``upto`` it has
    read (``now`` once the pass is complete; the cursor after each window it finished, so the
    sweep's lag and the open-holds count start near its work rather than where it began). Not
    past the clock when the pass began (a soon-due hold placed since expires after it,
    migration 0012), nor past a due hold left open (another writer had it). The mark never
    moves back."""
    mark = min(upto, began) if left_open is None else min(upto, began, left_open)
    await conn.execute(_RAISE_MARK, mark)


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
    is the first writer of each page of old holds since the last checkpoint, and every commit
    of the hot path flushes the WAL written before it, the sweep's included
    (benchmarks/README.md, "Session 5": lz4 took ~40 % off the sweep's WAL for ~2 us of CPU per
    hold; on its own it did not lower the hot path's p99 measurably). Only where this role may
    change the setting (a superuser, or ``GRANT SET ON PARAMETER wal_compression``) and the
    server has a compressor; a server that compresses all its WAL already needs nothing."""
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
                  tally: _Tally) -> bool:
    """Expire a window's holds in batches (each its own transaction); False when
    ``max_batches`` stopped it before the end."""
    for i in range(0, len(ids), batch_size):
        if max_batches is not None and tally.batches >= max_batches:
            return False
        t0 = time.perf_counter()
        batch = ids[i:i + batch_size]
        row = await conn.fetchrow("SELECT * FROM hf_expire_holds($1, $2)", now, batch)
        count, released = (row["holds_expired"], row["amount_released"]) if row else (0, 0)
        if count < len(batch):  # closed meanwhile, or another writer has it: which?
            soonest = await conn.fetchval(_LEFT_OPEN, batch)
            if soonest is not None and (tally.left_open is None or soonest < tally.left_open):
                tally.left_open = soonest
        tally.batches += 1
        tally.holds += count
        tally.amount += released
        if metrics is not None:
            metrics.sweep_seconds.observe(time.perf_counter() - t0)
            metrics.sweep_holds.inc(count)
            metrics.sweep_amount.inc(released)
        await pace.rest_after(t0, pause=True)
    return True


async def _window(db: Conn, now: dt.datetime, window: int, pace: _Pace, cursor: _Cursor
                  ) -> tuple[list[str], bool]:
    """Up to ``window`` due holds after ``cursor`` (moved past them), read a page at a time
    (resting after each as after a batch) and returned grouped by account, the accounts in id
    order (a batch's accounts then sit on fewer pages of their table); True when the window
    filled up (more may be due). The rows arrive as two arrays (no record per row) and are
    grouped in one pass (benchmarks/README.md, "Session 6")."""
    accounts: list[str] = []
    ids: list[str] = []
    while len(ids) < window:
        t0 = time.perf_counter()
        want = min(_PAGE_ROWS, window - len(ids))
        page = await db.fetchrow(_DUE_PAGE, now, cursor.expires_at, cursor.id, want)
        got = 0
        if page is not None:
            accounts.extend(page["accounts"])
            ids.extend(page["ids"])
            got = len(page["ids"])
            cursor.expires_at, cursor.id = page["expires_at"], page["id"]
        await pace.rest_after(t0, pause=False)
        if got < want:
            break
    by_account: dict[str, list[str]] = {}
    for account, hold in zip(accounts, ids, strict=True):
        held = by_account.get(account)
        if held is None:
            by_account[account] = [hold]
        else:
            held.append(hold)
    return (list(chain.from_iterable(by_account[a] for a in sorted(by_account))),
            len(ids) >= window)
