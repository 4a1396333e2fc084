"""``make bench-sweep``: the expiry sweep of 1,000,000 expired holds while the hot path serves
open-loop load, with hot-path latency before, during and after the sweep from ONE load run.

    .venv/bin/python -m benchmarks.sweep [--help for every knob]

1. A database of its own (``holdfast_bench_<random>``): 10,000 funded cardholders (as
   ``make bench``), then 1,000,000 approved authorisations whose holds are still open and past
   their window (``benchmarks.bulk``: authorizations with their requests and holds with
   ``COPY``, ``accounts.held`` = the sum), spread over the same accounts the traffic uses (the
   worst case: every sweep batch locks ~10 % of the accounts the hot path is deciding on).
   References checked, ``holdfast verify`` must hold at the end.
2. ``holdfast serve`` on it; the policy cache warmed; a closed-loop warm-up; VACUUM (ANALYZE).
3. One open-loop load run at ``--rate`` (Poisson arrivals, latency from the due time): after
   ``--before`` seconds, ``holdfast sweep`` (or ``clearing.sweep.sweep`` in-process with
   ``--sweeper function``, which can pause between batches) runs to the end; ``--after``
   seconds later the load stops. Requests are classed by their due time: before / during /
   after the sweep. PostgreSQL lock waits of the server's connections are sampled every 100 ms.
4. ``holdfast verify``; the database and Redis keys are dropped; the report goes to
   ``benchmarks/results/<date>-sweep.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asyncpg

from authz.settings import Settings
from benchmarks import bulk, dataset, harness, procstat
from benchmarks.harness import Latency, LoadRun, Window, table
from benchmarks.loadgen import Result, Spec
from clearing.metrics import ConsumerMetrics
from clearing.sweep import sweep

__all__ = ["main"]

_DEDUPE_TTL_S: Final = 3600
_SAMPLE_S: Final = 0.1
_SWEEP_OUTPUT: Final = re.compile(
    r"expired (\d+) hold\(s\) releasing (\d+) minor units in (\d+) batch\(es\), ([\d.]+) s")
_SERIES_S: Final = 5.0  # buckets of the time series


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--holds", type=int, default=1_000_000, help="expired open holds to sweep")
    p.add_argument("--cards", type=int, default=10_000,
                   help="cardholders: the traffic's cards and the holds' accounts")
    p.add_argument("--rate", type=float, default=1_000.0, help="open-loop rate, req/s")
    p.add_argument("--connections", type=int, default=64, help="open-loop connections")
    p.add_argument("--before", type=float, default=30.0, help="load before the sweep, s")
    p.add_argument("--after", type=float, default=15.0, help="load after the sweep, s")
    p.add_argument("--max-sweep", type=float, default=210.0,
                   help="the load run is planned for before + this; a sweep still running "
                        "then is measured to its end, but without load (signatures are valid "
                        "for 300 s, so before + max-sweep + after must stay under ~290 s)")
    p.add_argument("--warmup", type=float, default=3.0, help="closed-loop warm-up, s")
    p.add_argument("--sweeper", choices=("cli", "function"), default="cli",
                   help="cli: the `holdfast sweep` command (default); function: "
                        "clearing.sweep.sweep in this process (allows --pause-ms)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="holds per batch (default: the server's, HOLDFAST_SWEEP_BATCH_SIZE "
                        "or 200)")
    p.add_argument("--pause-ms", type=float, default=0.0,
                   help="pause between batches (--sweeper function only)")
    p.add_argument("--duty", type=int, default=None, metavar="PCT",
                   help="share of the time the sweep works (HOLDFAST_SWEEP_DUTY_PCT; default: "
                        "the server's, 45)")
    p.add_argument("--window", type=int, default=None, metavar="N",
                   help="due holds read at a time and batched by account (HOLDFAST_SWEEP_WINDOW; "
                        "default: the server's, 100,000; 1 = the holds due first, no grouping)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="renice the sweep's PostgreSQL backend to N (1-19: lower CPU priority) "
                        "as soon as it connects (needs the privilege and the same host)")
    p.add_argument("--layout", choices=("arrival", "scattered"), default="arrival",
                   help="arrival (default): the expired holds written in order of creation, as "
                        "the hot path lays a live table out; scattered: in random order, so "
                        "the due holds lie all over the table (the buffer cache's worst case)")
    p.add_argument("--sql", action="append", default=[], metavar="FILE",
                   help="SQL applied to the benchmark's database after the load, e.g. a "
                        "candidate CREATE OR REPLACE FUNCTION hf_expire_holds (repeatable)")
    p.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    p.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra HOLDFAST_* setting for the server (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 50,000 holds, 1,000 cards, short windows, nothing written")
    p.add_argument("--label", default="",
                   help="names the variant measured: results/<date>-sweep-<label>.md")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)
    if args.label and not re.fullmatch(r"[a-z0-9-]{1,40}", args.label):
        p.error("--label: lower-case letters, digits and dashes")
    if args.pause_ms and args.sweeper != "function":
        p.error("--pause-ms needs --sweeper function (holdfast sweep has no pause)")
    args.sql_texts = [(path, Path(path).read_text()) for path in args.sql]
    if args.quick:
        args.holds, args.cards, args.before, args.after, args.warmup = 50_000, 1_000, 5, 3, 1
    if args.before + args.max_sweep + args.after > 290:
        p.error("before + max-sweep + after must stay under 290 s (signature lifetime)")
    return args


@dataclass(slots=True)
class _Sweep:
    holds: int = 0
    amount_minor: int = 0
    batches: int = 0
    seconds: float = 0.0  # as the sweep itself timed it
    started_unix: float = 0.0
    ended_unix: float = 0.0
    batch_mean_ms: float = math.nan
    output: str = ""


@dataclass(frozen=True, slots=True)
class _Disk:
    """Cumulative counters of one block device (Linux /proc/diskstats)."""

    written_sectors: int
    writing_ms: int
    discarding_ms: int
    flushing_ms: int


def _disk_device(data_directory: str) -> tuple[int, int] | None:
    """(major, minor) of the device holding ``data_directory`` (same host only)."""
    try:
        st = os.stat(data_directory)
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev)


def _read_disk(device: tuple[int, int] | None) -> _Disk | None:
    """The device's counters from /proc/diskstats (discards and flushes: 0 on old kernels)."""
    if device is None:
        return None
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                parts = line.split()
                if (int(parts[0]), int(parts[1])) == device:
                    n = [int(x) for x in parts[3:]]
                    return _Disk(n[6], n[7], n[14] if len(n) > 14 else 0,
                                 n[16] if len(n) > 16 else 0)
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(slots=True)
class _Samples:
    at: list[float] = field(default_factory=list)  # unix
    waiting: list[int] = field(default_factory=list)  # server connections waiting on a lock
    active: list[int] = field(default_factory=list)  # server connections running a statement
    # what the server's running connections wait on ('IO:WALSync', 'LWLock:WALWrite', ...)
    waits: list[Counter[str]] = field(default_factory=list)
    # /proc/diskstats of PostgreSQL's data device at each sample (None: not readable)
    disk: list[_Disk | None] = field(default_factory=list)
    sweeping: bool = False  # from now on, other connections to the database are the sweep's
    # the sweep's processes (its PostgreSQL backend; the `holdfast sweep` process): CPU seconds
    # last seen, read while they live (they are gone by the time the window closes)
    sweep_backend_s: dict[int, float] = field(default_factory=dict)
    sweep_client_s: dict[int, float] = field(default_factory=dict)

    def track(self) -> None:
        for pids in (self.sweep_backend_s, self.sweep_client_s):
            for pid in pids:
                used = procstat.process_cpu_seconds(pid)
                if used is not None:
                    pids[pid] = used


