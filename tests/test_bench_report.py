"""benchmarks/report.py: where in an open-loop run its slowest requests were due."""

from __future__ import annotations

from benchmarks.loadgen import Result
from benchmarks.report import slowest_by_fifth


def _run(latencies_ms: list[float], due_ms: list[float], duration_s: float = 10.0) -> Result:
    us = [int(x * 1000) for x in latencies_ms]
    return Result(mode="open", target_rate=1000.0, duration_s=duration_s, completed=len(us),
                  errors=0, throughput=len(us) / duration_s, latencies_us=us, service_us=us,
                  lag_us=[0] * len(us), due_ms=due_ms)


def test_the_slowest_one_percent_is_placed_by_the_fifth_of_the_window_it_was_due_in() -> None:
    # 1,000 answers over 10 s, one every 10 ms; the ten slowest: six in the first 2 s, one in
    # each of the next three fifths, one at the very end (the last fifth's closing instant)
    due = [i * 10.0 for i in range(1_000)]
    latency = [2.0] * 1_000
    for i in (0, 30, 60, 90, 120, 150, 250, 450, 650, 999):
        latency[i] = 20.0
    latency[500] = 15.0  # the eleventh slowest: not in the tail of ten
    assert slowest_by_fifth(_run(latency, due)) == "60/10/10/10/10"


def test_a_due_time_past_the_window_counts_in_its_last_fifth() -> None:
    # answers due in the drain after the window closed still belong to the run's end
    due = [float(i) for i in range(100)]
    latency = [1.0] * 99 + [9.0]
    due[99] = 10_500.0
    assert slowest_by_fifth(_run(latency, due)) == "0/0/0/0/100"


def test_without_due_times_or_a_tail_there_is_nothing_to_place() -> None:
    assert slowest_by_fifth(_run([1.0] * 500, [])) == "-"  # a closed loop, or keep_due off
    assert slowest_by_fifth(_run([1.0] * 99, [0.0] * 99)) == "-"  # fewer than 100 answers
    assert slowest_by_fifth(_run([1.0] * 200, [0.0] * 199)) == "-"  # not one per answer
