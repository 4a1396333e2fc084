"""Real-time scheduling for the server's event loop (``HOLDFAST_REALTIME_PRIORITY``), opt-in.

A ``holdfast serve`` process is one event loop, and on a machine it shares with PostgreSQL and
Redis that loop is what every authorisation waits for: each hop (the request in, the decision
script's reply, the ledger call's reply, the answer out) is a wake-up of this one thread. Under
the kernel's fair scheduler a wake-up may wait for a core while a PostgreSQL backend or Redis
finishes its slice, and they run long slices when they work through a batch. Measured on the
2-core benchmark machine at saturation (benchmarks/README.md, "Session 15"): the server spent
0.15-0.18 of the time runnable but waiting for a core, against 0.06 for the raw stack, whose
backends run in slices of ~20 us; neither ``nice -5`` nor a shorter custom slice changed it.
Under ``SCHED_FIFO`` the loop runs as soon as it is woken, and nothing of the fair class
preempts it.

What it costs, and the guards:

- The process needs an ``RLIMIT_RTPRIO`` of at least the priority (``ulimit -r``; the image
  runs as a user without privileges, so in Docker ``--ulimit rtprio=N``, in compose
  ``ulimits: {rtprio: N}``) or ``CAP_SYS_NICE`` (root). Without either ``serve`` refuses to
  start and says so: a setting asked for and silently not applied would leave an operator
  measuring the wrong thing.
- One process is one thread of work, so it can take one core at most, and the kernel's
  real-time throttling (``kernel.sched_rt_runtime_us``, 95 % by default) applies. ``serve
  --workers N`` with real-time priority needs N below the cores the process may use: N
  real-time loops on N cores would leave PostgreSQL and Redis on the same machine nothing when
  the servers are saturated (``check_workers``).
- The policy carries ``SCHED_RESET_ON_FORK``: nothing the server starts inherits it.
"""

from __future__ import annotations

import os
from typing import Final

from authz.settings import SettingsError

__all__ = ["MAX_PRIORITY", "SchedulingError", "check_workers", "current", "run_realtime"]

MAX_PRIORITY: Final = 99  # SCHED_FIFO's range on Linux is 1..99

_HOW: Final = ("it needs an RLIMIT_RTPRIO of at least the priority (ulimit -r; Docker "
               "--ulimit rtprio=N, compose ulimits: {rtprio: N}) or CAP_SYS_NICE (root); or "
               "unset HOLDFAST_REALTIME_PRIORITY")


class SchedulingError(SettingsError):
    """The real-time policy asked for cannot be had (``serve`` exits 2 with the message, as for
    any other setting it cannot honour)."""


def run_realtime(priority: int) -> None:
    """Put the calling thread under ``SCHED_FIFO`` at ``priority`` (1..99), reset on fork."""
    if not 1 <= priority <= MAX_PRIORITY:
        raise SchedulingError(f"real-time priority must be 1 to {MAX_PRIORITY}, not {priority}")
    if not hasattr(os, "sched_setscheduler"):
        raise SchedulingError("HOLDFAST_REALTIME_PRIORITY needs Linux's sched_setscheduler")
    policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    try:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except PermissionError:
        raise SchedulingError(
            f"cannot run the server at real-time priority {priority}: {_HOW}") from None


def current() -> int:
    """The calling process's real-time priority, 0 under any other policy."""
    if not hasattr(os, "sched_getscheduler"):
        return 0
    policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
    if policy not in (os.SCHED_FIFO, os.SCHED_RR):
        return 0
    return int(os.sched_getparam(0).sched_priority)


def check_workers(workers: int, priority: int) -> None:
    """Refuse ``workers`` real-time server processes unless at least one core is left over."""
    if priority == 0:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores is not None and workers >= cores:
        raise SchedulingError(
            f"{workers} workers at real-time priority on {cores} cores would leave PostgreSQL "
            f"and Redis no core when the servers are saturated: use at most {cores - 1} "
            "workers, or unset HOLDFAST_REALTIME_PRIORITY")
