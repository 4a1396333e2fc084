"""``make bench-scale``: hot-path latency with 1,000,000 cards and 10,000,000 authorisations on
record, against the 10,000-card figure measured in the same run; Redis memory per card.

    .venv/bin/python -m benchmarks.scale [--help for every knob]

Three targets, one ``holdfast serve`` process each, measured alternately (A B C, C B A, ...):

- **small**: a database of its own with 10,000 cards and no history -- what ``make bench``
  measures;
- **big**: a database with 1,000,000 cards (accounts, cards, policies) and 10,000,000
  authorisations on record (``benchmarks.bulk``: ``COPY ... FREEZE`` of authorizations
  with their initial requests and holds, and followup_requests; ~5 % declined, ~2 % with an
  open hold in its window, ~15 % expired, the rest reversed; ~3 % with an incremental),
  traffic over all 1,000,000 cards (Zipf-skewed as in ``make bench``);
- **big, restricted**: the same big database and server, traffic restricted to its first
  10,000 cards (separates the cost of the tables' size from that of the working set).

Accounts are funded as credit lines (``overdraft_limit``; no journal needed) in both
databases. Request ids are scattered (a scrambled number first, as a processor's UUIDs) so new
rows land all over the 10,000,000-entry primary-key indexes, not at one end of them
(``--sequential-ids`` for the ``make bench`` ids).

Per round and target: open loop at ``--rate`` (latency from the due time) and saturation (closed
loop). Before each run the hot tables are vacuumed, as autovacuum would have (it is off here).
Redis memory: ``INFO memory`` before and after the 1,000,000 policies are cached, and
``MEMORY USAGE`` of a sample of policy, velocity and dedupe keys after the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import math
import os
import random
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asyncpg
import redis.asyncio as aioredis

from benchmarks import bulk, dataset, harness
from benchmarks.harness import Latency, LoadRun, table
from benchmarks.loadgen import Result, Spec
from benchmarks.pgstats import pg_delta, pg_sample
from benchmarks.servers import ServerProcess

__all__ = ["main"]

SMALL, BIG, BIG10K = "small", "big", "big, restricted"
_PAUSE_S: Final = 1.2
_BYTES_PER_HISTORY_ROW: Final = 900  # authorisation + request + hold + indexes, measured ~750


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cards", type=int, default=1_000_000, help="cards in the big database")
    p.add_argument("--history", type=int, default=10_000_000,
                   help="authorisations on record in the big database")
    p.add_argument("--small-cards", type=int, default=10_000,
                   help="cards in the small database, and the restricted traffic's cards")
    p.add_argument("--rate", type=float, default=1_000.0, help="open-loop rate, req/s")
    p.add_argument("--open-seconds", type=float, default=15.0)
    p.add_argument("--sat-seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3, help="rounds of (open, saturation) per target")
    p.add_argument("--connections", type=int, default=64, help="open-loop connections")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--sequential-ids", action="store_true",
                   help="request ids <prefix>-<n> (make bench's) instead of scattered ones")
    p.add_argument("--no-restricted", action="store_true",
                   help="skip the big database with traffic restricted to 10k cards")
    p.add_argument("--redis-sample", type=int, default=2_000, help="keys sampled per kind")
    p.add_argument("--db-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="ALTER DATABASE ... SET for both databases before the servers start, "
                        "e.g. wal_compression=lz4 (repeatable; some need a superuser)")
    p.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    p.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 50,000 cards, 500,000 authorisations, 2,000-card small "
                        "database, short runs, nothing written")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    for item in args.db_setting:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_.]+", name) or "'" in value:
            p.error(f"--db-setting wants name=value, got {item!r}")
    if args.quick:
        args.cards, args.history, args.small_cards = 50_000, 500_000, 2_000
        args.open_seconds, args.sat_seconds, args.rounds, args.warmup = 4.0, 3.0, 1, 1.0
    return args


@dataclass(slots=True)
class _Target:
    name: str
    db_name: str
    url: str
    prefix: str
    cards: int
    server: ServerProcess | None = None


@dataclass(frozen=True, slots=True)
class _Run:
    phase: str  # "open" | "saturation"
    target: str
    round: int
    result: Result
    pg: dict[str, float]


@dataclass(slots=True)
class _Outcome:
    runs: list[_Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    sizes: list[tuple[str, str]] = field(default_factory=list)
    redis: list[list[str]] = field(default_factory=list)
    redis_summary: list[str] = field(default_factory=list)
    ledger: list[str] = field(default_factory=list)
    verified: bool = True
    background: tuple[float, float] = (math.nan, math.nan)


async def _redis_used(redis_url: str) -> int:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def _sample_keys(redis_url: str, pattern: str, limit: int) -> list[int]:
    """MEMORY USAGE (every field counted: SAMPLES 0) of up to ``limit`` keys matching."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    sizes: list[int] = []
    try:
        async for key in client.scan_iter(match=pattern, count=10_000):
            used = await client.memory_usage(key, samples=0)
            if used is not None:
                sizes.append(int(used))
            if len(sizes) >= limit:
                break
    finally:
        await client.aclose()
    return sizes


