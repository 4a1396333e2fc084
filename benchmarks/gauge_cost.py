"""What the open-holds gauge's count costs the hot path, page sizes side by side:

    .venv/bin/python -m benchmarks.gauge_cost                       # ~6 min
    .venv/bin/python -m benchmarks.gauge_cost --paging 10000:0.5 --paging 1000:0.25 --rounds 4

The server counts every open hold once a minute for ``holdfast_open_holds{,_amount}``
(``clearing.stats.read_open_holds``: pages of holds, each its own statement, resting after each
in proportion to its time). While a page runs, a PostgreSQL backend has a core that the hot path
would otherwise have. Here a database holds ``--holds`` open holds (bulk-loaded), one server
takes authorisations at ``--rate`` open loop, and beside each run the benchmark counts the open
holds every ``--every`` seconds with one paging (``ROWS:DUTY``) or not at all (``none``),
alternating the pagings round by round (A B C, C B A, ...). The count runs far more often than
the server's once a minute, so its cost stands out of the machine's noise: compare the rows of
one report, not figures across reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from benchmarks import bulk, dataset, harness
from benchmarks.harness import Latency, LoadRun, table
from benchmarks.loadgen import Result, Spec
from clearing import stats

__all__ = ["Paging", "main", "parse_paging"]


@dataclass(frozen=True, slots=True)
class Paging:
    rows: int  # 0: no count
    duty: float

    @property
    def label(self) -> str:
        return "no count" if not self.rows else f"pages of {self.rows:,}, duty {self.duty:g}"


def parse_paging(text: str) -> Paging:
    if text == "none":
        return Paging(0, 1.0)
    rows, sep, duty = text.partition(":")
    try:
        paging = Paging(int(rows), float(duty) if sep else 0.5)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: ROWS:DUTY (e.g. 1000:0.25) or none"
                                         ) from None
    if paging.rows < 1 or not 0 < paging.duty <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rows must be >= 1 and duty in (0, 1]")
    return paging


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gauge_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paging", type=parse_paging, action="append", default=None,
                   metavar="ROWS:DUTY|none", help="a paging to measure (repeatable; default: "
                   "none, 10000:0.5 (before session 21) and the server's own, "
                   f"{stats.PAGE_ROWS}:{stats.DUTY:g})")
    p.add_argument("--holds", type=int, default=250_000, help="open holds in the database")
    p.add_argument("--cards", type=int, default=10_000)
    p.add_argument("--layout", choices=("arrival", "scattered"), default="arrival",
                   help="arrival (default): the holds written in order of creation, as the hot "
                        "path lays them out, so a page of them in expiry order is a run of the "
                        "table; scattered: in random order, every page's holds all over it")
    p.add_argument("--rate", type=float, default=1_000.0, help="open-loop rate, req/s")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--every", type=float, default=5.0, help="seconds between counts")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--quick", action="store_true",
                   help="20,000 holds, 1,000 cards, 5-s runs, 2 rounds; nothing written")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    p.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    p.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = p.parse_args(argv)
    args.paging = args.paging or [Paging(0, 1.0), Paging(10_000, 0.5),
                                   Paging(stats.PAGE_ROWS, stats.DUTY)]
    if args.quick:
        args.holds, args.cards, args.seconds, args.rounds = 20_000, 1_000, 5.0, 2
    return args


@dataclass(slots=True)
class _Run:
    paging: Paging
    round: int
    result: Result
    counts_s: list[float]


async def _count_beside(url: str, paging: Paging, every_s: float, stop: asyncio.Event,
                        counts_s: list[float]) -> None:
    if not paging.rows:
        return
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            await stats.read_open_holds(pool, page_rows=paging.rows, duty=paging.duty)
            counts_s.append(time.perf_counter() - t0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await pool.close()


async def _measure(args: argparse.Namespace, url: str, prefix: str, secret: str, tmp: Path
                   ) -> list[_Run]:
    # the server's own count once, at start, before any measured run
    server = await harness.start_holdfast("holdfast", url, args.redis, prefix, secret,
                                          ["HOLDFAST_OPEN_HOLDS_INTERVAL_S=86400"])
    runs: list[_Run] = []
    try:
        base = Spec(host="127.0.0.1", port=server.port, mode="open", duration_s=args.seconds,
                    lead_in_s=1.0, cards=args.cards, seed=5, secret=secret, id_prefix="",
                    connections=64, rate=args.rate, server_pid=server.pid)
        warm = await LoadRun(dataclasses.replace(
            base, id_prefix=f"{prefix}warm", mode="closed", duration_s=3.0, lead_in_s=0.0,
            connections=32, max_rate=4_000.0), tmp).run()
        print(f"warm-up: {warm.throughput:,.0f} req/s closed loop", flush=True)
        await dataset.vacuum_analyze(url)  # as autovacuum would have (it is off here)
        for r in range(1, args.rounds + 1):
            order = args.paging if r % 2 else list(reversed(args.paging))
            for paging in order:
                counts_s: list[float] = []
                stop = asyncio.Event()
                load = LoadRun(dataclasses.replace(
                    base, id_prefix=f"{prefix}r{r}.{paging.rows}", seed=r * 100 + paging.rows),
                    tmp)
                counter = asyncio.create_task(
                    _count_beside(url, paging, args.every, stop, counts_s))
                try:
                    run = _Run(paging, r, await load.run(), counts_s)
                finally:
                    stop.set()
                    await counter
                runs.append(run)
                lat = Latency.of(run.result.latencies_us)
                print(f"  round {r} {paging.label:<26} p50 {lat.p50:6.2f}  p99 {lat.p99:6.2f}"
                      f"  p99.9 {lat.p999:6.2f} ms; {len(run.counts_s)} counts", flush=True)
    finally:
        await server.stop()
    return runs


def _report(args: argparse.Namespace, code: str, environment: list[tuple[str, str]],
            runs: list[_Run], notes: list[str]) -> str:
    rows = []
    for paging in args.paging:
        mine = [run for run in runs if run.paging == paging]
        lats = [Latency.of(run.result.latencies_us) for run in mine]
        pooled = Latency.of([us for run in mine for us in run.result.latencies_us])
        counts = [s for run in mine for s in run.counts_s]
        approved = sum(run.result.reasons.get("approved", 0) for run in mine)
        answered = sum(sum(run.result.reasons.values()) for run in mine)
        rows.append([
            paging.label, *pooled.cells()[:3],
            ", ".join(f"{lat.p99:.2f}" for lat in lats),
            f"{statistics.median(counts):.2f}" if counts else "-",
            f"{approved / answered:.0%}" if answered else "-",
        ])
    lines = [
        f"# Open-holds gauge against the hot path, {time.strftime('%Y-%m-%d')}", "",
        f"{args.holds:,} open holds; {args.rate:,.0f} authorisations/s open loop for "
        f"{args.seconds:g} s a run, a count every {args.every:g} s beside it (the server's "
        f"own: once a minute); {args.rounds} rounds, pagings alternated. Latency from each "
        "request's due time.", "",
        *table(["count", "p50 ms", "p99 ms", "p99.9 ms", "p99 of each round, ms",
                "one count takes, s (median)", "approved"], rows, "lrrrlrr"),
        "", *(f"- {n}" for n in notes), "",
        "## Machine", "", f"- code: {code}", *(f"- {k}: {v}" for k, v in environment), "",
    ]
    return "\n".join(lines)


async def _main(args: argparse.Namespace, code: str) -> tuple[str, bool]:
    run_id = secrets.token_hex(4)
    db_name = f"holdfast_bench_{run_id}"
    url = harness.db_url(args.pg, db_name)
    prefix = f"hfb:{run_id}:"
    secret = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="holdfast-bench-gauge-"))
    environment = await harness.environment(args.pg, args.redis)
    notes: list[str] = []
    created = False
    try:
        await dataset.create_database(args.pg, url, db_name)
        created = True
        await bulk.load_cards(url, args.cards, credit_lines=True)
        loaded = await bulk.load_history(url, bulk.cards_of(args.cards), args.holds,
                                         bulk.Mix(open_live=1.0), prefix="gauge-",
                                         arrival_order=args.layout == "arrival")
        notes.append(f"loaded {loaded.open_live:,} open holds within their window over "
                     f"{len(loaded.held):,} accounts in {loaded.seconds:.1f} s, laid out "
                     + ("in order of creation" if args.layout == "arrival" else
                        "in random order"))
        await dataset.vacuum_analyze(url)
        await dataset.checkpoint(url)
        await dataset.warm_cache(args.redis, prefix, 3600, args.cards)
        print(notes[-1], flush=True)
        runs = await _measure(args, url, prefix, secret, tmp)
        report, _ = await dataset.verify_ledger(url)
        notes.append(f"holdfast verify: {report.render()}")
        return _report(args, code, environment, runs, notes), report.ok
    finally:
        if created:
            await dataset.drop_database(args.pg, db_name)
        await dataset.forget_keys(args.redis, prefix)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _options(argv)
    return harness.run_and_report(_main, args, "-gauge")


if __name__ == "__main__":
    raise SystemExit(main())