async def _sample_locks(admin_url: str, db_name: str, out: _Samples, stop: asyncio.Event,
                        nice: int = 0) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        try:
            device = _disk_device(await conn.fetchval("SHOW data_directory"))
        except asyncpg.PostgresError:  # not a superuser: no disk figures
            device = None
        while not stop.is_set():
            out.disk.append(_read_disk(device))
            rows = await conn.fetch(
                "SELECT pid, application_name = 'holdfast' AS server,"
                " wait_event_type = 'Lock' AS waiting, state = 'active' AS active,"
                " wait_event_type || ':' || wait_event AS wait"
                " FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
                db_name)
            out.at.append(time.time())
            out.waiting.append(sum(1 for r in rows if r["server"] and r["waiting"]))
            out.active.append(sum(1 for r in rows if r["server"] and r["active"]))
            out.waits.append(Counter(r["wait"] for r in rows
                                     if r["server"] and r["active"] and r["wait"]))
            for r in rows:
                if out.sweeping and not r["server"] and r["pid"] not in out.sweep_backend_s:
                    out.sweep_backend_s[r["pid"]] = 0.0
                    if nice:
                        with contextlib.suppress(OSError):
                            os.setpriority(os.PRIO_PROCESS, r["pid"], nice)
            out.track()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _SAMPLE_S)
    finally:
        await conn.close()


