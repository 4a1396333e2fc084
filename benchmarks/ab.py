"""Holdfast against Holdfast: this working tree's server beside another commit's, in one run.

    .venv/bin/python -m benchmarks.ab --against HEAD~1 [--rounds 8] [--rate 1000]

``make bench`` compares Holdfast with the raw stack; a change to Holdfast is judged by two
such runs one after the other, and on a shared VM two runs of the same code differ by more
than most changes do. Here both versions serve at once, each on a database of its own that
its own code migrated (the other commit is checked out with ``git worktree`` and run with
``PYTHONPATH`` pointing at it), seeded with the same cards; then the same open-loop traffic
goes to one and then the other, alternating A B, B A, ... round by round (and, with
``--concurrency``, a closed loop too). Before each run the server's database is vacuumed and
analysed, as ``make bench`` does when autovacuum is off. The report gives every round, the
rounds' medians, the pooled percentiles, and in how many rounds this tree's p99 was the lower.
The policy cache of both is filled by this tree's code (``benchmarks.dataset.warm_cache``):
compare commits that share its layout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from benchmarks import dataset, halt_poll, harness, traffic
from benchmarks.alarm import CLIENT_PRIORITY, realtime_allowed
from benchmarks.diskwatch import BurstShare, DiskWatch, burst_share
from benchmarks.harness import Latency, LoadRun
from benchmarks.loadgen import Result, Spec
from benchmarks.report import slowest_by_fifth, slowest_due_ms
from benchmarks.servers import ServerProcess, free_port, start_server

__all__ = ["main"]

_ROOT: Final = Path(__file__).resolve().parent.parent
_DEDUPE_TTL_S: Final = 3600
_PAUSE_S: Final = 1.2


@dataclass
class _Side:
    label: str  # "A" or "B (<commit>)"
    db_name: str
    url: str
    prefix: str
    pythonpath: str | None  # the other commit's worktree
    server: ServerProcess | None = None
    schema: str = ""  # the last migration its own code applied
    open_runs: list[Result] = field(default_factory=list)
    closed_runs: list[Result] = field(default_factory=list)
    # per open run: its slowest 1 % near the disks' write bursts (diskwatch), None if unknown
    near_bursts: list[BurstShare | None] = field(default_factory=list)


def _commit(ref: str) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", ref], cwd=_ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


async def _migrate(side: _Side) -> None:
    """Migrate the side's database with its own code (``holdfast migrate --create-db``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLDFAST_")}
    env["HOLDFAST_DATABASE_URL"] = side.url
    if side.pythonpath:
        env["PYTHONPATH"] = side.pythonpath
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "authz.cli", "migrate", "--create-db", env=env,
        cwd=side.pythonpath or str(_ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"migrating {side.db_name} failed:\n{out.decode(errors='replace')}")


async def _start(side: _Side, redis_url: str, secret: str, extra: Sequence[str]) -> ServerProcess:
    port = free_port()
    env = harness.server_env(side.url, redis_url, side.prefix, port, secret, extra)
    if side.pythonpath:
        env["PYTHONPATH"] = side.pythonpath
    # -P: the working directory is not put first on sys.path, so PYTHONPATH decides the code
    return await start_server(side.label, [sys.executable, "-P", "-m", "authz.cli", "serve"],
                              env, port)


def _spec(args: argparse.Namespace, side: _Side, tag: str, seed: int, secret: str,
          tmp_id: str, **kw: object) -> Spec:
    assert side.server is not None
    base = Spec(host="127.0.0.1", port=side.server.port, mode="open", duration_s=args.seconds,
                lead_in_s=args.lead_in, cards=args.cards, seed=seed, secret=secret,
                id_prefix=f"{tmp_id}.{tag}.{side.db_name[-1]}", connections=args.connections,
                rate=args.rate, server_pid=side.server.pid,
                realtime_priority=args.client_realtime)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _steal(run: Result) -> str:
    """The hypervisor's share of all cores during the run's measured window ('-' if unknown)."""
    capacity = run.cpu_s.get("capacity", 0.0)
    return f"{run.cpu_s.get('steal', 0.0) / capacity:.0%}" if capacity > 0 else "-"


def _near(side: _Side, round_: int) -> str:
    share = side.near_bursts[round_ - 1] if round_ <= len(side.near_bursts) else None
    return "-" if share is None else str(share)


def _lat(results: Sequence[Result]) -> Latency:
    return Latency.of([x for r in results for x in r.latencies_us])


