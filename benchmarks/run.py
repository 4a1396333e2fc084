"""``make bench``: the hot-path benchmark, Holdfast against the raw stack, side by side.

    .venv/bin/python -m benchmarks.run [--quick] [--help for every knob]

1. Create a database of its own (``holdfast_bench_<random>``), migrate it, seed 10,000 funded
   accounts and cards, fill the policy cache under a Redis prefix of its own (``hfb:<random>:``).
2. Start ``holdfast serve`` and ``benchmarks.raw_stack`` as subprocesses on free ports.
3. Warm both up, then measure, alternating the two servers (A B, B A, ...) so that drift on a
   shared machine hits both alike, each measurement a fresh load-generator process:
   saturation (closed loop) and open-loop latency at a fixed rate (1,000/s, and 2,500/s).
4. Stop the servers, run ``holdfast verify`` on the ledger, drop the database and the keys.
5. Print the report and write it to ``benchmarks/results/<date>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import asyncpg
import orjson

from benchmarks import dataset, halt_poll, harness, machine, server_stages, traffic
from benchmarks.alarm import CLIENT_PRIORITY, realtime_allowed
from benchmarks.loadgen import Result, Spec
from benchmarks.pgstats import pg_delta, pg_sample
from benchmarks.report import (
    HOLDFAST,
    RAW,
    Context,
    Measured,
    Targets,
    percentile,
    render,
    saturation_phase,
)
from benchmarks.servers import ServerProcess, free_port, start_server

__all__ = ["main"]

_DEDUPE_TTL_S: Final = 3600  # PolicyCache wants one; warming the cache writes no dedupe keys
_PAUSE_S: Final = 1.2  # between runs: let give-backs, WAL writes and the client process settle


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("connections: integers, comma-separated") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("connections: at least one level, each >= 1")
    return levels


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cards", type=int, default=10_000, help="cardholders seeded (default 10000)")
    p.add_argument("--cards-per-account", type=int, default=1,
                   help="cards of one currency to a funding account (default 1)")
    p.add_argument("--warmup", type=float, default=3.0, help="closed-loop warm-up per server, s")
    p.add_argument("--concurrency", type=_levels, default=(32, 128, 256),
                   help="closed-loop connections for saturation, comma-separated (default "
                        "32,128,256): each level is measured; a server's saturation is its best")
    p.add_argument("--sat-seconds", type=float, default=6.0, help="each saturation run, s")
    p.add_argument("--sat-rounds", type=int, default=3, help="saturation runs per server")
    p.add_argument("--rate", type=float, default=1_000.0, help="open-loop rate, req/s")
    p.add_argument("--open-seconds", type=float, default=10.0, help="each open-loop run, s")
    p.add_argument("--open-rounds", type=int, default=2, help="open-loop runs per server")
    p.add_argument("--high-rate", type=float, default=2_500.0,
                   help="a second open-loop rate, one run per server (0 to skip)")
    p.add_argument("--connections", type=int, default=64, help="open-loop connections")
    p.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    p.add_argument("--lead-in", type=float, default=1.0, help="unmeasured start of each run, s")
    p.add_argument("--client-realtime", type=int, default=None, metavar="PRIORITY",
                   help="run the open-loop load generator under SCHED_FIFO at this priority, "
                        "so that it sends on time however busy the servers are (default: "
                        f"{CLIENT_PRIORITY} where the machine allows it; 0: the normal class, "
                        "as before session 18)")
    p.add_argument("--client-timer", choices=("timerfd", "loop"), default="timerfd",
                   help="what wakes the open-loop client when a request is due: a timerfd (to "
                        "tens of microseconds) or the event loop's millisecond timer (as before "
                        "session 18; benchmarks/alarm.py)")
    p.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (any database: the benchmark creates its own)")
    p.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--pg-socket", default=None, metavar="DIR",
                   help="the servers reach PostgreSQL over its Unix socket in DIR (e.g. "
                        "/var/run/postgresql) instead of TCP loopback; both servers alike")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra HOLDFAST_* setting for both servers, e.g. HOLDFAST_PG_POOL_SIZE=4"
                        " (repeatable)")
    p.add_argument("--raw-writes", choices=("insert", "ledger"), default="insert",
                   help="what the raw stack writes: one small row (default), or an approval's "
                        "rows in Holdfast's own tables without its logic (benchmarks/raw_stack.py)")
    halt_poll.add_option(p)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1,000 cards and short phases (figures not comparable)")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)
    traffic.share_accounts(args.cards_per_account)
    if args.client_realtime is None:
        args.client_realtime = CLIENT_PRIORITY if realtime_allowed() else 0
    for item in args.server_env:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("HOLDFAST_"):
            p.error(f"--server-env wants HOLDFAST_NAME=VALUE, got {item!r}")
    if args.quick:
        args.cards, args.warmup, args.sat_seconds, args.sat_rounds = 1_000, 1.0, 2.0, 1
        args.open_seconds, args.open_rounds, args.high_rate = 3.0, 1, 0.0
    return args


_TIMERS = {
    "timerfd": "timerfd (a request is sent within tens of microseconds of its due time)",
    "loop": "the event loop's millisecond timer (as before session 18: up to ~0.5 ms of the "
            "client's own lag counts in latency)",
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Bench:
    run_id: str
    pg_admin: str
    db_name: str
    db_url: str
    redis_url: str
    prefix: str
    secret: str
    tmp: Path
    server_env: tuple[str, ...] = ()  # NAME=VALUE for both servers (--server-env)
    pg_socket: str | None = None  # the servers' PostgreSQL connection: a Unix socket directory
    raw_writes: str = "insert"  # --raw-writes


def _db_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _socket_url(admin_url: str, name: str, directory: str) -> str:
    user = urlsplit(admin_url).username or ""
    return f"postgresql://{user}@/{name}?host={directory}"


def _server_env(bench: _Bench, port: int, prefix: str) -> dict[str, str]:
    # nothing of the caller's Holdfast configuration may leak into the servers under test
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLDFAST_")}
    env.update({
        "HOLDFAST_DATABASE_URL": (_socket_url(bench.pg_admin, bench.db_name, bench.pg_socket)
                                  if bench.pg_socket else bench.db_url),
        "HOLDFAST_REDIS_URL": bench.redis_url,
        "HOLDFAST_REDIS_PREFIX": prefix,
        "HOLDFAST_PORT": str(port),
        "HOLDFAST_WEBHOOK_SECRET": bench.secret,
        "HOLDFAST_LOG_LEVEL": "WARNING",
    })
    for item in bench.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


async def _start_servers(bench: _Bench) -> dict[str, ServerProcess]:
    holdfast_bin = Path(sys.executable).with_name("holdfast")
    holdfast_argv = ([str(holdfast_bin), "serve"] if holdfast_bin.exists()
                     else [sys.executable, "-m", "authz.cli", "serve"])
    ports = free_port(), free_port()
    while ports[1] == ports[0]:
        ports = ports[0], free_port()
    hold, raw = await asyncio.gather(
        start_server(HOLDFAST, holdfast_argv, _server_env(bench, ports[0], bench.prefix),
                     ports[0]),
        start_server(RAW, [sys.executable, "-m", "benchmarks.raw_stack"],
                     {**_server_env(bench, ports[1], f"{bench.prefix}raw:"),
                      "HOLDFAST_RAW_WRITES": bench.raw_writes}, ports[1]),
        return_exceptions=True,
    )
    started = {s.name: s for s in (hold, raw) if isinstance(s, ServerProcess)}
    for failure in (hold, raw):
        if isinstance(failure, BaseException):
            for s in started.values():
                await s.stop()
            raise failure
    return started


async def _postgres_pids(bench: _Bench) -> list[int] | None:
    """The backends of the benchmark's database and PostgreSQL's own background processes (WAL
    writer, checkpointer, ...): the PostgreSQL work done for the servers under test, not for
    other databases on a shared server."""
    conn = await asyncpg.connect(bench.pg_admin)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = $1 OR backend_type <> 'client backend'",
            bench.db_name,
        )
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def _stages(server: ServerProcess) -> server_stages.Sample | None:
    """Holdfast's stage histograms now; None for the raw stack, which has none."""
    return await server_stages.sample(server.port) if server.name == HOLDFAST else None


