"""Where the server's CPU goes at saturation: ``holdfast serve`` on a database of its own, a
closed-loop load (``benchmarks.loadgen``, as ``make bench``'s saturation phase), and py-spy
sampling the server process meanwhile; the summary (``benchmarks.flame``) is printed.

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profile [--seconds 20] [--raw profile.txt]

py-spy needs to ptrace the server (root, or ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import dataset, flame, harness
from benchmarks.harness import LoadRun
from benchmarks.loadgen import Spec

__all__ = ["main"]


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cards", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=20.0, help="sampling time, s")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    p.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw output here")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    p.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    return p.parse_args(argv)


def _py_spy() -> str:
    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    return found


async def _main(args: argparse.Namespace) -> int:
    py_spy = _py_spy()
    run_id = secrets.token_hex(4)
    db_name = f"holdfast_bench_{run_id}"
    url = harness.db_url(args.pg, db_name)
    prefix = f"hfp:{run_id}:"
    secret = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="holdfast-profile-"))
    raw = args.raw or tmp / "profile.txt"
    busy, load1 = await harness.background_load()
    print(f"background: {busy:.0%} of the cores busy (load average {load1:.2f})", flush=True)
    created = False
    try:
        await dataset.create_database(args.pg, url, db_name)
        created = True
        await dataset.seed(url, args.cards)
        await dataset.warm_cache(args.redis, prefix, 3600, args.cards)
        server = await harness.start_holdfast("holdfast", url, args.redis, prefix, secret,
                                              args.server_env)
        try:
            def spec(tag: str, seconds: float) -> Spec:
                return Spec(host="127.0.0.1", port=server.port, mode="closed",
                            duration_s=seconds, lead_in_s=1.0, cards=args.cards, seed=3,
                            secret=secret, id_prefix=f"hfp.{run_id}.{tag}",
                            connections=args.concurrency, server_pid=server.pid,
                            max_rate=5_000.0)

            await LoadRun(spec("warm", 3.0), tmp).run()
            await dataset.vacuum_analyze(url)
            load = LoadRun(spec("load", args.seconds + 3.0), tmp)
            await load.start()
            await asyncio.sleep(2.0)
            argv = [py_spy, "record", "--pid", str(server.pid), "--duration",
                    str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw",
                    "--nolineno", "--output", str(raw)]
            if args.native:
                argv.append("--native")
            spy = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            spy_out, _ = await spy.communicate()
            result = await load.result()
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed: {spy_out.decode(errors='replace')}")
        finally:
            await server.stop()
        cpu = result.cpu_s
        print(f"\nload: {result.throughput:,.0f} req/s closed loop, {args.concurrency} "
              f"connections; server process {cpu.get('server', 0.0) / result.duration_s:.2f} "
              f"cores, machine {cpu.get('machine', 0.0) / max(cpu.get('capacity', 1.0), 1e-9):.0%}"
              f" busy, other work {cpu.get('other', 0.0) / max(cpu.get('capacity', 1.0), 1e-9):.0%}"
              "\n", flush=True)
        with raw.open() as f:
            print(flame.summarise(flame.parse(f), args.top))
    finally:
        if created:
            await dataset.drop_database(args.pg, db_name)
        await dataset.forget_keys(args.redis, prefix)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    args = _options(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
