"""benchmarks/server_stages.py reads the stages of a request from Holdfast's own metrics: the
exposition here is the server's (authz.metrics.Metrics), fed known observations."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from authz.metrics import Metrics
from benchmarks import server_stages


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_each_stage_is_read_from_its_own_series() -> None:
    metrics = Metrics()
    # two label sets of the decision histogram: both count
    metrics.observe_decision("native", True, "approved", 0.002)
    metrics.observe_decision("lithic", False, "insufficient_funds", 0.004)
    metrics.observe_redis("decide", 0.0003)
    metrics.observe_redis("put", 0.5)  # another op: not the decision's
    metrics.observe_postgres("authorize", 0.0015)
    metrics.observe_postgres("authorize", 0.0025)
    metrics.observe_postgres("authorize_batch", 0.001)
    metrics.observe_postgres("follow_up", 0.9)  # another op
    metrics.pg_batch_size.observe(2)

    got = server_stages.means({}, server_stages.parse(_exposition(metrics)))

    assert got == pytest.approx({"decision": 0.003, "redis": 0.0003, "ledger_wait": 0.002,
                                 "ledger_call": 0.001, "batch": 2.0})


def test_means_cover_only_what_came_between_the_samples() -> None:
    metrics = Metrics()
    metrics.observe_postgres("authorize", 0.010)
    metrics.pg_batch_size.observe(1)
    before = server_stages.parse(_exposition(metrics))
    metrics.observe_postgres("authorize", 0.002)
    metrics.observe_postgres("authorize", 0.004)
    metrics.pg_batch_size.observe(8)
    after = server_stages.parse(_exposition(metrics))

    got = server_stages.means(before, after)

    assert got == pytest.approx({"ledger_wait": 0.003, "batch": 8.0})  # nothing else observed
    assert server_stages.parse("") == dict.fromkeys(server_stages.STAGES, (0.0, 0.0))