async def _policy_sizes(redis_url: str, prefix: str, cards: int, limit: int) -> list[int]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    rng = random.Random(5)
    try:
        picks = [rng.randrange(cards) for _ in range(limit)]
        sizes = [await client.memory_usage(f"{prefix}{{card:bc-{i:05d}}}:pol", samples=0)
                 for i in picks]
    finally:
        await client.aclose()
    return [int(s) for s in sizes if s is not None]


async def _disk_check(admin: str, history: int, cards: int) -> str:
    conn = await asyncpg.connect(admin)
    try:
        data_dir = await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        data_dir = "/"
    finally:
        await conn.close()
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = shutil.disk_usage("/").free
    need = history * _BYTES_PER_HISTORY_ROW + cards * 600 + 2 * 1024**3  # + WAL
    if need > free * 0.5:
        raise SystemExit(f"not enough disk: ~{need / 1024**3:.1f} GiB needed, "
                         f"{free / 1024**3:.1f} GiB free (we keep to half of it); "
                         "use --history / --cards to make it smaller")
    return (f"disk: ~{need / 1024**3:.1f} GiB needed at most, {free / 1024**3:.1f} GiB free "
            f"where PostgreSQL keeps its data")


async def _vacuum(target: _Target) -> None:
    """As autovacuum would have: the small database all of it (its tables start empty and its
    plans must see them grow); the big one only the hot rows' tables (the 10^7-row tables are
    frozen and their statistics do not move in a run)."""
    if target.name == SMALL:
        await dataset.vacuum_analyze(target.url)
        return
    conn = await asyncpg.connect(target.url)
    try:
        await conn.execute("VACUUM (ANALYZE) accounts, cards")
    finally:
        await conn.close()


