"""PostgreSQL alone: the ledger call on today's schema against the schema as of an earlier
migration, side by side.

    .venv/bin/python -m benchmarks.ledger_schema [--through 0016] [--rounds 6]

Two databases of their own, one migrated through ``--through`` (an earlier release's schema
and functions) and one fully, get the same cards (``benchmarks.traffic``) and the same history,
are analysed as autovacuum would, and then take the same calls, alternating A-B-B-A by round so
they share the machine's drift: lone requests through ``hf_authorize`` (what the server sends a
request that is alone) and batches through ``hf_authorize_batch`` (one array of records, as the
server sends them). It prints, per call, the median of the rounds of each database's wall time,
its backend's CPU time (user + system, from /proc: the WAL flush the commit waits for is partly
the backend's own system time) and the WAL written (``pg_current_wal_lsn`` before and after,
so anything else writing meanwhile counts too) per authorisation, and the ratios; then what
each database's authorisation tables take on disk per authorisation. No server, no Redis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg

from benchmarks import dataset, harness
from benchmarks.ledger_batch import ALONE, SET, Items, Measurement, call, measure
from holds.migrate import available

__all__ = ["main"]


async def _run(args: argparse.Namespace) -> int:
    tag = os.getpid()
    names = {"before": f"holdfast_bench_schema_{tag}_a", "after": f"holdfast_bench_schema_{tag}_b"}
    urls = {k: harness.db_url(args.pg, v) for k, v in names.items()}
    conns: dict[str, asyncpg.Connection[Any]] = {}
    try:
        for k, name in names.items():
            await dataset.create_database(args.pg, urls[k], name,
                                          args.through if k == "before" else None)
            await dataset.seed(urls[k], args.cards)
        items = {k: Items(args.cards) for k in names}
        for k in names:
            conn = await asyncpg.connect(urls[k])
            try:
                for _ in range(args.history // 32):
                    await call(conn, SET, items[k].batch(32))
            finally:
                await conn.close()
            await dataset.vacuum_analyze(urls[k])
        for k in names:
            conns[k] = await asyncpg.connect(urls[k])
        pids = {k: await c.fetchval("SELECT pg_backend_pid()") for k, c in conns.items()}
        calls = [(ALONE, 1)] + [(SET, n) for n in args.sizes]
        for k in names:  # plans made, caches warm
            for fn, n in calls:
                await measure(conns[k], pids[k], fn, items[k], n, 30)

        print(f"# the ledger call: schema through {args.through} (before) against today's "
              f"({available()[-1].version}, after); {args.cards:,} cards, {args.rounds} rounds "
              f"A-B-B-A, ~{args.per_point:,} authorisations per point (median of rounds)\n")
        print("| call | before wall us | before CPU us | before WAL B | after wall us "
              "| after CPU us | after WAL B | after/before wall | CPU | WAL | approved |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for fn, n in calls:
            per = max(args.per_point // n, 20)
            got: dict[str, list[Measurement]] = {k: [] for k in names}
            for r in range(args.rounds):
                for k in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    got[k].append(await measure(conns[k], pids[k], fn, items[k], n, per))
            med = {k: [statistics.median(v[i] for v in got[k]) for i in range(3)]
                   for k in names}  # wall, CPU, WAL
            b, a = med["before"], med["after"]
            share = min(v.approved for k in names for v in got[k])
            label = "1 alone (hf_authorize)" if fn == ALONE else f"batch of {n}"
            print(f"| {label} | {b[0]:.0f} | {b[1]:.0f} | {b[2]:.0f} | {a[0]:.0f} | {a[1]:.0f} "
                  f"| {a[2]:.0f} | {a[0] / b[0]:.2f} | {a[1] / b[1]:.2f} | {a[2] / b[2]:.2f} "
                  f"| {share:.0%} |", flush=True)
        print("\n| database | authorisations | requests | bytes per authorisation (heap + indexes"
              " of the tables holding them) |")
        print("|---|---:|---:|---:|")
        for k, c in conns.items():
            tables = [t for t in ("authorizations", "authorization_requests", "followup_requests")
                      if await c.fetchval("SELECT relkind = 'r' FROM pg_class WHERE relname = $1",
                                          t)]
            await c.execute(f"VACUUM ANALYZE {', '.join(tables)}")
            size = sum([await c.fetchval("SELECT pg_total_relation_size($1::regclass)", t)
                        for t in tables])
            auths = await c.fetchval("SELECT count(*) FROM authorizations")
            requests = await c.fetchval("SELECT count(*) FROM authorization_requests")
            print(f"| {k} ({' + '.join(tables)}) | {auths:,} | {requests:,} "
                  f"| {size / auths:,.0f} |")
        for k in names:
            report, _counts = await dataset.verify_ledger(urls[k])
            if not report.ok:
                print(f"{k}: {report.render()}")
                return 1
        print("\nholdfast verify: clean on both")
        return 0
    finally:
        for c in conns.values():
            await c.close()
        for name in names.values():
            await dataset.drop_database(args.pg, name)


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    versions = [m.version for m in available()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (any database: the benchmark creates its own)")
    parser.add_argument("--through", default=versions[-2], choices=versions[:-1],
                        help="the earlier schema: migrations up to this version "
                             "(default: all but the last)")
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8],
                        help="batch sizes sent to hf_authorize_batch, besides lone requests")
    parser.add_argument("--per-point", type=int, default=1_000,
                        help="authorisations per measurement")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--history", type=int, default=50_000,
                        help="authorisations recorded before anything is measured")
    args = parser.parse_args(argv)
    return uvloop.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
