"""benchmarks/pgstats.py against the real PostgreSQL: a checkpoint during a run is seen, and the
report flags the run it fell in."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg

from benchmarks import pgstats
from benchmarks.report import _checkpoint
from tests.conftest import PG_ADMIN_URL


async def test_a_checkpoint_between_two_samples_is_counted(database_url: str) -> None:
    name = database_url.rpartition("/")[2]
    table = f"bench_pgstats_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, pad text)")
        before = await pgstats.pg_sample(PG_ADMIN_URL, name)
        assert before is not None
        # dirty some buffers, then have them written by a checkpoint (CHECKPOINT waits for it)
        await conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', 200) "
                           "FROM generate_series(1, 2000) g")
        await conn.execute("CHECKPOINT")
        # a backend reports its commits at most once a second, when it goes idle
        for _ in range(50):
            after = await pgstats.pg_sample(PG_ADMIN_URL, name)
            assert after is not None
            if after.commits > before.commits:
                break
            await asyncio.sleep(0.1)
            await conn.execute("SELECT 1")
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    delta = pgstats.pg_delta(before, after)
    assert delta["checkpoint_buffers"] > 0
    assert delta["checkpoint_sync_ms"] >= 0
    assert delta["wal_bytes_per_commit"] > 0
    assert any("a checkpoint wrote" in flag for flag in _checkpoint(delta))


def test_checkpoint_flags() -> None:
    assert _checkpoint({}) == []
    assert _checkpoint({"checkpoint_buffers": 0, "checkpoint_sync_ms": 0.0}) == []
    assert _checkpoint({"checkpoint_buffers": 1234, "checkpoint_sync_ms": 56.4}) == [
        "a checkpoint wrote 1,234 buffers", "a checkpoint's fsyncs took 56 ms"]