async def _prepare(args: argparse.Namespace, small: _Target, big: _Target, out: _Outcome
                   ) -> None:
    for t in (small, big):
        await dataset.create_database(args.pg, t.url, t.db_name)
    seconds = await bulk.load_cards(small.url, small.cards, credit_lines=True)
    await dataset.vacuum_analyze(small.url)
    await bulk.warm_policies(args.redis, small.prefix, small.cards)
    out.data.append(f"small: {small.cards:,} cards in {seconds:.1f} s, no history")
    print(out.data[-1], flush=True)

    seconds = await bulk.load_cards(big.url, big.cards, credit_lines=True)
    out.data.append(f"big: {big.cards:,} cards (accounts as credit lines, cards, policies) "
                    f"in {seconds:.1f} s")
    print(out.data[-1], flush=True)
    mix = bulk.Mix(declined=0.05, open_live=0.02, expired=0.15, incremental=0.03)
    loaded = await bulk.load_history(
        big.url, bulk.cards_of(big.cards), args.history, mix, prefix="h",
        progress=lambda line: print(line, flush=True))
    out.data.append(
        f"big: {loaded.authorizations:,} authorisations, {loaded.requests:,} decisions, "
        f"{loaded.holds:,} holds ({loaded.open_live:,} open, none due; "
        f"{loaded.declined:,} declined without a hold) in {loaded.seconds:.1f} s (COPY FREEZE)")
    print(out.data[-1], flush=True)
    t0 = time.perf_counter()
    broken = await bulk.check_references(big.url)
    if broken:
        raise RuntimeError("bulk load broke references: " + "; ".join(broken))
    conn = await asyncpg.connect(big.url)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        rows = await conn.fetch(
            "SELECT relname, pg_total_relation_size(oid) AS total, pg_relation_size(oid) AS heap"
            " FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            " ORDER BY 2 DESC LIMIT 6")
        db_size = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    flushed = await dataset.checkpoint(big.url)
    out.data.append("big: references proved, VACUUM (ANALYZE)"
                    + (", CHECKPOINT" if flushed else "")
                    + f" in {time.perf_counter() - t0:.1f} s; database "
                    f"{db_size / 1024**3:.2f} GiB")
    print(out.data[-1], flush=True)
    out.sizes = [(r["relname"], f"{r['total'] / 1024**2:,.0f} MiB "
                                f"(table {r['heap'] / 1024**2:,.0f} MiB)") for r in rows]

    before = await _redis_used(args.redis)
    seconds = await bulk.warm_policies(args.redis, big.prefix, big.cards)
    after = await _redis_used(args.redis)
    per_card = (after - before) / big.cards
    out.redis_summary.append(
        f"`INFO memory` used_memory rose by {(after - before) / 1024**2:,.0f} MiB while "
        f"{big.cards:,} policies were cached ({seconds:.1f} s, pipelined cache_put.lua): "
        f"**{per_card:,.0f} bytes per card** for its cached policy, key and dictionary "
        "overhead included (Redis is shared: other users' writes meanwhile count too)")
    print(out.redis_summary[-1], flush=True)


async def _measure(args: argparse.Namespace, targets: dict[str, _Target], secret: str,
                   tmp: Path, out: _Outcome) -> None:
    scatter = not args.sequential_ids

    def spec(t: _Target, name: str, tag: str, seed: int, **kw: object) -> Spec:
        assert t.server is not None
        cards = args.small_cards if name == BIG10K else t.cards
        base = Spec(host="127.0.0.1", port=t.server.port, mode="closed", duration_s=0.0,
                    lead_in_s=1.0, cards=cards, seed=seed, secret=secret,
                    id_prefix=f"{t.prefix.strip(':').replace(':', '.')}.{tag}",
                    connections=args.concurrency, server_pid=t.server.pid,
                    scatter_ids=scatter)
        return dataclasses.replace(base, **kw)  # type: ignore[arg-type]

    names = [SMALL, BIG] + ([] if args.no_restricted else [BIG10K])
    target_of = {SMALL: targets[SMALL], BIG: targets[BIG], BIG10K: targets[BIG]}
    max_rate: dict[str, float] = {}
    for name in names:
        t = target_of[name]
        warm = await LoadRun(spec(t, name, f"warm{len(max_rate)}", 1, lead_in_s=0.0,
                                  duration_s=args.warmup, max_rate=4_000.0), tmp).run()
        max_rate[name] = max(4_000.0, 2.5 * warm.throughput)
        print(f"  warm-up {name}: {warm.throughput:,.0f} req/s", flush=True)
    plan = []
    for r in range(1, args.rounds + 1):
        plan.append(("open", r, {"mode": "open", "rate": args.rate,
                                 "duration_s": args.open_seconds,
                                 "connections": args.connections}))
        plan.append(("saturation", r, {"mode": "closed", "duration_s": args.sat_seconds}))
    for n, (phase, round_, kw) in enumerate(plan):
        order = names if n % 2 == 0 else list(reversed(names))
        for name in order:
            t = target_of[name]
            await _vacuum(t)
            await asyncio.sleep(_PAUSE_S)
            pids = await harness.postgres_pids(args.pg, [t.db_name])
            before = await pg_sample(args.pg, t.db_name)
            tag = f"{phase[:3]}{round_}{names.index(name)}"
            result = await LoadRun(spec(t, name, tag, 100 + n, postgres_pids=pids,
                                        max_rate=max_rate[name], **kw), tmp).run()
            await asyncio.sleep(_PAUSE_S)
            after = await pg_sample(args.pg, t.db_name)
            assert t.server is not None
            if not t.server.alive():
                raise RuntimeError(f"{name} server died:\n{t.server.log_tail()}")
            out.runs.append(_Run(phase, name, round_, result, pg_delta(before, after)))
            lat = Latency.of(result.latencies_us)
            print(f"  {phase:<10} {name:<15} round {round_}: {result.throughput:8,.0f} req/s"
                  f"  p50 {lat.p50:7.2f}  p99 {lat.p99:7.2f}  p99.9 {lat.p999:7.2f} ms",
                  flush=True)


async def _redis_after(args: argparse.Namespace, big: _Target, out: _Outcome) -> None:
    policy = await _policy_sizes(args.redis, big.prefix, big.cards, args.redis_sample)
    velocity = await _sample_keys(args.redis, f"{big.prefix}{{card:*}}:v", args.redis_sample)
    dedupe = await _sample_keys(args.redis, f"{big.prefix}{{card:*}}:d:*", args.redis_sample)
    rows = []
    for kind, sizes, what in (
        ("cached card `{card:<id>}:pol` (JSON)", policy, "one per card, cached up front"),
        ("velocity hash `{card:<id>}:v`", velocity,
         "one per card with recent activity (1 h and 1 d buckets)"),
        ("dedupe key `{card:<id>}:d:...`", dedupe,
         "one per request, for HOLDFAST_DEDUPE_TTL_S (1 h)"),
    ):
        mean = statistics.mean(sizes) if sizes else math.nan
        rows.append([kind, f"{len(sizes):,}", f"{mean:,.0f}",
                     f"{min(sizes):,}" if sizes else "-", f"{max(sizes):,}" if sizes else "-",
                     what])
    out.redis = rows
    p = statistics.mean(policy) if policy else math.nan
    v = statistics.mean(velocity) if velocity else math.nan
    d = statistics.mean(dedupe) if dedupe else math.nan
    out.redis_summary.append(
        f"`MEMORY USAGE` (SAMPLES 0): a card costs **~{p + v:,.0f} bytes** with its policy and "
        f"velocity hashes ({p:,.0f} + {v:,.0f}); 1,000,000 active cards ~"
        f"{(p + v) * 1e6 / 1024**2:,.0f} MiB. Requests add a dedupe key each (~{d:,.0f} bytes) "
        f"for an hour: at {args.rate:,.0f}/s that is ~{d * args.rate * 3600 / 1024**2:,.0f} MiB "
        "in steady state, whatever the number of cards.")


async def _main(args: argparse.Namespace, code: str) -> tuple[str, bool]:
    run_id = secrets.token_hex(4)
    secret = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="holdfast-bench-scale-"))
    out = _Outcome()
    environment = [("code", code), *await harness.environment(args.pg, args.redis)]
    out.background = await harness.background_load()
    print(f"background: {out.background[0]:.0%} of the cores busy before we start "
          f"(load average {out.background[1]:.2f})", flush=True)
    out.data.append(await _disk_check(args.pg, args.history, args.cards))
    print(out.data[-1], flush=True)

    def target(name: str, tag: str, cards: int) -> _Target:
        db = f"holdfast_bench_{run_id}_{tag}"
        return _Target(name, db, harness.db_url(args.pg, db), f"hfs:{run_id}:{tag}:", cards)

    small, big = target(SMALL, "small", args.small_cards), target(BIG, "big", args.cards)
    targets = {SMALL: small, BIG: big}
    try:
        await _prepare(args, small, big, out)
        for t in (small, big):
            for item in args.db_setting:
                name, _, value = item.partition("=")
                conn = await asyncpg.connect(args.pg)
                try:
                    await conn.execute(f'ALTER DATABASE "{t.db_name}" SET {name} = '
                                       f"'{value}'")
                finally:
                    await conn.close()
        for t in (small, big):
            t.server = await harness.start_holdfast(t.name, t.url, args.redis, t.prefix, secret,
                                                    args.server_env)
            print(f"{t.name}: holdfast on :{t.server.port} (pid {t.server.pid})", flush=True)
        await _measure(args, targets, secret, tmp, out)
        await _redis_after(args, big, out)
    finally:
        for t in (small, big):
            if t.server is not None:
                await t.server.stop()
        for t in (small, big):
            try:
                report, counts = await dataset.verify_ledger(t.url)
            except (OSError, asyncpg.PostgresError) as exc:
                out.ledger.append(f"{t.name}: not verified ({type(exc).__name__})")
                continue
            out.verified &= report.ok
            out.ledger.append(f"{t.name}: holdfast verify: {report.render()}; " + ", ".join(
                f"{k} {v:,}" for k, v in counts.items()))
            print(out.ledger[-1], flush=True)
        for t in (small, big):
            await dataset.drop_database(args.pg, t.db_name)
            keys = await dataset.forget_keys(args.redis, t.prefix)
            print(f"dropped {t.db_name}, deleted {keys:,} Redis keys", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return _render(args, out, environment), out.verified


# -- the report --------------------------------------------------------------------------------

def _of(out: _Outcome, phase: str, target: str) -> list[Result]:
    return [r.result for r in out.runs if r.phase == phase and r.target == target]


def _render(args: argparse.Namespace, out: _Outcome, environment: list[tuple[str, str]]) -> str:
    names = [SMALL, BIG] + ([] if args.no_restricted else [BIG10K])
    lines = [f"# Holdfast scale benchmark, {dt.date.today().isoformat()}", ""]
    open_lat = {n: Latency.of([x for r in _of(out, "open", n) for x in r.latencies_us])
                for n in names}
    sat = {n: statistics.median([r.throughput for r in _of(out, "saturation", n)] or [math.nan])
           for n in names}
    small_p99 = open_lat[SMALL].p99
    rows = []
    for label, a in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")):
        cells = [f"{getattr(open_lat[n], a):,.2f}" for n in names]
        ratio = getattr(open_lat[BIG], a) / getattr(open_lat[SMALL], a)
        verdict = ""
        if label == "p99":
            verdict = "PASS" if open_lat[BIG].p99 <= 1.2 * small_p99 else "FAIL"
        rows.append([f"open loop {args.rate:,.0f}/s, {label} ms (pooled)", *cells,
                     f"{ratio:.2f}", "<= 1.20 (p99)" if label == "p99" else "", verdict])
    per_round = {n: [Latency.of(r.latencies_us).p99 for r in _of(out, "open", n)] for n in names}
    med = {n: statistics.median(v) if v else math.nan for n, v in per_round.items()}
    rows.append([f"open loop {args.rate:,.0f}/s, p99 ms, median of the rounds (each round)",
                 *(f"{med[n]:,.2f} ({', '.join(f'{x:,.1f}' for x in per_round[n])})"
                   for n in names),
                 f"{med[BIG] / med[SMALL]:.2f}", "", ""])
    sat_rounds = {n: [r.throughput for r in _of(out, "saturation", n)] for n in names}
    rows.append([f"saturation, {args.concurrency} connections (req/s, median; each round)",
                 *(f"{sat[n]:,.0f} ({', '.join(f'{x:,.0f}' for x in sat_rounds[n])})"
                   for n in names), f"{sat[BIG] / sat[SMALL]:.2f}", "", ""])
    pg_us = {n: statistics.median([r.cpu_s.get("postgres", 0.0) / r.completed * 1e6
                                   for r in _of(out, "saturation", n) if r.completed] or
                                  [math.nan]) for n in names}
    rows.append(["PostgreSQL CPU per authorisation at saturation (µs, median)",
                 *(f"{pg_us[n]:,.0f}" for n in names), f"{pg_us[BIG] / pg_us[SMALL]:.2f}", "",
                 ""])
    wal = {n: statistics.median([r.pg.get("wal_bytes_per_commit", math.nan) / 1024
                                 for r in out.runs if r.target == n] or [math.nan])
           for n in names}
    rows.append(["WAL per commit (KiB, median of the runs)", *(f"{wal[n]:,.1f}" for n in names),
                 f"{wal[BIG] / wal[SMALL]:.2f}", "", ""])
    lines += table(["measurement", *(f"{n}" for n in names), "big / small", "target", ""],
                   rows, "l" + "r" * len(names) + "rll")
    lines += ["", f"*small*: its own database, {args.small_cards:,} cards, no history. *big*: "
              f"{args.cards:,} cards and {args.history:,} authorisations on record, traffic "
              f"over all its cards." + ("" if args.no_restricted else
                                        f" *big, restricted*: the same database and server, "
                                        f"traffic over its first {args.small_cards:,} cards.")
              + " Latency from each request's due time (open loop, Poisson arrivals); "
              "request ids " + ("scattered (as random as UUIDs)." if not args.sequential_ids
                                else "sequential (make bench's).")]
    lines += ["", "## Redis memory per card", ""] + [f"- {s}" for s in out.redis_summary]
    if out.redis:
        lines += ["", *table(["key", "sampled", "mean bytes", "min", "max", "how many"],
                             out.redis, "lrrrrl")]
    lines += ["", "## Every run", ""]
    rows = []
    for r in out.runs:
        res = r.result
        lat = Latency.of(res.latencies_us)
        svc = Latency.of(res.service_us)
        bad = res.errors + sum(v for k, v in res.statuses.items() if k != "200")
        busy = (res.cpu_s.get("machine", 0.0) / res.cpu_s["capacity"]
                if res.cpu_s.get("capacity") else math.nan)
        other = (res.cpu_s.get("other", 0.0) / res.cpu_s["capacity"]
                 if res.cpu_s.get("capacity") else math.nan)
        pg_run = (res.cpu_s.get("postgres", 0.0) / res.completed * 1e6 if res.completed
                  else math.nan)
        rows.append([r.phase, r.target, str(r.round), f"{res.throughput:,.0f}", *lat.cells()[:3],
                     f"{svc.p99:,.2f}", str(res.max_backlog),
                     f"{r.pg.get('wal_bytes_per_commit', math.nan) / 1024:,.1f}",
                     f"{r.pg.get('wal_fpi_per_commit', math.nan):,.2f}", f"{pg_run:,.0f}",
                     f"{busy:.0%}", f"{other:.0%}", str(bad)])
    lines += table(["phase", "target", "round", "req/s", "p50 ms", "p99 ms", "p99.9 ms",
                    "service p99 ms", "max queue", "WAL KiB/commit", "full-page images/commit",
                    "PostgreSQL µs/request", "machine busy", "other work", "errors"],
                   rows, "lllrrrrrrrrrrrr")
    lines += ["", "*Full-page images/commit*: WAL full-page images per commit of the database "
              "(the cluster's, over the database's commits): a page touched for the first time "
              "since a checkpoint is logged whole, so inserts scattered over large indexes cost "
              "more WAL than inserts into small, cached ones."]
    if out.background[0] >= 0.05:
        lines += ["", f"**Note:** the machine was shared: {out.background[0]:.0%} of the cores "
                  f"were busy before the benchmark started (load average "
                  f"{out.background[1]:.2f}); *other work* per run shows it while we measured."]
    lines += ["", "## Data", ""] + [f"- {d}" for d in out.data]
    if out.sizes:
        lines += ["", *table(["big database: largest tables", "size with indexes"],
                             [list(s) for s in out.sizes], "lr")]
    lines += ["", "## Ledger after the run", ""] + [f"- {x}" for x in out.ledger]
    lines += ["", "## Settings", "",
              f"- open loop: {args.rate:g}/s Poisson, {args.connections} connections, "
              f"{args.rounds} x {args.open_seconds:g} s per target; saturation: closed loop, "
              f"{args.concurrency} connections, {args.rounds} x {args.sat_seconds:g} s per "
              "target; targets alternated; 1 s lead-in per run",
              f"- server settings: {', '.join(args.server_env) or 'defaults'}",
              f"- database settings: {', '.join(args.db_setting) or 'the server defaults'}",
              "- command: python -m benchmarks.scale " + " ".join(sys.argv[1:])]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in environment]
    lines += [f"- background before the run: {out.background[0]:.0%} of the cores busy"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_and_report(_main, _options(argv), "-scale")


if __name__ == "__main__":
    sys.exit(main())
