"""benchmarks/ab.py's report: every round side by side, the rounds' medians, the pooled
percentiles and the rounds each side won, from known latencies."""

from __future__ import annotations

import argparse

from benchmarks import halt_poll
from benchmarks.ab import _report, _Side
from benchmarks.loadgen import Result


def _run(latencies_ms: list[float], steal_s: float | None = None) -> Result:
    us = [int(x * 1000) for x in latencies_ms]
    cpu = {} if steal_s is None else {"steal": steal_s, "capacity": 2.0}
    return Result(mode="open", target_rate=1000.0, duration_s=1.0, completed=len(us), errors=0,
                  throughput=float(len(us)), latencies_us=us, service_us=us, lag_us=[0] * len(us),
                  cpu_s=cpu)


def _side(label: str, runs: list[list[float]], steal_s: list[float | None]) -> _Side:
    side = _Side(label, f"db_{label[0].lower()}", "", "p:", None, schema="0017")
    side.open_runs = [_run(r, s) for r, s in zip(runs, steal_s, strict=True)]
    return side


def test_the_report_sets_each_round_beside_the_other_and_counts_the_rounds_won() -> None:
    args = argparse.Namespace(rate=1000.0, arrivals="poisson", connections=64, rounds=2,
                              seconds=1.0, other="abc1234", concurrency=0, cards=10_000,
                              cards_per_account=1, client_realtime=10, guest_halt_poll=None)
    # 100 samples a run: p99 is the 99th value; A's is lower in round 1, higher in round 2
    # steal over 2 core-seconds: A's second round 0.5 s (25 %), B's first unknown
    a = _side("A", [[1.0] * 98 + [5.0, 9.0], [2.0] * 98 + [8.0, 8.0]], [0.0, 0.5])
    b = _side("B (abc1234)", [[1.5] * 98 + [7.0, 7.0], [2.5] * 98 + [6.0, 6.0]], [None, 0.02])
    text = _report(args, a, b, "def5678")
    assert "A = this tree (def5678, schema through 0017); B = abc1234" in text
    assert "| 1 | 1.00 | 1.50 | 5.00 | 7.00 | 0.71 | 0% / - | - / - | - / - | 0 |" in text
    assert "| 2 | 2.00 | 2.50 | 8.00 | 6.00 | 1.33 | 25% / 1% | - / - | - / - | 0 |" in text
    assert "| p50, median of rounds | 1.50 | 2.00 | 0.75 |" in text
    assert "| p99, median of rounds | 6.50 | 6.50 | 1.00 |" in text
    assert "| rounds with the lower p99 | 1 | 1 |  |" in text
    # the machine's idle setting, as halt_poll reads it here; a run that set its own says so
    assert f"Idle CPUs: {halt_poll.describe(halt_poll.read())}." in text
    args.guest_halt_poll = 2_000_000
    assert "(--guest-halt-poll; the machine's own setting put back after)." in _report(
        args, a, b, "def5678")


def test_a_round_with_due_times_says_where_its_slowest_requests_came() -> None:
    args = argparse.Namespace(rate=1000.0, arrivals="poisson", connections=64, rounds=1,
                              seconds=1.0, other="abc1234", concurrency=0, cards=10_000,
                              cards_per_account=1, client_realtime=10, guest_halt_poll=None)
    # 200 answers a run, so its slowest 1 % is two: A's were due in the first fifth of its
    # 1-s window, B's in the last two fifths
    a = _side("A", [[1.0] * 198 + [5.0, 9.0]], [0.0])
    b = _side("B (abc1234)", [[1.5] * 198 + [7.0, 7.0]], [0.0])
    a.open_runs[0].due_ms = [500.0] * 198 + [10.0, 150.0]
    b.open_runs[0].due_ms = [100.0] * 198 + [700.0, 950.0]
    text = _report(args, a, b, "def5678")
    assert "| 100/0/0/0/0 / 0/0/0/50/50 |" in text