def _batch_size(args: argparse.Namespace) -> int:
    """Holds per batch: as asked, else the server's default."""
    return int(args.batch_size or Settings().sweep_batch_size)


def _duty(args: argparse.Namespace) -> int:
    """The sweep's duty cycle, percent: as asked, else the command's default (the function's:
    flat out)."""
    return int(args.duty or (Settings().sweep_duty_pct if args.sweeper == "cli" else 100))


async def _run_sweep(args: argparse.Namespace, url: str, samples: _Samples) -> _Sweep:
    out = _Sweep()
    if args.sweeper == "function":
        metrics = ConsumerMetrics()
        conn = await asyncpg.connect(url)
        try:
            out.started_unix = time.time()
            result = await sweep(conn, dt.datetime.now(dt.UTC), _batch_size(args),
                                 pause_s=args.pause_ms / 1000, metrics=metrics,
                                 duty=(args.duty or 100) / 100,
                                 window=args.window or Settings().sweep_window)
            out.ended_unix = time.time()
        finally:
            await conn.close()
        out.holds, out.amount_minor = result.holds, result.amount_minor
        out.batches, out.seconds = result.batches, result.seconds
        total = metrics.registry.get_sample_value("holdfast_sweep_batch_seconds_sum") or 0.0
        out.batch_mean_ms = total / result.batches * 1000 if result.batches else math.nan
        out.output = f"clearing.sweep.sweep: {result}"
        return out
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLDFAST_")}
    env.update({"HOLDFAST_DATABASE_URL": url, "HOLDFAST_LOG_LEVEL": "WARNING"})
    if args.batch_size:
        env["HOLDFAST_SWEEP_BATCH_SIZE"] = str(args.batch_size)
    if args.duty:
        env["HOLDFAST_SWEEP_DUTY_PCT"] = str(args.duty)
    if args.window:
        env["HOLDFAST_SWEEP_WINDOW"] = str(args.window)
    for item in args.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    holdfast = Path(sys.executable).with_name("holdfast")
    argv = ([str(holdfast), "sweep"] if holdfast.exists()
            else [sys.executable, "-m", "authz.cli", "sweep"])
    launched = time.time()
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL)
    samples.sweep_client_s[proc.pid] = 0.0
    stdout, _ = await proc.communicate()
    out.ended_unix = time.time()
    out.output = stdout.decode(errors="replace").strip()
    found = _SWEEP_OUTPUT.search(out.output)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"holdfast sweep failed ({proc.returncode}): {out.output}")
    out.holds, out.amount_minor, out.batches = (int(found.group(i)) for i in (1, 2, 3))
    out.seconds = float(found.group(4))
    # the window starts at the launch: the command's start-up (imports, connecting) is part
    # of what running `holdfast sweep` costs the hot path; its own figure excludes it
    out.started_unix = launched
    out.batch_mean_ms = out.seconds / out.batches * 1000 if out.batches else math.nan
    return out


@dataclass(slots=True)
class _Outcome:
    result: Result | None = None
    sweep: _Sweep = field(default_factory=_Sweep)
    windows: list[Window] = field(default_factory=list)
    samples: _Samples = field(default_factory=_Samples)
    loaded: bulk.Loaded | None = None
    load_notes: list[str] = field(default_factory=list)
    ledger: list[str] = field(default_factory=list)
    verified: bool = False
    background: tuple[float, float] = (math.nan, math.nan)
    sweep_outlasted_load: bool = False