def _report(args: argparse.Namespace, a: _Side, b: _Side, code: str) -> str:
    lines = [f"# Holdfast against Holdfast, {dt.date.today().isoformat()}", "",
             f"A = this tree ({code}, schema through {a.schema}); B = {args.other}, schema "
             f"through {b.schema}, run from a worktree of it. Open loop at {args.rate:g}/s "
             f"({args.arrivals} arrivals, {args.connections} connections), {args.rounds} rounds "
             f"of {args.seconds:g} s per server alternating A B, B A, ...; latency from each "
             "request's due time, in ms."
             + (f" The open-loop load generator under SCHED_FIFO at {args.client_realtime}."
                if args.client_realtime else " The load generator in the normal class.")
             + ("" if args.cards_per_account == 1 else
                f" {args.cards:,} cards, {args.cards_per_account} of one currency to an "
                "account.")
             + f" Idle CPUs: {halt_poll.describe(halt_poll.read())}"
             + (" (--guest-halt-poll; the machine's own setting put back after)."
                if args.guest_halt_poll is not None else "."), ""]
    rows = []
    for i, (ra, rb) in enumerate(zip(a.open_runs, b.open_runs, strict=True), 1):
        la, lb = Latency.of(ra.latencies_us), Latency.of(rb.latencies_us)
        rows.append([str(i), f"{la.p50:.2f}", f"{lb.p50:.2f}", f"{la.p99:.2f}", f"{lb.p99:.2f}",
                     f"{la.p99 / lb.p99:.2f}", f"{_steal(ra)} / {_steal(rb)}",
                     f"{slowest_by_fifth(ra)} / {slowest_by_fifth(rb)}",
                     f"{_near(a, i)} / {_near(b, i)}", f"{ra.errors + rb.errors}"])
    # steal: the share of all cores the hypervisor gave other guests during each side's run; a
    # round where it is high measured the host, not the code. The slowest 1 % by fifth: where
    # in the run its tail came (report.slowest_by_fifth); near the disks' write bursts: how much
    # of it came when the kernel wrote much at once, and (in brackets) how much of the time
    # that was (diskwatch.burst_share)
    lines += harness.table(["round", "A p50", "B p50", "A p99", "B p99", "A / B p99",
                            "steal A / B", "slowest 1 % by fifth of the run, % (A / B)",
                            "slowest 1 % near a disk write burst (share of time) A / B",
                            "errors"], rows, "rrrrrrrllr")
    per_a = [Latency.of(r.latencies_us) for r in a.open_runs]
    per_b = [Latency.of(r.latencies_us) for r in b.open_runs]
    wins = sum(1 for x, y in zip(per_a, per_b, strict=True) if x.p99 < y.p99)
    pa, pb = _lat(a.open_runs), _lat(b.open_runs)
    med = {name: (statistics.median(x.p50 for x in runs), statistics.median(x.p99 for x in runs))
           for name, runs in (("A", per_a), ("B", per_b))}
    lines.append("")
    lines += harness.table(["", "A", "B", "A / B"], [
        ["p50, median of rounds", f"{med['A'][0]:.2f}", f"{med['B'][0]:.2f}",
         f"{med['A'][0] / med['B'][0]:.2f}"],
        ["p99, median of rounds", f"{med['A'][1]:.2f}", f"{med['B'][1]:.2f}",
         f"{med['A'][1] / med['B'][1]:.2f}"],
        ["pooled p50 / p99 / p99.9", f"{pa.p50:.2f} / {pa.p99:.2f} / {pa.p999:.2f}",
         f"{pb.p50:.2f} / {pb.p99:.2f} / {pb.p999:.2f}", f"{pa.p99 / pb.p99:.2f} (p99)"],
        ["rounds with the lower p99", str(wins), str(len(per_a) - wins), ""],
    ], "lrrr")
    if a.closed_runs:
        ta = statistics.median(r.throughput for r in a.closed_runs)
        tb = statistics.median(r.throughput for r in b.closed_runs)
        lines += ["", f"Closed loop at {args.concurrency} connections, {args.seconds:g} s a "
                  "round: req/s each round A " + ", ".join(f"{r.throughput:,.0f}"
                                                          for r in a.closed_runs)
                  + "; B " + ", ".join(f"{r.throughput:,.0f}" for r in b.closed_runs)
                  + f"; medians {ta:,.0f} against {tb:,.0f} ({ta / tb:.2f})."]
    lines += ["", f"Command: python -m benchmarks.ab {' '.join(sys.argv[1:])}"]
    return "\n".join(lines) + "\n"