async def _load(bench: _Bench, server: ServerProcess, spec: Spec) -> Result:
    """One load-generator process against one server; its result."""
    spec = dataclasses.replace(spec, postgres_pids=await _postgres_pids(bench))
    spec_path = bench.tmp / f"{spec.id_prefix}.spec.json"
    out_path = bench.tmp / f"{spec.id_prefix}.result.json"
    spec_path.write_bytes(orjson.dumps(dataclasses.asdict(spec)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.loadgen", str(spec_path), str(out_path),
        stdin=asyncio.subprocess.DEVNULL,
    )
    limit = spec.lead_in_s + spec.duration_s + 90
    try:
        code = await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"load generator for {spec.id_prefix} ran over {limit:.0f} s") from None
    if code != 0:
        raise RuntimeError(f"load generator for {spec.id_prefix} failed with exit code {code}")
    if not server.alive():
        raise RuntimeError(f"{server.name} died during {spec.id_prefix}:\n{server.log_tail()}")
    return Result(**orjson.loads(out_path.read_bytes()))


def _describe(m: Measured) -> str:
    r = m.result
    ordered = sorted(r.latencies_us)
    p50, p99, p999 = (percentile(ordered, p) / 1000 for p in (50, 99, 99.9))
    bad = r.errors + sum(v for k, v in r.statuses.items() if k != "200")
    extra = f", {bad} errors/non-200" if bad else ""
    extra += ", RAN OUT OF REQUESTS" if r.exhausted else ""
    return (f"  {m.phase:<11} {m.target:<8} round {m.round}: {r.throughput:8,.0f} req/s   "
            f"p50 {p50:6.2f}  p99 {p99:6.2f}  p99.9 {p999:6.2f} ms{extra}")


