"""What the disks wrote, every 100 ms, beside an open-loop run: whether its slowest requests were
due in the moments when the kernel wrote much at once.

Each commit waits for its WAL flush; when the kernel's periodic writeback sends tens of MB of
table pages to the same disk in a fraction of a second, the flushes queue behind them (session
20: after a burst of writes, 22 % of the slowest 1 % of requests fell in the 4 % of the time
when the disk wrote more than 25 MB/s). A thread reads ``/proc/diskstats`` (whole disks only)
while the run goes on; elsewhere it records nothing and every figure is absent.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["BurstShare", "DiskWatch", "burst_share"]

_DISKSTATS: Final = Path("/proc/diskstats")
_SYS_BLOCK: Final = Path("/sys/block")
_NOT_DISKS: Final = ("loop", "ram", "zram", "dm-", "md", "sr")
_SECTOR: Final = 512


def _disks() -> frozenset[str]:
    try:
        names = [p.name for p in _SYS_BLOCK.iterdir()]
    except OSError:
        return frozenset()
    return frozenset(n for n in names if not n.startswith(_NOT_DISKS))


def _written_bytes(disks: frozenset[str], text: str) -> int:
    total = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 9 and fields[2] in disks:
            total += int(fields[9]) * _SECTOR  # sectors written
    return total


class DiskWatch:
    """Samples the bytes the disks wrote every ``interval_s``, from start() to stop()."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (wall-clock end of a slice, MB/s in it)
        self._disks = _disks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._disks and _DISKSTATS.exists():
            self._thread = threading.Thread(target=self._run, name="diskwatch", daemon=True)
            self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples

    def _run(self) -> None:
        before, at = _written_bytes(self._disks, _DISKSTATS.read_text()), time.time()
        while not self._stop.wait(self.interval_s):
            now, written = time.time(), _written_bytes(self._disks, _DISKSTATS.read_text())
            self.samples.append((now, (written - before) / 1e6 / max(now - at, 1e-6)))
            before, at = written, now


@dataclass(frozen=True, slots=True)
class BurstShare:
    requests: float  # share of the given due times near a burst
    time: float  # share of the window's time near one (what chance alone would give)

    def __str__(self) -> str:
        return f"{self.requests:.0%} ({self.time:.0%})"


def burst_share(samples: Sequence[tuple[float, float]], window_start: float, window_s: float,
                due_ms: Sequence[float], *, interval_s: float = 0.1, threshold_mb_s: float = 25.0,
                before_s: float = 0.3, after_s: float = 0.1) -> BurstShare | None:
    """How many of ``due_ms`` (ms from ``window_start``, a Unix time) were due during a slice
    in which the disks wrote more than ``threshold_mb_s``, or up to ``before_s`` after one (the
    flushes queued behind it drain after it), or ``after_s`` before one (a request in flight
    when it began), against the share of the window's time that is; None without samples
    covering the window, or without due times."""
    if not due_ms or not samples or samples[0][0] > window_start + 1.0 \
            or samples[-1][0] < window_start + window_s - 1.0:
        return None
    ends = [t for t, _ in samples]

    def near(t: float) -> bool:
        # a slice covers (end - interval, end]: it meets [t - before, t + after] when its end
        # is in (t - before, t + after + interval]
        lo = bisect.bisect_right(ends, t - before_s)
        hi = bisect.bisect_right(ends, t + after_s + interval_s)
        return any(samples[k][1] > threshold_mb_s for k in range(lo, hi))

    hits = sum(near(window_start + d / 1000) for d in due_ms)
    points = [window_start + window_s * k / 200 for k in range(200)]
    return BurstShare(hits / len(due_ms), sum(near(t) for t in points) / len(points))
