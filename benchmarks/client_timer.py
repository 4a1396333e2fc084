"""How punctually the open-loop client can wake: the event loop's own timer against the timerfd
alarm (benchmarks/alarm.py), side by side in one run.

    .venv/bin/python -m benchmarks.client_timer [--wakes 2000] [--rounds 4]

For each timer, ``--wakes`` appointments 0.2-1.0 ms ahead (what Poisson arrivals at 1,000/s ask
for), alternating the timers by round; for each, how late the client woke against the instant asked
for, in µs, and the process's CPU per appointment. Under uvloop, as
``benchmarks.loadgen`` runs. The loop's timer goes off early now and then (it rounds a delay to
whole milliseconds); the alarm then sets it again until the instant has come, as the load
generator always did, so nothing is early and those extra wake-ups show in the CPU.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence

import uvloop

from benchmarks.alarm import lateness, timerfd_available

__all__ = ["main"]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wakes", type=int, default=2_000, help="appointments per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if not timerfd_available():
        print("no timerfd on this machine: the alarm is the loop's timer", file=sys.stderr)
        return 1
    rng = random.Random(1)
    late: dict[str, list[float]] = {"loop": [], "timerfd": []}
    cpu: dict[str, list[float]] = {"loop": [], "timerfd": []}
    for r in range(args.rounds):
        delays = [rng.uniform(0.0002, 0.001) for _ in range(args.wakes)]
        order = ("loop", "timerfd") if r % 2 == 0 else ("timerfd", "loop")
        for name in order:
            got, per = uvloop.run(lateness(delays, precise=name == "timerfd"))
            late[name].extend(got)
            cpu[name].append(per)
    print(f"# The client's wake-ups, {args.rounds} x {args.wakes:,} per timer: lateness, µs\n")
    print("| timer | min | p50 | p90 | p99 | max | CPU per appointment |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("loop", "timerfd"):
        v, per = late[name], sorted(cpu[name])[len(cpu[name]) // 2]
        print(f"| {name} | {min(v):,.0f} | {_pct(v, 0.5):,.0f} | {_pct(v, 0.9):,.0f} | "
              f"{_pct(v, 0.99):,.0f} | {max(v):,.0f} | {per:.1f} |")
    p99 = {name: _pct(late[name], 0.99) for name in late}
    print(f"\np99 lateness timerfd / loop: {p99['timerfd'] / p99['loop']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
