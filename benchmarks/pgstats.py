"""What PostgreSQL did during a run, from its cumulative statistics: the commits of the benchmark
database, the commits of every *other* database (a shared server's other work, which competes
for the same WAL and fsyncs), the WAL written by the whole cluster, and the checkpointer's work
(a checkpoint's writes, and its closing fsyncs, share the disk with every commit's WAL flush: a
run they fall in is not a run like the others)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

__all__ = ["PgSample", "pg_delta", "pg_sample"]


@dataclass(frozen=True, slots=True)
class PgSample:
    at: float
    commits: int  # the benchmark database
    other_commits: dict[str, int]  # every other database (they come and go: compare by name)
    wal_bytes: int  # the cluster
    wal_fpi: int  # full-page images in the WAL (the cluster)
    checkpoint_buffers: int = 0  # buffers a checkpoint wrote (pg_stat_bgwriter)
    checkpoint_sync_ms: float = 0.0  # time checkpoints spent in their closing fsyncs


async def pg_sample(admin_url: str, db_name: str) -> PgSample | None:
    try:
        conn = await asyncpg.connect(admin_url)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        # the statistics snapshot is per transaction by default: clear it so this read is fresh
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        commits = {r["datname"]: r["xact_commit"] for r in await conn.fetch(
            "SELECT datname, xact_commit FROM pg_stat_database WHERE datname IS NOT NULL")}
        wal = await conn.fetchrow("SELECT wal_bytes::bigint AS bytes, wal_fpi FROM pg_stat_wal")
        checkpoints = await _checkpointer(conn)
    except asyncpg.PostgresError:  # pg_stat_wal is PostgreSQL 14+
        return None
    finally:
        await conn.close()
    if wal is None or db_name not in commits:
        return None
    ours = commits.pop(db_name)
    return PgSample(time.monotonic(), ours, commits, wal["bytes"], wal["wal_fpi"], *checkpoints)


async def _checkpointer(conn: asyncpg.Connection) -> tuple[int, float]:
    """Buffers checkpoints wrote and ms they spent in fsyncs, so far: PostgreSQL 17 moved them
    from ``pg_stat_bgwriter`` to ``pg_stat_checkpointer``; (0, 0.0) where neither says."""
    for sql in ("SELECT buffers_written AS b, sync_time AS s FROM pg_stat_checkpointer",
                "SELECT buffers_checkpoint AS b, checkpoint_sync_time AS s FROM pg_stat_bgwriter"):
        try:
            row = await conn.fetchrow(sql)
        except asyncpg.PostgresError:
            continue
        if row is not None:
            return int(row["b"]), float(row["s"])
    return 0, 0.0


def pg_delta(before: PgSample | None, after: PgSample | None) -> dict[str, float]:
    """Per second and per commit of the benchmark database, between two samples; the
    checkpointer's work as totals over the run."""
    if before is None or after is None or after.commits <= before.commits:
        return {}
    seconds = after.at - before.at
    ours = after.commits - before.commits
    # a database created meanwhile counts from zero; one dropped meanwhile is lost
    others = sum(max(0, n - before.other_commits.get(name, 0))
                 for name, n in after.other_commits.items())
    return {
        "other_commits_per_s": others / seconds,
        "wal_bytes_per_commit": (after.wal_bytes - before.wal_bytes) / ours,
        "wal_fpi_per_commit": (after.wal_fpi - before.wal_fpi) / ours,
        "checkpoint_buffers": after.checkpoint_buffers - before.checkpoint_buffers,
        "checkpoint_sync_ms": after.checkpoint_sync_ms - before.checkpoint_sync_ms,
    }
