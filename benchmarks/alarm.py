"""An alarm for the load generator: wake the event loop at a given ``time.perf_counter()`` instant,
to within tens of microseconds.

The open loop's requests are due at instants fixed in advance, on average 1 ms apart at 1,000/s.
The event loop's own timers cannot keep those appointments: uvloop (libuv) counts time in whole
milliseconds and asyncio's selector loop rounds its poll timeout up to one, so a request was
sent 0.2 ms after its due time at the median and 0.5 ms at p99 (measured here: delays of
0.3-0.9 ms asked of uvloop's ``call_later``, which also went off up to 0.78 ms *early*: the
client then polled until the time came), and the arrivals clumped on millisecond ticks. That
lag is the client's, but latency is counted from the due time, so it was charged to the server
under test (both servers alike).

On Linux a ``timerfd`` armed at an absolute ``CLOCK_MONOTONIC`` time (the clock behind
``perf_counter`` there) becomes readable when it expires; the loop polls it with its sockets, so
the wake-up is as precise as the kernel's high-resolution timers (here 10 µs late at the median,
52 at p99) and costs no thread and no busy wait. Elsewhere, or with ``precise=False``, the alarm
is the loop's ``call_later``, as before.

A punctual alarm is not enough on two cores that the servers keep busy: woken, the client may
still wait for a core (its sends 1.1-1.6 ms late at p99 beside Holdfast at 1,000/s, 0.2-0.3 beside
the raw stack: a bias against the busier server). ``realtime_allowed`` says whether the client may
run under SCHED_FIFO (``CLIENT_PRIORITY``), which the benchmarks' open loop then does by default
(then 0.06-0.09 ms).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["CLIENT_PRIORITY", "Alarm", "lateness", "realtime_allowed", "timerfd_available"]

_CLOCK_MONOTONIC: Final = 1
_TFD_NONBLOCK: Final = os.O_NONBLOCK
_TFD_CLOEXEC: Final = 0o2000000  # O_CLOEXEC on Linux
_TFD_TIMER_ABSTIME: Final = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not hasattr(os, "O_NONBLOCK"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    if not (hasattr(libc, "timerfd_create") and hasattr(libc, "timerfd_settime")):
        return None
    return libc


def timerfd_available() -> bool:
    """A timerfd can be made and ``perf_counter`` reads the clock it is armed on."""
    info = time.get_clock_info("perf_counter")
    return "CLOCK_MONOTONIC" in info.implementation and _libc() is not None


class Alarm:
    """Calls ``callback`` once per :meth:`set`, at (never before) the instant given; setting it
    again before it went off replaces the earlier instant."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None],
                 *, precise: bool = True) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = float("inf")
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        if precise and timerfd_available():
            libc = _libc()
            assert libc is not None
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd, self._libc = fd, libc
                loop.add_reader(fd, self._expired)

    @property
    def precise(self) -> bool:
        """Whether a timerfd keeps the appointments (else the loop's own timer)."""
        return self._fd >= 0

    def set(self, at: float) -> None:
        """Go off at ``at`` (``time.perf_counter()`` seconds); at once if that has passed."""
        self._at = at
        if self._libc is None:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_later(max(0.0, at - time.perf_counter()),
                                                 self._fire)
            return
        # (an instant already passed expires at once; only zero would disarm the timer)
        at = max(at, 1e-9)
        sec = int(at)
        value = _Timespec(sec, int((at - sec) * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), value)
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _expired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expirations since the last read (we need only "some")
        except BlockingIOError:  # re-armed after it became readable: not yet due
            return
        self._fire()

    def _fire(self) -> None:
        self._handle = None
        if time.perf_counter() < self._at:
            # early: uvloop rounds a delay to whole milliseconds against a clock read once per
            # loop iteration (seen up to 0.78 ms early here); a timerfd never is
            self.set(self._at)
            return
        self._at = float("inf")
        self._callback()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._libc = None


async def lateness(delays: Sequence[float], *, precise: bool = True
                   ) -> tuple[list[float], float]:
    """Keep one appointment after another, each ``delays[k]`` s after the one before was kept:
    how late each was kept, in µs, and this process's CPU per appointment, in µs
    (benchmarks/client_timer.py; the benchmark report's machine section)."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    state: dict[str, float] = {}
    done: asyncio.Future[None] = loop.create_future()
    index = [0]

    def ring() -> None:
        late.append((time.perf_counter() - state["at"]) * 1e6)
        index[0] += 1
        if index[0] == len(delays):
            done.set_result(None)
            return
        state["at"] = time.perf_counter() + delays[index[0]]
        alarm.set(state["at"])

    alarm = Alarm(loop, ring, precise=precise)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        state["at"] = time.perf_counter() + delays[0]
        alarm.set(state["at"])
        await done
    finally:
        alarm.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return late, cpu / len(delays) * 1e6


# the open-loop client's SCHED_FIFO priority where the machine allows one (benchmarks.run and
# benchmarks.ab: --client-realtime); below the servers' HOLDFAST_REALTIME_PRIORITY examples
CLIENT_PRIORITY: Final = 10


def realtime_allowed(priority: int = CLIENT_PRIORITY) -> bool:
    """Whether a process of this user may put itself under SCHED_FIFO at ``priority`` (tried in
    a child process, so this one's scheduling is untouched)."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    probe = ("import os; os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, "
             f"os.sched_param({priority}))")
    try:
        return subprocess.run([sys.executable, "-c", probe], check=False,
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