def _plan(args: argparse.Namespace) -> list[tuple[str, int, dict[str, object]]]:
    """(phase, round, load-generator settings) in the order they run."""
    plan: list[tuple[str, int, dict[str, object]]] = []
    for r in range(1, args.sat_rounds + 1):
        for level in args.concurrency:
            plan.append((saturation_phase(level), r, {
                "mode": "closed", "duration_s": args.sat_seconds, "connections": level}))
    for rate, rounds in ((args.rate, args.open_rounds), (args.high_rate, 1)):
        for r in range(1, rounds + 1 if rate > 0 else 1):
            plan.append((f"open:{rate:g}", r, {
                "mode": "open", "rate": rate, "duration_s": args.open_seconds,
                "connections": args.connections, "keep_due": True,  # the tail's place in time
            }))
    return plan


async def _measure(bench: _Bench, servers: dict[str, ServerProcess], args: argparse.Namespace,
                   emulate_autovacuum: bool) -> tuple[list[Measured], list[str]]:
    def spec(server: ServerProcess, tag: str, seed: int, **kw: object) -> Spec:
        base = Spec(host="127.0.0.1", port=server.port, mode="closed", duration_s=0.0,
                    lead_in_s=args.lead_in, cards=args.cards, seed=seed, secret=bench.secret,
                    id_prefix=f"{bench.run_id}.{tag}.{server.name[0]}",
                    connections=max(args.concurrency), arrivals=args.arrivals,
                    server_pid=server.pid, max_rate=max_rate[server.name],
                    timer=args.client_timer, realtime_priority=args.client_realtime)
        return dataclasses.replace(base, **kw)  # type: ignore[arg-type]

    max_rate = {HOLDFAST: 8_000.0, RAW: 8_000.0}
    print(f"warming up ({args.warmup:g} s each) ...", flush=True)
    for name in (HOLDFAST, RAW):
        warm = await _load(bench, servers[name], spec(servers[name], "warm", 1, lead_in_s=0.0,
                                                      duration_s=args.warmup))
        # a closed loop must not run out of pre-built requests: room for 2.5 x the warm-up rate
        max_rate[name] = max(4_000.0, 2.5 * warm.throughput)
        await asyncio.sleep(_PAUSE_S)

    plan = _plan(args)
    measured: list[Measured] = []
    for n, (phase, round_, kw) in enumerate(plan):
        # A B, B A, A B ...: neither server always goes first after a pause
        order = (HOLDFAST, RAW) if n % 2 == 0 else (RAW, HOLDFAST)
        seed = 1_000 + n  # both servers get the same traffic in a round
        for name in order:
            if emulate_autovacuum:
                await dataset.vacuum_analyze(bench.db_url)
            # the pauses let the servers' background work settle, and PostgreSQL backends flush
            # their statistics (at most once a second) so the samples frame this run only
            await asyncio.sleep(_PAUSE_S)
            before = await pg_sample(bench.pg_admin, bench.db_name)
            stages_before = await _stages(servers[name])
            tag = f"{phase.replace(':', '').replace('@', '-')}.{round_}"
            result = await _load(bench, servers[name], spec(servers[name], tag, seed, **kw))
            await asyncio.sleep(_PAUSE_S)
            after = await pg_sample(bench.pg_admin, bench.db_name)
            pg = pg_delta(before, after)
            stages_after = await _stages(servers[name])
            stages = ({} if stages_before is None or stages_after is None
                      else server_stages.means(stages_before, stages_after))
            m = Measured(phase, name, round_, result, pg, stages)
            measured.append(m)
            print(_describe(m), flush=True)
    return measured, list(dict.fromkeys(p for p, _, _ in plan))


