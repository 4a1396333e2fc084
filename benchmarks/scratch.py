"""A scratch database with the benchmark's cards, for trying load tools (locust) or a profiler
against a ``holdfast serve`` of your own:

    .venv/bin/python -m benchmarks.scratch create holdfast_scratch_load --cards 10000
    # prints the HOLDFAST_* variables to start the server (and locust) with
    .venv/bin/python -m benchmarks.scratch drop holdfast_scratch_load

``create`` makes the database, migrates it, seeds cards ``bc-00000`` .. (``benchmarks.traffic``
universe: funded accounts, policies) and caches their policies under a Redis prefix of their
own; ``drop`` removes the database and the prefix's keys, and ``verify`` runs ``holdfast verify``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from benchmarks import dataset, harness

__all__ = ["main"]


def _prefix(name: str) -> str:
    return f"hfscratch:{name}:"


async def _create(args: argparse.Namespace) -> int:
    url = harness.db_url(args.pg, args.name)
    await dataset.create_database(args.pg, url, args.name)
    await dataset.seed(url, args.cards)
    await dataset.warm_cache(args.redis, _prefix(args.name), 3600, args.cards)
    print(f"created {args.name} with {args.cards:,} cards; serve it with:\n"
          f"  export HOLDFAST_DATABASE_URL={url}\n"
          f"  export HOLDFAST_REDIS_PREFIX={_prefix(args.name)}\n"
          f"  export HOLDFAST_LOCUST_CARDS={args.cards}\n"
          "  .venv/bin/holdfast serve")
    return 0


async def _drop(args: argparse.Namespace) -> int:
    await dataset.drop_database(args.pg, args.name)
    keys = await dataset.forget_keys(args.redis, _prefix(args.name))
    print(f"dropped {args.name}, deleted {keys:,} Redis keys")
    return 0


async def _verify(args: argparse.Namespace) -> int:
    report, counts = await dataset.verify_ledger(harness.db_url(args.pg, args.name))
    print(report.render())
    for k, v in counts.items():
        print(f"  {k}: {v:,}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    p = argparse.ArgumentParser(prog="python -m benchmarks.scratch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("create", "drop", "verify"))
    p.add_argument("name", help="database name (holdfast_scratch_* by convention)")
    p.add_argument("--cards", type=int, default=10_000)
    p.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    p.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = p.parse_args(argv)
    action = {"create": _create, "drop": _drop, "verify": _verify}[args.action]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(action(args))


if __name__ == "__main__":
    sys.exit(main())