async def _measure(args: argparse.Namespace, out: _Outcome, admin: str, url: str, db_name: str,
                   prefix: str, secret: str, tmp: Path) -> None:
    server = await harness.start_holdfast("holdfast", url, args.redis, prefix, secret,
                                          args.server_env)
    try:
        print(f"holdfast on :{server.port} (pid {server.pid})", flush=True)

        def spec(tag: str, **kw: object) -> Spec:
            base = Spec(host="127.0.0.1", port=server.port, mode="open", duration_s=0.0,
                        lead_in_s=1.0, cards=args.cards, seed=11, secret=secret,
                        id_prefix=f"{prefix.strip(':').replace(':', '.')}.{tag}",
                        connections=args.connections, rate=args.rate, server_pid=server.pid)
            return dataclasses.replace(base, **kw)  # type: ignore[arg-type]

        warm = await LoadRun(spec("warm", mode="closed", duration_s=args.warmup, lead_in_s=0.0,
                                  connections=32, max_rate=4_000.0), tmp).run()
        print(f"warm-up: {warm.throughput:,.0f} req/s closed loop", flush=True)
        await dataset.vacuum_analyze(url)  # as autovacuum would have (it is off here)
        await asyncio.sleep(1.0)
        pids = await harness.postgres_pids(admin, [db_name])
        run = LoadRun(spec("open", duration_s=args.before + args.max_sweep, keep_due=True,
                           postgres_pids=pids), tmp)
        await run.start()
        window_start = await run.started()
        watch = procstat.Watch({
            **procstat.find_watch(server.pid, pids).pids,
            "client": (run.pid,) if run.pid else (),
        })
        before, during, after = (Window(n, watch) for n in ("before", "during", "after"))
        out.windows = [before, during, after]
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(
            _sample_locks(admin, db_name, out.samples, stop_sampling, args.nice))
        before.open()
        print(f"load: {args.rate:,.0f}/s open loop; sweep in {args.before:g} s", flush=True)
        await asyncio.sleep(max(0.0, window_start + args.before - time.time()))
        before.close()
        out.samples.sweeping = True
        during.open()
        out.sweep = await _run_sweep(args, url, out.samples)
        during.close()
        planned_end = window_start + args.before + args.max_sweep
        out.sweep_outlasted_load = out.sweep.ended_unix > planned_end
        print(f"sweep: {out.sweep.holds:,} holds in {out.sweep.seconds:.1f} s "
              f"({out.sweep.batches:,} batches)", flush=True)
        after.open()
        await asyncio.sleep(max(0.0, min(args.after, planned_end - time.time())))
        after.close()
        run.stop()
        out.result = await run.result()
        stop_sampling.set()
        await sampler
        if not server.alive():
            raise RuntimeError(f"holdfast died during the run:\n{server.log_tail()}")
    finally:
        await server.stop()


