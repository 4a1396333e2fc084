"""authz/fastmetrics.py against prometheus_client's own Histogram and Counter: the same
observations give the same exposition, ``_created`` series included (their values are the
times the label sets were first used: checked to lie within the test)."""

from __future__ import annotations

import random
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from authz.fastmetrics import FastCounter, FastHistogram

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.1, 1.0)


def _exposition(registry: CollectorRegistry, since: float, until: float) -> list[str]:
    """The exposition's lines, each ``_created`` sample's value checked to lie between
    ``since`` and ``until`` and then masked (the two registries' children were made apart)."""
    lines = []
    for line in generate_latest(registry).decode().splitlines():
        if not line.startswith("#") and "_created" in line:
            sample, _, value = line.rpartition(" ")
            assert since <= float(value) <= until, line
            lines.append(f"{sample} <created>")
        else:
            lines.append(line)
    return lines


def test_a_fast_histogram_exposes_what_prometheus_client_would() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("hf_test_seconds", "Test latency", ["op", "kind"], buckets=BUCKETS,
                          registry=theirs)
    since = time.time()
    fast = FastHistogram("hf_test_seconds", "Test latency", ["op", "kind"], BUCKETS)
    ours.register(fast)
    rng = random.Random(3)
    # values on the bounds too: le is "less or equal"
    values = [*BUCKETS, 0.0, 2.5, *(rng.expovariate(200) for _ in range(500))]
    for i, value in enumerate(values):
        labels = ("decide", "a") if i % 3 else ("authorize", "b")
        reference.labels(*labels).observe(value)
        fast.labels(*labels).observe(value)
    until = time.time()
    expected = _exposition(theirs, since, until)
    assert any('le="0.001"' in line for line in expected)
    assert 'hf_test_seconds_created{kind="a",op="decide"} <created>' in expected
    assert _exposition(ours, since, until) == expected


def test_a_fast_counter_exposes_what_prometheus_client_would() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("hf_test_decisions_total", "Test decisions", ["reason"], registry=theirs)
    since = time.time()
    fast = FastCounter("hf_test_decisions", "Test decisions", ["reason"])
    ours.register(fast)
    for reason, n in (("approved", 5), ("insufficient_funds", 2)):
        for _ in range(n):
            reference.labels(reason).inc()
            fast.labels(reason).inc()
    until = time.time()
    expected = _exposition(theirs, since, until)
    assert 'hf_test_decisions_total{reason="approved"} 5.0' in expected
    assert 'hf_test_decisions_created{reason="approved"} <created>' in expected
    assert _exposition(ours, since, until) == expected
