"""PostgreSQL alone: what a batch of authorisations costs in each of the ledger's batch functions.

    .venv/bin/python -m benchmarks.ledger_batch [--cards 10000] [--sizes 1,2,4,8,16,32,64]

One connection calls ``hf_authorize_batch`` (migration 0015: decided in memory, one statement
per table; sent as the server sends it, one array of records, migration 0016) and
``hf_authorize_batch_each`` (0007's loop of ``hf_authorize``) with batches of
fresh authorisations over the benchmark's card universe (``benchmarks.traffic``), alternating
A-B-B-A by round so the two share the machine's drift; batches of one also go to
``hf_authorize``, which is what the server sends a lone request to. It prints, per batch size,
each function's wall time and its backend's CPU time (user + system, from /proc: the WAL flush
the commit waits for is partly the backend's own system time) per authorisation, the median of
the rounds, and the ratio set / loop. No server, no Redis: the other half of an authorisation's
cost is in ``make bench``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from benchmarks import dataset, harness, procstat
from benchmarks.traffic import profile
from holds import ledger

__all__ = ["ALONE", "LOOP", "SET", "Items", "Measurement", "call", "main", "measure"]

_BATCH = (
    "SELECT idx, status, authorization_id, decision, approved_amount, reason, stand_in, counted"
    " FROM {fn}($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb[],$13,$14,$15,$16,$17,$18,$19,"
    "$20,$21,$22,$23)")
_SINGLE = (
    "SELECT status, authorization_id, decision, approved_amount, reason, stand_in, counted FROM "
    "hf_authorize($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb,$13,$14,$15,$16,$17,$18,$19,$20,"
    "$21,$22,$23)")
LOOP, SET, ALONE = "hf_authorize_batch_each", "hf_authorize_batch", "hf_authorize"
_CAP = 10_000


class Items:
    def __init__(self, cards: int) -> None:
        self._profiles = [profile(i) for i in range(cards)]
        self._next = 0

    def batch(self, n: int) -> list[ledger.AuthorizeItem]:
        now = dt.datetime.now(dt.UTC)
        items = []
        for _ in range(n):
            # consecutive cards, cycling: a batch's requests draw on different accounts, as
            # requests from many cardholders do
            p = self._profiles[self._next % len(self._profiles)]
            self._next += 7919  # a prime: every card in turn, neighbours far apart
            rid = uuid.uuid4().hex
            items.append(ledger.AuthorizeItem(
                "native", rid, 0, f"native:{rid}", None, p.card_id, 1_250, p.currency, False,
                None, 1, '{"count_1h": 1}', f"h-{rid}", now, now + dt.timedelta(days=7),
                "m-bench", "Bench Grocer", "5411", "GB", "pos", False, True))
        return items


async def call(conn: asyncpg.Connection[Any], fn: str, items: Sequence[ledger.AuthorizeItem]
                ) -> int:
    """Send one batch; the number of approvals."""
    if fn == ALONE:
        row = await conn.fetchrow(_SINGLE, *items[0][:21], _CAP, items[0].counted)
        assert row is not None
        return 1 if row["decision"] == "approve" else 0
    if fn == SET:  # as the server sends it: one array of records (migration 0016)
        rows = await conn.fetch(ledger.AUTHORIZE_BATCH_SQL, items, _CAP)
    else:
        columns: list[Any] = [list(c) for c in zip(*items, strict=True)]
        rows = await conn.fetch(_BATCH.format(fn=fn), *columns[:21], _CAP, columns[21])
    return sum(1 for r in rows if r["decision"] == "approve")


class Measurement(NamedTuple):
    """One measurement, per authorisation."""

    wall_us: float
    cpu_us: float  # the backend's user + system time
    wal_bytes: float  # pg_current_wal_lsn before and after: anything else writing counts too
    approved: float  # the share approved


async def measure(conn: asyncpg.Connection[Any], pid: int, fn: str, items: Items, n: int,
                  calls: int) -> Measurement:
    """``calls`` batches of ``n`` fresh authorisations through ``fn`` on ``conn`` (backend
    ``pid``)."""
    batches = [items.batch(n) for _ in range(calls)]
    lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
    cpu0 = procstat.process_cpu_seconds(pid)
    t0 = time.perf_counter()
    approved = 0
    for batch in batches:
        approved += await call(conn, fn, batch)
    wall = time.perf_counter() - t0
    cpu1 = procstat.process_cpu_seconds(pid)
    wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn0)
    cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else float("nan")
    total = calls * n
    return Measurement(wall / total * 1e6, cpu / total * 1e6, float(wal) / total,
                       approved / total)


async def _run(args: argparse.Namespace) -> int:
    name = f"holdfast_bench_ledger_{os.getpid()}"
    url = harness.db_url(args.pg, name)
    await dataset.create_database(args.pg, url, name)
    try:
        await dataset.seed(url, args.cards)
        items = Items(args.cards)
        conn = await asyncpg.connect(url)
        try:
            # a ledger with some history, analysed as autovacuum would, before plans are made
            for _ in range(args.history // 32):
                await call(conn, LOOP, items.batch(32))
        finally:
            await conn.close()
        await dataset.vacuum_analyze(url)

        conn = await asyncpg.connect(url)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            for fn in (SET, LOOP, ALONE):
                for n in (1, 8):
                    if fn != ALONE or n == 1:
                        await measure(conn, pid, fn, items, n, 30)
            print(f"# ledger batch functions, {args.cards:,} cards, {args.rounds} rounds "
                  f"A-B-B-A, ~{args.per_point:,} authorisations per point (median of rounds)\n")
            print("| batch | loop wall us | loop CPU us | set wall us | set CPU us "
                  "| set/loop CPU | approved |")
            print("|---:|---:|---:|---:|---:|---:|---:|")
            for n in args.sizes:
                calls = max(args.per_point // n, 20)
                fns = (LOOP, SET, ALONE) if n == 1 else (LOOP, SET)
                got: dict[str, list[Measurement]] = {f: [] for f in fns}
                for r in range(args.rounds):
                    order = fns if r % 2 == 0 else tuple(reversed(fns))
                    for fn in order:
                        got[fn].append(await measure(conn, pid, fn, items, n, calls))
                med = {f: (statistics.median(v.wall_us for v in got[f]),
                           statistics.median(v.cpu_us for v in got[f]),
                           min(v.approved for v in got[f])) for f in fns}
                print(f"| {n} | {med[LOOP][0]:.0f} | {med[LOOP][1]:.0f} | {med[SET][0]:.0f} "
                      f"| {med[SET][1]:.0f} | {med[SET][1] / med[LOOP][1]:.2f} "
                      f"| {min(m[2] for m in med.values()):.0%} |", flush=True)
                if n == 1:
                    print(f"| 1 (hf_authorize) | | | {med[ALONE][0]:.0f} | {med[ALONE][1]:.0f} "
                          f"| {med[ALONE][1] / med[LOOP][1]:.2f} | |", flush=True)
        finally:
            await conn.close()
        report, _counts = await dataset.verify_ledger(url)
        if not report.ok:
            print(report.render())
            return 1
        print("\nholdfast verify: clean")
        return 0
    finally:
        await dataset.drop_database(args.pg, name)


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (any database: the benchmark creates its own)")
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--per-point", type=int, default=2_000,
                        help="authorisations per measurement")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--history", type=int, default=50_000,
                        help="authorisations recorded before anything is measured")
    args = parser.parse_args(argv)
    return uvloop.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