async def _main(args: argparse.Namespace, code: str) -> tuple[str, bool]:
    run_id = secrets.token_hex(4)
    secret = secrets.token_hex(16)
    other, tree = args.other, args.tree
    tmp = tree.parent
    sides = [
        _Side("A", f"holdfast_bench_ab_{run_id}_a", "", f"hfb:{run_id}:a:", None),
        _Side(f"B ({other})", f"holdfast_bench_ab_{run_id}_b", "", f"hfb:{run_id}:b:",
              str(tree)),
    ]
    for s in sides:
        s.url = harness.db_url(args.pg, s.db_name)
    ok = True
    try:
        for s in sides:
            await _migrate(s)
            s.schema = await dataset.last_migration(s.url)
            await dataset.seed(s.url, args.cards)
            await dataset.warm_cache(args.redis, s.prefix, _DEDUPE_TTL_S, args.cards)
            s.server = await _start(s, args.redis, secret, args.server_env)
        print(f"A on :{sides[0].server and sides[0].server.port}, "
              f"{sides[1].label} on :{sides[1].server and sides[1].server.port}", flush=True)
        emulate = not await dataset.autovacuum_on(sides[0].url)
        for s in sides:  # warm-up: plans made, caches filled
            await LoadRun(_spec(args, s, "warm", 1, secret, run_id, mode="closed",
                                duration_s=args.warmup, lead_in_s=0.0,
                                connections=32), tmp).run()
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                for mode in (("open", "closed") if args.concurrency else ("open",)):
                    if emulate:
                        await dataset.vacuum_analyze(s.url)
                    await asyncio.sleep(_PAUSE_S)
                    kw: dict[str, object] = ({"keep_due": True} if mode == "open" else
                                             {"mode": "closed", "connections": args.concurrency})
                    disks = DiskWatch()
                    if mode == "open":
                        disks.start()
                    try:
                        result = await LoadRun(_spec(args, s, f"{mode}{r}", 1_000 + r, secret,
                                                     run_id, **kw), tmp).run()
                    finally:
                        samples = disks.stop()
                    assert s.server is not None
                    if not s.server.alive():
                        raise RuntimeError(f"{s.label} died:\n{s.server.log_tail()}")
                    (s.open_runs if mode == "open" else s.closed_runs).append(result)
                    if mode == "open":
                        s.near_bursts.append(burst_share(
                            samples, result.window_start_unix, result.duration_s,
                            slowest_due_ms(result)))
                    lat = Latency.of(result.latencies_us)
                    print(f"  round {r + 1} {s.label:<12} {mode:<6} {result.throughput:8,.0f}"
                          f" req/s  p50 {lat.p50:6.2f}  p99 {lat.p99:6.2f} ms", flush=True)
    finally:
        for s in sides:
            if s.server is not None:
                await s.server.stop()
        for s in sides:
            if s.schema:  # migrated: a ledger to verify
                report, _counts = await dataset.verify_ledger(s.url)
                ok = ok and report.ok
                print(f"{s.label}: {report.render()}", flush=True)
            await dataset.drop_database(args.pg, s.db_name)
            await dataset.forget_keys(args.redis, s.prefix)
    return _report(args, sides[0], sides[1], code), ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the other commit (any git ref)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="each run, s")
    parser.add_argument("--lead-in", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64, help="open-loop connections")
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="also a closed loop at this many connections each round (0: none)")
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--client-realtime", type=int, default=None, metavar="PRIORITY",
                        help="the load generator under SCHED_FIFO at this priority (default: "
                             f"{CLIENT_PRIORITY} where allowed; 0: the normal class)")
    parser.add_argument("--cards-per-account", type=int, default=1,
                        help="cards of one currency to a funding account (default 1)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra HOLDFAST_* setting for both servers (repeatable)")
    parser.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    halt_poll.add_option(parser)
    parser.add_argument("--no-write", action="store_true",
                        help="print the report only (default: also results/<date>-ab.md)")
    args = parser.parse_args(argv)
    traffic.share_accounts(args.cards_per_account)
    if args.client_realtime is None:
        args.client_realtime = CLIENT_PRIORITY if realtime_allowed() else 0
    args.quick = False
    args.other = _commit(args.against)
    args.tree = Path(tempfile.mkdtemp(prefix="holdfast-ab-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(args.tree), args.other],
                   cwd=_ROOT, check=True, capture_output=True)
    try:
        with halt_poll.for_run(args.guest_halt_poll):
            return harness.run_and_report(_main, args, "-ab")
    except halt_poll.HaltPollError as exc:
        print(f"benchmarks.ab: {exc}", file=sys.stderr)
        return 2
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(args.tree)], cwd=_ROOT,
                       check=False, capture_output=True)
        shutil.rmtree(args.tree.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
