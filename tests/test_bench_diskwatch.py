"""benchmarks/diskwatch.py: the disks' writes sampled beside a run, and whether a run's slowest
requests were due in the moments of a write burst."""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.diskwatch import DiskWatch, _written_bytes, burst_share

_HERE = Path(__file__).parent


def _on_a_block_device(directory: Path) -> bool:
    """Whether the files written in ``directory`` reach a block device (not tmpfs or an overlay,
    whose device numbers name no entry in /sys/dev/block)."""
    dev = directory.stat().st_dev
    return Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").exists()


_LINE = "{major} {minor} {name} 10 0 80 5 {writes} 0 {sectors} 40 0 30 45"


def test_only_the_named_disks_written_sectors_count() -> None:
    text = "\n".join([_LINE.format(major=254, minor=0, name="vda", writes=7, sectors=2048),
                      _LINE.format(major=254, minor=1, name="vda1", writes=7, sectors=2048),
                      _LINE.format(major=7, minor=0, name="loop0", writes=1, sectors=999)])
    assert _written_bytes(frozenset({"vda"}), text) == 2048 * 512


def _slices(start: float, seconds: float, bursts: set[int]) -> list[tuple[float, float]]:
    """100-ms slices from ``start`` (each at its end time), 300 MB/s in the numbered ones."""
    return [(start + (k + 1) / 10, 300.0 if k in bursts else 8.0)
            for k in range(int(seconds * 10))]


def test_requests_due_in_a_burst_or_just_after_it_count_as_near_it() -> None:
    start = 1_000_000.0
    samples = _slices(start - 1, 12, bursts={35})  # one burst slice: 2.5 to 2.6 s into the window
    due = [2_550.0, 2_800.0, 2_450.0, 2_300.0, 5_000.0]  # in it, 0.2 s after, 0.05 s before,
    share = burst_share(samples, start, 10.0, due)      # 0.2 s before, far away
    assert share is not None
    assert share.requests == pytest.approx(3 / 5)
    # the time near that one slice: (0.3 s after + the slice + 0.1 s before) of 10 s
    assert share.time == pytest.approx(0.05, abs=0.011)
    assert str(share) == "60% (5%)"


def test_without_samples_over_the_window_or_without_requests_there_is_no_share() -> None:
    start = 1_000_000.0
    assert burst_share([], start, 10.0, [100.0]) is None
    assert burst_share(_slices(start, 4, set()), start, 10.0, [100.0]) is None  # ended early
    assert burst_share(_slices(start - 1, 12, set()), start, 10.0, []) is None
    quiet = burst_share(_slices(start - 1, 12, set()), start, 10.0, [100.0, 9_000.0])
    assert quiet is not None and quiet.requests == 0 and quiet.time == 0


@pytest.mark.skipif(not Path("/proc/diskstats").exists() or not _on_a_block_device(_HERE),
                    reason="needs Linux /proc/diskstats and this checkout on a block device")
def test_the_watch_samples_while_a_file_is_written_and_synced() -> None:
    watch = DiskWatch(interval_s=0.05)
    watch.start()
    with tempfile.NamedTemporaryFile(dir=_HERE) as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
        time.sleep(0.3)
    samples = watch.stop()
    assert len(samples) >= 4
    assert all(b[0] > a[0] for a, b in itertools.pairwise(samples))
    # the 4 MiB (and its metadata) reached a disk while the watch ran
    assert sum(mb_s * 0.05 for _, mb_s in samples) > 3.0