async def _main(args: argparse.Namespace, code: str) -> tuple[str, bool]:
    run_id = secrets.token_hex(4)
    db_name = f"holdfast_bench_{run_id}"
    admin = args.pg
    url = harness.db_url(admin, db_name)
    prefix = f"hfb:{run_id}:"
    secret = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="holdfast-bench-sweep-"))
    out = _Outcome()
    environment = [("code", code), *await harness.environment(admin, args.redis)]
    out.background = await harness.background_load()
    print(f"background: {out.background[0]:.0%} of the cores busy before we start "
          f"(load average {out.background[1]:.2f})", flush=True)
    created = False
    try:
        print(f"database {db_name}, Redis prefix {prefix}", flush=True)
        await dataset.create_database(admin, url, db_name)
        created = True
        seconds = await bulk.load_cards(url, args.cards, credit_lines=False)
        out.load_notes.append(f"{args.cards:,} cardholders (accounts funded by hf_deposit, cards, "
                              f"policies) in {seconds:.1f} s")
        out.loaded = await bulk.load_history(
            url, bulk.cards_of(args.cards), args.holds, bulk.Mix(open_due=1.0), prefix="exp-",
            progress=lambda line: print(line, flush=True),
            arrival_order=args.layout == "arrival")
        layout = ("in order of creation, as the hot path writes them" if args.layout == "arrival"
                  else "in random order: the due holds scattered over the table")
        out.load_notes.append(
            f"{args.holds:,} expired open holds (authorizations with their requests and "
            f"holds, COPY FREEZE, {layout}) over {len(out.loaded.held):,} accounts in "
            f"{out.loaded.seconds:.1f} s; {out.loaded.amount_open_minor:,} minor units held")
        for path, text in args.sql_texts:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(text)
            finally:
                await conn.close()
            out.load_notes.append(f"applied {path}")
        broken = await bulk.check_references(url)
        if broken:
            raise RuntimeError("bulk load broke references: " + "; ".join(broken))
        t0 = time.perf_counter()
        await dataset.vacuum_analyze(url)
        flushed = await dataset.checkpoint(url)
        await dataset.warm_cache(args.redis, prefix, _DEDUPE_TTL_S, args.cards)
        out.load_notes.append(
            "references checked; VACUUM (ANALYZE), "
            + ("CHECKPOINT (so the load's own checkpoint does not land in the *before* "
               "window), " if flushed else "no CHECKPOINT (not a superuser), ")
            + f"policy cache in {time.perf_counter() - t0:.1f} s")
        print("\n".join(out.load_notes), flush=True)
        await _measure(args, out, admin, url, db_name, prefix, secret, tmp)
    finally:
        if created:
            report, counts = await dataset.verify_ledger(url)
            out.verified = report.ok
            print(report.render(), flush=True)
            conn = await asyncpg.connect(url)
            try:
                due = await conn.fetchval(
                    "SELECT count(*) FROM holds WHERE state = 'open' AND expires_at <= now()")
                expired = await conn.fetchval("SELECT count(*) FROM holds"
                                              " WHERE state = 'expired'")
                ops = await conn.fetchval("SELECT count(*) FROM ledger_operations"
                                          " WHERE kind = 'expire'")
            finally:
                await conn.close()
            out.ledger = [f"holdfast verify: {report.render()}",
                          f"holds expired: {expired:,}; expiry operations journalled: {ops:,}; "
                          f"open holds still past their window: {due:,}",
                          *(f"{k}: {v:,}" for k, v in counts.items())]
        await dataset.drop_database(admin, db_name)
        keys = await dataset.forget_keys(args.redis, prefix)
        print(f"dropped {db_name}, deleted {keys:,} Redis keys", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return _render(args, out, environment), out.verified


# -- the report --------------------------------------------------------------------------------

def _split(result: Result, sw: _Sweep) -> dict[str, list[int]]:
    start = (sw.started_unix - result.window_start_unix) * 1000
    end = (sw.ended_unix - result.window_start_unix) * 1000
    parts: dict[str, list[int]] = {"before": [], "during": [], "after": []}
    for due, lat in zip(result.due_ms, result.latencies_us, strict=True):
        parts["before" if due < start else "during" if due < end else "after"].append(lat)
    return parts


def _lost(result: Result, sw: _Sweep) -> dict[str, int]:
    start = (sw.started_unix - result.window_start_unix) * 1000
    end = (sw.ended_unix - result.window_start_unix) * 1000
    lost = {"before": 0, "during": 0, "after": 0}
    for due in result.lost_due_ms:
        lost["before" if due < start else "during" if due < end else "after"] += 1
    return lost


def _num(x: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.{digits}f}"


def _locks(samples: _Samples, lo: float, hi: float) -> tuple[str, str, str]:
    waits = [w for t, w in zip(samples.at, samples.waiting, strict=True) if lo <= t < hi]
    if not waits:
        return "-", "-", "-"
    busy = sum(1 for w in waits if w) / len(waits)
    return f"{sum(waits) / len(waits):.2f}", str(max(waits)), f"{busy:.0%}"


def _waits(samples: _Samples, lo: float, hi: float, top: int = 3) -> str:
    """The wait events of the server's running connections between ``lo`` and ``hi`` (unix):
    the most frequent, as mean connections waiting on each."""
    seen = [w for t, w in zip(samples.at, samples.waits, strict=True) if lo <= t < hi]
    if not seen:
        return "-"
    total: Counter[str] = Counter()
    for w in seen:
        total.update(w)
    return ", ".join(f"{event} {count / len(seen):.2f}" for event, count in total.most_common(top)
                     ) or "none"


def _render(args: argparse.Namespace, out: _Outcome, environment: list[tuple[str, str]]) -> str:
    sw, r = out.sweep, out.result
    label = f" ({args.label})" if args.label else ""
    lines = [f"# Holdfast expiry-sweep benchmark{label}, {dt.date.today().isoformat()}", ""]
    if r is None:
        return "\n".join([*lines, "The run did not complete; see the output above.", ""])
    parts = _split(r, sw)
    lat = {k: Latency.of(v) for k, v in parts.items()}
    lost = _lost(r, sw)
    rate = sw.holds / sw.seconds if sw.seconds else math.nan
    ratio = lat["during"].p99 / lat["before"].p99 if lat["before"].p99 else math.nan
    sweep_ok = sw.seconds < 60
    p99_ok = ratio < 2
    lines += table(
        ["measurement", "figure", "target", ""],
        [[f"**sweep** of {sw.holds:,} expired holds ({sw.batches:,} batches of "
          f"{_batch_size(args):,}" + (f", {args.pause_ms:g} ms pause" if args.pause_ms
                                             else "")
          + f", window {args.window or Settings().sweep_window:,}, duty {_duty(args)} %)",
          f"{sw.seconds:.1f} s", "< 60 s", "PASS" if sweep_ok else "FAIL"],
         ["  throughput", f"{rate:,.0f} holds/s", "", ""],
         ["  mean batch (one transaction)", f"{sw.batch_mean_ms:.1f} ms", "", ""],
         [f"**hot-path p99** during / before the sweep ({args.rate:,.0f}/s open loop)",
          f"{lat['during'].p99:.2f} / {lat['before'].p99:.2f} ms = {ratio:.2f} x", "< 2 x",
          "PASS" if p99_ok else "FAIL"],
         ["  p50 during / before",
          f"{lat['during'].p50:.2f} / {lat['before'].p50:.2f} ms = "
          f"{lat['during'].p50 / lat['before'].p50:.2f} x" if lat["before"].p50 else "n/a",
          "", ""],
         ["  p99 during / after (a second baseline: the same load once the sweep is done)",
          f"{lat['during'].p99:.2f} / {lat['after'].p99:.2f} ms = "
          f"{lat['during'].p99 / lat['after'].p99:.2f} x" if lat["after"].p99 else "n/a",
          "", ""]],
        "lrll")
    lines += ["", "## Hot path before, during and after the sweep (one load run)", "",
              "Open loop, Poisson arrivals; latency from each request's due time (queueing in "
              "the client counts); requests are classed by due time. Lock waits: the server's "
              "PostgreSQL connections waiting on a lock, sampled every 100 ms, with the wait "
              "events of those running a statement.", ""]
    rows = []
    bounds = {"before": (r.window_start_unix, sw.started_unix),
              "during": (sw.started_unix, sw.ended_unix),
              "after": (sw.ended_unix, math.inf)}
    for name in ("before", "during", "after"):
        lt = lat[name]
        mean_wait, max_wait, busy = _locks(out.samples, *bounds[name])
        rows.append([name, f"{lt.count:,}", *lt.cells(),
                     _num(lt.p99 / lat["before"].p99, 2) if lat["before"].p99 else "n/a",
                     str(lost[name]), mean_wait, max_wait, busy,
                     _waits(out.samples, *bounds[name])])
    lines += table(["window", "requests", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                    "p99 / before", "unanswered", "lock waits (mean)", "(max)",
                    "samples with a wait", "waiting on (mean connections)"], rows,
                   "lrrrrrrrrrrl")
    non_200 = sum(v for k, v in r.statuses.items() if k != "200")
    lines += ["", f"Answered {r.completed:,} of the requests due in the measured window at "
              f"{r.throughput:,.0f}/s; {r.errors:,} unanswered, {non_200:,} non-200. Client "
              f"queue at most {r.max_backlog:,} deep."]
    lines += ["", "## Where the CPU went, per window", "",
              "Shares of both cores; *other* is work outside this benchmark (a shared "
              "machine). PostgreSQL (hot path) is the server's backends and the background "
              "processes (WAL writer, checkpointer: they also write the sweep's WAL).", ""]
    rows = []
    backend_s = sum(out.samples.sweep_backend_s.values())
    client_s = sum(out.samples.sweep_client_s.values())
    for w in out.windows:
        capacity = w.cpu.get("capacity", 0.0)
        mine = (backend_s, client_s) if w.name == "during" else (0.0, 0.0)
        other = max(0.0, w.cpu.get("other", 0.0) - sum(mine))
        rows.append([w.name, *(f"{w.share(g):.0%}" for g in
                               ("machine", "server", "postgres", "redis", "client", "irq")),
                     *(f"{x / capacity:.0%}" if capacity else "n/a" for x in (*mine, other)),
                     f"{w.share('steal'):.0%}"])
    lines += table(["window", "machine busy", "server", "postgres (hot path)", "redis",
                    "load generator", "kernel irq", "sweep: its backend", "sweep: its client",
                    "other", "steal"], rows, "lrrrrrrrrrr")
    lines += ["", f"The sweep's PostgreSQL backend used {backend_s:.1f} s of CPU "
              f"({backend_s / sw.holds * 1e6 if sw.holds else math.nan:.0f} µs per hold); its "
              f"client process {client_s:.1f} s."]
    lines += ["", "## Hot-path latency over time", "",
              f"{_SERIES_S:g}-second buckets by due time; * = the sweep ran during the bucket.",
              ""]
    lines += _series(r, sw, out.samples)
    notes = []
    if out.background[0] >= 0.05:
        notes.append(f"The machine was shared: {out.background[0]:.0%} of the cores were busy "
                     "before the benchmark started (load average "
                     f"{out.background[1]:.2f}); see *other* per window.")
    if out.sweep_outlasted_load:
        notes.append("The sweep outlasted the planned load run: the end of the *during* "
                     "window had no load (see the time series).")
    if notes:
        lines += [""] + [f"**Note:** {n}" for n in notes]
    lines += ["", "## Data", ""] + [f"- {n}" for n in out.load_notes]
    lines += ["", "## Ledger after the run", ""] + [f"- {x}" for x in out.ledger]
    lines += ["", "## Settings", "",
              f"- sweeper: {args.sweeper} ({sw.output})",
              f"- load: open loop, Poisson, {args.rate:g}/s, {args.connections} connections, "
              f"{args.before:g} s before the sweep, {args.after:g} s after it, 1 s lead-in",
              f"- server settings: {', '.join(args.server_env) or 'defaults'}"
              + (f"; the sweep's backend reniced to {args.nice}" if args.nice else ""),
              "- command: python -m benchmarks.sweep " + " ".join(sys.argv[1:])]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in environment]
    lines += [f"- background before the run: {out.background[0]:.0%} of the cores busy"]
    return "\n".join(lines) + "\n"


