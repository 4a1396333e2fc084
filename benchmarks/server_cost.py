"""The server's own cost of an authorisation, counted in instructions: the Python (and C) work
of one ``holdfast serve`` process per request, repeatable on a shared, noisy machine where
wall-clock timings are not. It judges a change to the server side by side with another commit:

    .venv/bin/python -m benchmarks.server_cost [--requests 2000] [--against COMMIT ...]

For the working tree, then each ``--against`` commit (checked out with ``git worktree`` into a
temporary folder and removed after): a scratch database of its own made by that tree's own
``benchmarks.scratch create`` (migrations, cards, cached policies), the tree's server started under
valgrind's callgrind with instrumentation off, ``--warmup`` requests, instrumentation on,
``--requests`` signed authorisations over ``--connections`` keep-alive connections (each waits for
its answer before sending the next: the same closed loop for every tree) with ledger batches capped
at ``--batch-max`` (uncapped, the mean batch of one tree moved between runs, 6.3 to 7.5, and the
count with it by 1.7 %), a dump, and the instructions per request. Redis and PostgreSQL are the
machine's, outside the count: this measures only the server process. The decisions' tally, the
ledger batches' mean size (batching spreads the ledger call's cost; it is printed so that trees are
compared at the same size) and the wall time are printed beside it. Deadlines and background
intervals are raised so that callgrind's slowdown changes no decision.

Needs ``valgrind`` (with ``callgrind_control``) and ``git``; about a minute a tree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from benchmarks import callgrind, harness
from benchmarks.servers import free_port
from benchmarks.traffic import build_bodies, frame_requests

__all__ = ["main"]

_ROOT: Final = Path(__file__).resolve().parent.parent
_SECRET: Final = "server-cost-secret"  # noqa: S105 (a throwaway server's)
_BATCH: Final = re.compile(r"^holdfast_pg_batch_size_(sum|count) ([0-9.e+]+)$", re.MULTILINE)
_READY_S: Final = 180.0  # start-up under valgrind is slow
# callgrind slows the server ~50x: no deadline may fire and no periodic job may run
_QUIET: Final = (
    "HOLDFAST_DECISION_DEADLINE_MS=10000", "HOLDFAST_REDIS_TIMEOUT_MS=10000",
    "HOLDFAST_STATS_INTERVAL_S=3600", "HOLDFAST_OPEN_HOLDS_INTERVAL_S=86400",
    "HOLDFAST_STAND_IN_RECONCILE_INTERVAL_S=3600", "HOLDFAST_SIGNATURE_TOLERANCE_S=3600",
)


@dataclass(frozen=True, slots=True)
class Cost:
    name: str
    per_request: int
    mean_batch: float
    decisions: Counter[str]
    wall_s: float


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection: its status and body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _drive(port: int, requests: list[bytes], connections: int) -> Counter[str]:
    """Send every request over ``connections`` connections, one in flight on each."""
    tally: Counter[str] = Counter()
    queue: Iterator[bytes] = iter(requests)

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                status, body = await _exchange(reader, writer, request)
                if status != 200:
                    tally[f"HTTP {status}"] += 1
                else:
                    tally[str(orjson.loads(body)["reason"])] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return tally


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _exchange(
            reader, writer, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    finally:
        writer.close()


async def _batches(port: int) -> tuple[float, float]:
    _, body = await _get(port, "/metrics")
    found = dict(_BATCH.findall(body.decode()))
    return float(found.get("sum", 0)), float(found.get("count", 0))


async def _command(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.decode(errors='replace')}")
    return out.decode(errors="replace")


async def _wait_ready(port: int, server: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + _READY_S
    while time.monotonic() < deadline:
        if server.returncode is not None:
            raise RuntimeError("the server exited at start-up")
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            if (await _get(port, "/healthz"))[0] == 200:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the server did not answer /healthz in {_READY_S:.0f} s")


async def _cost(name: str, tree: Path, args: argparse.Namespace, workdir: Path) -> Cost:
    db = f"holdfast_cost_{os.getpid()}_{abs(hash(name)) % 10_000}"
    scratch = [sys.executable, "-m", "benchmarks.scratch"]
    common = ["--pg", args.pg, "--redis", args.redis]
    await _command([*scratch, "create", db, "--cards", str(args.cards), *common], tree)
    port = free_port()
    env = harness.server_env(harness.db_url(args.pg, db), args.redis, f"hfscratch:{db}:", port,
                             _SECRET, (*_QUIET, f"HOLDFAST_PG_BATCH_MAX={args.batch_max}"))
    env["PYTHONPATH"] = str(tree)
    out_file = workdir / f"callgrind.{port}"
    server = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
        sys.executable, "-m", "authz.cli", "serve", cwd=tree, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await _wait_ready(port, server)
        bodies = build_bodies(args.warmup + args.requests, cards=args.cards, seed=7,
                              id_prefix=f"cost-{port}")
        framed = frame_requests(bodies, host="127.0.0.1", secret=_SECRET,
                                now_s=int(time.time()))
        await _drive(port, framed[:args.warmup], args.connections)
        sum0, count0 = await _batches(port)
        await callgrind.control(server.pid, "-i", "on")
        started = time.perf_counter()
        tally = await _drive(port, framed[args.warmup:], args.connections)
        wall = time.perf_counter() - started
        await callgrind.control(server.pid, "-d")
        await callgrind.control(server.pid, "-i", "off")
        sum1, count1 = await _batches(port)
        total = callgrind.total(out_file)
        dump = callgrind.latest_dump(out_file)
        if args.keep is not None and dump is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            kept = args.keep / f"callgrind.{re.sub(r'[^A-Za-z0-9]+', '-', name)}"
            dump.replace(kept)
            print(f"<!-- profile kept: {kept} (callgrind_annotate --inclusive=yes) -->",
                  flush=True)
        batches = count1 - count0
        return Cost(name, total // args.requests,
                    (sum1 - sum0) / batches if batches else 0.0, tally, wall)
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()
            await server.wait()
        await _command([*scratch, "drop", db, *common], tree)


@contextlib.contextmanager
def _worktree(commit: str, parent: Path) -> Iterator[Path]:
    path = parent / f"tree-{commit[:12]}"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), commit],
                   cwd=_ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=_ROOT,
                       check=False)


def _row(cost: Cost, base: Cost) -> str:
    decided = ", ".join(f"{k} {v}" for k, v in cost.decisions.most_common(4))
    return (f"| {cost.name} | {cost.per_request:,} | {cost.per_request / base.per_request:.3f} "
            f"| {cost.mean_batch:.1f} | {cost.wall_s:.1f} | {decided} |")


async def _run(args: argparse.Namespace) -> int:
    print(f"# Server instructions per authorisation ({args.requests:,} requests over "
          f"{args.connections} connections, {args.cards:,} cards, after {args.warmup:,} "
          "warm-up; callgrind)\n")
    print("| tree | instructions per request | / working tree | mean ledger batch "
          "| wall s | decisions (top 4) |")
    print("|---|---:|---:|---:|---:|---|")
    costs: list[Cost] = []
    with tempfile.TemporaryDirectory(prefix="holdfast-server-cost-") as tmp:
        work = Path(tmp)
        costs.append(await _cost("working tree", _ROOT, args, work))
        print(_row(costs[0], costs[0]), flush=True)
        for commit in args.against:
            with _worktree(commit, work) as tree:
                cost = await _cost(commit, tree, args, work)
            costs.append(cost)
            print(_row(cost, costs[0]), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cards", type=int, default=2_000)
    parser.add_argument("--batch-max", type=int, default=8,
                        help="HOLDFAST_PG_BATCH_MAX of the servers under test")
    parser.add_argument("--against", nargs="*", default=[], help="commits to count beside")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each tree's callgrind output in this folder")
    parser.add_argument("--pg", default=os.environ.get(
        "HOLDFAST_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis", default=os.environ.get(
        "HOLDFAST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    if callgrind.missing_tools(("valgrind", "callgrind_control", "git")):
        return 2
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
