"""How much this machine charges for being idle: one committed ``INSERT`` timed back to back and
timed again with the CPUs left idle a few milliseconds before each.

On a virtual machine whose virtual CPUs halt when idle, the same statement can cost its backend
two to three times the CPU, and its caller twice the time, right after an idle spell (caches
taken by other tenants, the CPU woken from a halt). Below saturation most of a request's hops
land on such a CPU, so this ratio moves the benchmark's latency at 1,000/s from run to run as
much as any code change (benchmarks/README.md, "Session 14"). The report prints it with each
run so two runs can be read side by side.

And how punctually it wakes a process that asked to be woken (``wake_lateness``): a timer
0.2-1 ms ahead, the gap between two requests at 1,000/s. Every hop of a request (client, server,
Redis, PostgreSQL) is such a wake-up when the CPU it lands on was idle, so this lateness's p99 is
a floor under the benchmark's tail that no server can go below.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import time
from pathlib import Path
from typing import Final

import asyncpg

from benchmarks.alarm import lateness, timerfd_available

__all__ = ["idle_cost", "wake_lateness"]

_BLOCKS: Final = 4  # alternating blocks of each kind, so a drift of the machine hits both
_CALLS: Final = 50  # per block
_IDLE_S: Final = 0.003


def _backend_cpu_ns(pid: int) -> int | None:
    """The backend's CPU time so far in ns, when PostgreSQL runs on this machine (schedstat:
    a block of calls uses ~10 ms of CPU, one tick of ``procstat.process_cpu_seconds``)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def idle_cost(db_url: str) -> str:
    """One line for the report: the median latency (and backend CPU, when readable) of a lone
    ``INSERT`` + commit back to back and with ``_IDLE_S`` of idle before each."""
    table = f"bench_idle_probe_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY "
                           "PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        insert = await conn.prepare(f"INSERT INTO {table} DEFAULT VALUES")
        pid = conn.get_server_pid()
        latency: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for block in range(2 * _BLOCKS):
            idle = block % 2 == 1
            before = _backend_cpu_ns(pid)
            for _ in range(_CALLS):
                if idle:
                    await asyncio.sleep(_IDLE_S)
                started = time.perf_counter()
                await insert.fetch()
                latency[idle].append(time.perf_counter() - started)
            after = _backend_cpu_ns(pid)
            if before is not None and after is not None:
                cpu[idle].append((after - before) / _CALLS)
    finally:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    warm, cold = statistics.median(latency[False]) * 1e6, statistics.median(latency[True]) * 1e6
    line = (f"{warm:,.0f} µs back to back, {cold:,.0f} µs {_IDLE_S * 1000:g} ms apart "
            f"({cold / warm:.1f} x)")
    if cpu[False] and cpu[True]:
        warm_cpu = statistics.median(cpu[False]) / 1000
        cold_cpu = statistics.median(cpu[True]) / 1000
        line += (f"; its backend's CPU {warm_cpu:,.0f} and {cold_cpu:,.0f} µs "
                 f"({cold_cpu / warm_cpu:.1f} x)")
    return line


_WAKES: Final = 1_000


async def wake_lateness() -> str:
    """One line for the report: how late a timerfd alarm 0.2-1 ms ahead wakes this process
    (benchmarks/alarm.py), or why it was not measured."""
    if not timerfd_available():
        return "not measured (no timerfd)"
    # appointments as the open loop's gaps at 1,000/s (spread evenly, the same every run)
    delays = [0.0002 + 0.0008 * k / _WAKES for k in range(_WAKES)]
    late, _ = await lateness(delays)
    late.sort()
    p50, p99 = late[len(late) // 2], late[int(0.99 * len(late))]
    return f"p50 {p50:,.0f} µs, p99 {p99:,.0f} µs, max {late[-1]:,.0f} µs late"
