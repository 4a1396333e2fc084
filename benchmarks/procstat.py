"""Who used the CPU during a phase, from /proc (Linux; elsewhere every figure is simply absent).

On a 2-core machine the server under test, PostgreSQL, Redis and the load generator all compete
for the same cores, so a throughput figure means little without knowing which of them was busy.
The processes are found once, before the timed window (a full /proc scan takes milliseconds, which
would show up as latency); each snapshot then reads only their ``stat`` files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "GROUPS",
    "CpuSnapshot",
    "Watch",
    "cpu_seconds",
    "find_watch",
    "process_cpu_seconds",
    "snapshot",
]

_PROC: Final = Path("/proc")
_TICK_S: Final = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
GROUPS: Final = ("server", "postgres", "redis", "client")


@dataclass(frozen=True, slots=True)
class Watch:
    """The processes of each group, by pid."""

    pids: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    ticks: dict[str, int]  # per group, user + system
    busy: int  # all cores: user, nice, system, irq, softirq (every process and the kernel)
    irq: int  # all cores: irq + softirq (loopback networking lands here, in no process)
    steal: int  # all cores: taken by the hypervisor for other guests
    total: int  # all cores: all ticks


def _comm_and_ticks(pid: int) -> tuple[str, int] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:  # exited, or not Linux
        return None
    open_, close = raw.find(b"("), raw.rfind(b")")
    fields = raw[close + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): utime and stime are fields 14 and 15
    return raw[open_ + 1 : close].decode(errors="replace"), int(fields[11]) + int(fields[12])


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU one process has used so far (None once it has exited)."""
    found = _comm_and_ticks(pid)
    return None if found is None else found[1] * _TICK_S


def find_watch(server_pid: int | None, postgres_pids: Sequence[int] | None = None) -> Watch:
    """The processes to account for. ``postgres_pids`` narrows PostgreSQL to the benchmark
    database's backends and the server's own background processes, so other databases' work on
    a shared server shows as "other"; without it, every ``postgres`` process counts."""
    postgres: list[int] = []
    redis: list[int] = []
    try:
        entries = [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return Watch()
    for pid in entries:
        found = _comm_and_ticks(pid)
        if found is None:
            continue
        comm = found[0]
        if comm == "postgres" and postgres_pids is None:
            postgres.append(pid)
        elif comm.startswith("redis-server"):
            redis.append(pid)
    return Watch({
        "server": (server_pid,) if server_pid else (),
        "postgres": tuple(postgres) if postgres_pids is None else tuple(postgres_pids),
        "redis": tuple(redis),
        "client": (os.getpid(),),
    })


def snapshot(watch: Watch) -> CpuSnapshot | None:
    try:
        first = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    numbers = [int(x) for x in first[1:9]] + [0] * (9 - len(first))
    user, nice, system, _idle, _iowait, irq, softirq, steal = numbers
    ticks = {}
    for group, pids in watch.pids.items():
        ticks[group] = sum(t[1] for t in map(_comm_and_ticks, pids) if t is not None)
    return CpuSnapshot(ticks, user + nice + system + irq + softirq, irq + softirq, steal,
                       sum(numbers))


def cpu_seconds(before: CpuSnapshot | None, after: CpuSnapshot | None) -> dict[str, float]:
    """CPU seconds between two snapshots: per group; ``irq`` (kernel interrupt work, mostly the
    loopback network); ``other`` (everything else busy: other work sharing the machine);
    ``machine`` (all busy time); ``steal`` (taken by the hypervisor); ``capacity`` (all cores x
    elapsed)."""
    if before is None or after is None:
        return {}
    out = {g: (after.ticks.get(g, 0) - before.ticks.get(g, 0)) * _TICK_S for g in GROUPS}
    out["irq"] = (after.irq - before.irq) * _TICK_S
    out["machine"] = (after.busy - before.busy) * _TICK_S
    out["other"] = max(0.0, out["machine"] - out["irq"] - sum(out[g] for g in GROUPS))
    out["steal"] = (after.steal - before.steal) * _TICK_S
    out["capacity"] = (after.total - before.total) * _TICK_S
    return out