def _disk_cells(samples: _Samples, lo: float, hi: float) -> list[str]:
    """MB written to PostgreSQL's device, and ms spent discarding and flushing, between lo and
    hi (unix)."""
    seen = [d for t, d in zip(samples.at, samples.disk, strict=True) if lo <= t < hi and d]
    if len(seen) < 2:
        return ["-", "-", "-"]
    first, last = seen[0], seen[-1]
    return [f"{(last.written_sectors - first.written_sectors) * 512 / 1e6:,.0f}",
            f"{last.discarding_ms - first.discarding_ms:,}",
            f"{last.flushing_ms - first.flushing_ms:,}"]


def _series(r: Result, sw: _Sweep, samples: _Samples) -> list[str]:
    buckets: dict[int, list[int]] = {}
    for due, lat in zip(r.due_ms, r.latencies_us, strict=True):
        buckets.setdefault(int(due / 1000 / _SERIES_S), []).append(lat)
    start = sw.started_unix - r.window_start_unix
    end = sw.ended_unix - r.window_start_unix
    rows = []
    for b in sorted(buckets):
        lo, hi = b * _SERIES_S, (b + 1) * _SERIES_S
        lt = Latency.of(buckets[b])
        mark = "*" if lo < end and hi > start else ""
        at = r.window_start_unix
        rows.append([f"{lo:.0f}-{hi:.0f} s{mark}", f"{lt.count:,}", *lt.cells(),
                     *_disk_cells(samples, at + lo, at + hi),
                     _waits(samples, at + lo, at + hi)])
    return table(["due", "requests", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "disk MB written",
                  "disk ms discarding", "disk ms flushing",
                  "server connections waiting on (mean)"], rows, "lrrrrrrrrl")


def main(argv: Sequence[str] | None = None) -> int:
    args = _options(argv)
    return harness.run_and_report(_main, args, "-sweep" + (f"-{args.label}" if args.label else ""))


if __name__ == "__main__":
    sys.exit(main())

