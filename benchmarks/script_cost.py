"""Redis's own cost of the decision script, counted in instructions: within ~0.1 % from run to
run whatever else the machine is doing, so a change to ``policies/velocity.lua`` (or to what the
policy cache stores) can be judged on a shared, noisy machine where wall-clock timings cannot.

    .venv/bin/python -m benchmarks.script_cost [--decisions 1000] [--against OLD.lua ...]

For each script -- ``policies/velocity.lua``, then every ``--against`` file, then a trivial script
taking the same keys and arguments (the floor: reading the command, running any script at all,
answering) -- it starts a throwaway ``redis-server`` under valgrind's callgrind on a free loopback
port, caches the benchmark's card policies (``benchmarks.traffic``, written by the real
``PolicyCache.put``), sends warm-up decisions, zeroes the counters, sends ``--decisions`` fresh
decisions through ``PolicyCache.check`` in concurrent groups of 50 (as the server pipelines
them), dumps the counters and prints Redis's instructions per decision. Every script runs with
``policies/buckets.lua`` in front, as the cache loads it (a version that does not use it only
pays for defining its functions). The cached cards are in the current format: an ``--against``
version must read that format (or it only ever answers a miss). With ``--minutes N`` every card
first gets a decision in each of the last N minutes, so its velocity hash holds a busy card's
buckets (where the run falls against minute boundaries moves that figure by a few per cent:
compare side by side). Needs ``valgrind`` (with ``callgrind_control``) and ``redis-server`` on
the PATH; about 10 s a script, 30 s with ``--minutes 30``. Nothing is written and nothing is left
behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import redis.asyncio as aioredis

from authz.hotpath import month_of
from benchmarks import callgrind, dataset
from benchmarks.servers import free_port
from benchmarks.traffic import profile
from policies.cache import PolicyCache, with_buckets
from policies.model import AuthorizationRequest

__all__ = ["main"]

_PREFIX: Final = "hfcost:"
_GROUP: Final = 50  # decisions sent together
_TRIVIAL: Final = "return {'miss'}\n"


def _requests(start: int, n: int, cards: int) -> list[AuthorizationRequest]:
    out = []
    for i in range(start, start + n):
        p = profile(i % cards)
        rid = uuid.uuid4().hex
        out.append(AuthorizationRequest(
            provider="native", provider_id=rid, sequence=0, authorization_id=rid,
            card_id=p.card_id, amount_minor=12_50, currency=p.currency, merchant_id="m-cost",
            merchant_name="Cost Grocer", mcc="5411", country="GB", channel="pos",
            partial_allowed=False, parent_id=None, request_hash=rid))
    return out


async def _decide(url: str, source: str, first: int, n: int, cards: int,
                  now: int | None = None) -> Counter[str]:
    """``n`` decisions with ``source`` as the decision script, at ``now`` (default: the
    clock's); the verdicts' kinds."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        cache = PolicyCache(client, _PREFIX, 3_600)
        cache._sources["velocity"] = with_buckets(source)  # the script under test
        await cache.load_scripts()
        now = int(time.time()) if now is None else now
        month = month_of(now)
        kinds: Counter[str] = Counter()
        for start in range(first, first + n, _GROUP):
            group = _requests(start, min(_GROUP, first + n - start), cards)
            for verdict in await asyncio.gather(*(cache.check(r, now, month) for r in group)):
                kinds[verdict.kind] += 1
        return kinds
    finally:
        await client.aclose()


async def _cost(name: str, source: str, args: argparse.Namespace, workdir: Path) -> int:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / f'callgrind.{port}'}",
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = aioredis.Redis.from_url(url)
        for _ in range(200):
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                if await probe.ping():
                    break
            await asyncio.sleep(0.1)
        await probe.aclose()
        await dataset.warm_cache(url, _PREFIX, 3_600, args.cards)
        now = int(time.time())
        for minute in range(args.minutes, 0, -1):  # history: one decision per card a minute
            await _decide(url, source, -(minute * args.cards), args.cards, args.cards,
                          now - minute * 60)
        await _decide(url, source, 0, args.warmup, args.cards)
        await callgrind.control(server.pid, "-z")
        kinds = await _decide(url, source, args.warmup, args.decisions, args.cards)
        await callgrind.control(server.pid, "-d")
        per = callgrind.total(workdir / f"callgrind.{port}") // int(args.decisions)
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        print(f"| {name} | {per:,} | {verdicts} |", flush=True)
        return per
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 10)
        except TimeoutError:
            server.kill()
            await server.wait()


async def _run(args: argparse.Namespace, scripts: list[tuple[str, str]]) -> int:
    print(f"# Redis instructions per decision ({args.decisions:,} decisions over "
          f"{args.cards:,} cards, after {args.warmup:,} warm-up; callgrind)\n")
    print("| script | instructions per decision | verdicts |")
    print("|---|---:|---|")
    with tempfile.TemporaryDirectory(prefix="holdfast-script-cost-") as tmp:
        costs = [await _cost(name, source, args, Path(tmp)) for name, source in scripts]
    base = costs[0]
    for (name, _), cost in zip(scripts[1:-1], costs[1:-1], strict=True):
        print(f"\n{name} / current: {cost / base:.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cards", type=int, default=1_000)
    parser.add_argument("--minutes", type=int, default=0,
                        help="give every card a decision in each of the last N minutes first, "
                             "so its velocity hash holds 2N+ buckets, as a busy card's does")
    parser.add_argument("--against", nargs="*", default=[],
                        help="other versions of velocity.lua to count side by side")
    args = parser.parse_args(argv)
    if callgrind.missing_tools(("valgrind", "callgrind_control", "redis-server")):
        return 2
    current = Path(__file__).parent.parent / "policies" / "velocity.lua"
    scripts = [("policies/velocity.lua", current.read_text())]
    scripts += [(str(p), Path(p).read_text()) for p in args.against]
    scripts.append(("trivial script, same keys and arguments", _TRIVIAL))
    return asyncio.run(_run(args, scripts))


if __name__ == "__main__":
    sys.exit(main())