async def _main(args: argparse.Namespace, code: str) -> tuple[str, bool]:
    # set before anything is measured (the idle cost and wake-up lines too), put back after
    with halt_poll.for_run(args.guest_halt_poll) as before:
        return await _run(args, code, before)


async def _run(args: argparse.Namespace, code: str,
               before: halt_poll.HaltPoll | None) -> tuple[str, bool]:
    """The suite; ``before`` is the machine's own idle setting when the run set its own."""
    run_id = secrets.token_hex(4)
    db_name = f"holdfast_bench_{run_id}"
    tmp = Path(tempfile.mkdtemp(prefix="holdfast-bench-"))
    bench = _Bench(run_id, args.pg, db_name, _db_url(args.pg, db_name), args.redis,
                   f"hfb:{run_id}:", secrets.token_hex(16), tmp, tuple(args.server_env),
                   args.pg_socket, args.raw_writes)
    context = Context(title=f"Holdfast hot-path benchmark, {dt.date.today().isoformat()}")
    context.environment = [("code", code),
                           *await harness.environment(bench.pg_admin, bench.redis_url),
                           ("idle CPUs (the machine's own setting)",
                            halt_poll.describe(halt_poll.read() if before is None else before))]
    context.settings = [
        ("cards", f"{args.cards:,} (one funded account each)" if args.cards_per_account == 1
         else f"{args.cards:,}, {args.cards_per_account} of one currency to a funded account"),
        ("saturation", f"closed loop at {', '.join(map(str, args.concurrency))} connections, "
                       f"{args.sat_rounds} x {args.sat_seconds:g} s per level and server; a "
                       "server's saturation is its best level (median of its rounds)"),
        ("open loop", f"{args.arrivals} arrivals at {args.rate:g}/s, {args.open_rounds} x "
                      f"{args.open_seconds:g} s per server, {args.connections} connections"
                      + (f"; {args.high_rate:g}/s, 1 x {args.open_seconds:g} s"
                         if args.high_rate else "")),
        ("lead-in", f"first {args.lead_in:g} s of every run sent but not measured; "
                    f"{args.warmup:g} s closed-loop warm-up per server first"),
        ("open-loop client's timer", _TIMERS[args.client_timer]),
        ("load generator's scheduling", f"open loop: SCHED_FIFO at priority "
         f"{args.client_realtime}; closed loop: the normal class" if args.client_realtime
         else "the normal class, as the servers"),
        ("server settings", ", ".join(args.server_env) or "defaults (Settings.from_env)"),
        ("raw stack writes", "one small row per request" if args.raw_writes == "insert" else
         "an approval's rows in Holdfast's tables (authorisation with its hold, request, "
         "account's held) in one statement, without Holdfast's logic"),
        ("idle CPUs during the run", "the machine's own setting" if before is None else
         halt_poll.describe(halt_poll.read()) + " (--guest-halt-poll; put back after)"),
        ("PostgreSQL connection", f"Unix socket in {args.pg_socket}" if args.pg_socket
         else "TCP loopback"),
        ("command", "python -m benchmarks.run " + " ".join(sys.argv[1:])),
    ]
    servers: dict[str, ServerProcess] = {}
    seeded = False
    ok = True
    measured: list[Measured] = []
    phases: list[str] = []
    try:
        started = time.perf_counter()
        print(f"database {db_name}, Redis prefix {bench.prefix}", flush=True)
        await dataset.create_database(bench.pg_admin, bench.db_url, db_name)
        await dataset.seed(bench.db_url, args.cards)
        seeded = True
        await dataset.warm_cache(bench.redis_url, bench.prefix, _DEDUPE_TTL_S, args.cards)
        print(f"seeded {args.cards:,} cardholders and their policy cache in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        idle = await machine.idle_cost(bench.db_url)
        context.environment.append(("a lone INSERT + commit (what idling costs here)", idle))
        print(f"a lone INSERT + commit: {idle}", flush=True)
        wake = await machine.wake_lateness()
        context.environment.append(("a timer 0.2-1 ms ahead wakes the client", wake))
        print(f"a timer 0.2-1 ms ahead: {wake}", flush=True)
        servers = await _start_servers(bench)
        print(f"holdfast on :{servers[HOLDFAST].port} (pid {servers[HOLDFAST].pid}), "
              f"raw stack on :{servers[RAW].port} (pid {servers[RAW].pid})", flush=True)
        emulate = not await dataset.autovacuum_on(bench.db_url)
        if emulate:
            context.notes.append(
                "autovacuum is off on this PostgreSQL server: the benchmark ran VACUUM (ANALYZE) "
                "on its database before every run, as autovacuum would have meanwhile (without "
                "it, dead versions of the hot account rows pile up and plans made against the "
                "new, nearly empty tables are never remade).")
        measured, phases = await _measure(bench, servers, args, emulate)
    finally:
        for server in servers.values():
            await server.stop()
        if seeded:
            report, counts = await dataset.verify_ledger(bench.db_url)
            ok = report.ok
            print(report.render(), flush=True)
            context.ledger = [f"holdfast verify: {report.render()}"] + [
                f"{k}: {v:,}" for k, v in counts.items()]
        await dataset.drop_database(bench.pg_admin, db_name)
        keys = await dataset.forget_keys(bench.redis_url, bench.prefix)
        print(f"dropped {db_name}, deleted {keys:,} Redis keys", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    targets = Targets(open_rate=args.rate, ratio_is_target=args.raw_writes == "insert")
    text = render(measured, phases, targets, context)
    return text, ok


def main(argv: Sequence[str] | None = None) -> int:
    args = _options(argv)
    try:
        return harness.run_and_report(_main, args,
                                      "-raw-ledger" if args.raw_writes == "ledger" else "")
    except halt_poll.HaltPollError as exc:
        print(f"benchmarks.run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
