"""Where a Holdfast request's time went, server side: means over one benchmark run from the
server's own histograms on ``/metrics``, sampled before and after the run.

The stages nest: a request's time in the server (``decision``, request in to answer out) holds
its Redis decision (``redis``) and its wait for the ledger (``ledger_wait``: from handing it to
the group-commit batcher until its answer is back, a free slot's wait included), which holds the
ledger call it went out in (``ledger_call``, shared by the ``batch`` authorisations of that
call). What is left of ``decision`` is reading the body, its signature, parsing it and the
decision's own steps; aiohttp's parsing before the handler and the answer's encoding and write
fall outside it (authz/routes/native.py times the handler).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["STAGES", "Sample", "means", "parse", "sample"]

# key: (metric family, the labels a sample must carry to count)
STAGES: Final[Mapping[str, tuple[str, Mapping[str, str]]]] = {
    "decision": ("holdfast_decision_seconds", {}),
    "redis": ("holdfast_redis_call_seconds", {"op": "decide"}),
    "ledger_wait": ("holdfast_postgres_call_seconds", {"op": "authorize"}),
    "ledger_call": ("holdfast_postgres_call_seconds", {"op": "authorize_batch"}),
    "batch": ("holdfast_pg_batch_size", {}),
}

Sample = dict[str, tuple[float, float]]  # key -> (sum, count), over every matching label set


def parse(exposition: str) -> Sample:
    """Each stage's sum and count in a Prometheus text exposition (0, 0 when absent)."""
    totals = dict.fromkeys(STAGES, (0.0, 0.0))
    wanted = {family for family, _ in STAGES.values()}
    for family in text_string_to_metric_families(exposition):
        if family.name not in wanted:
            continue
        for key, (name, labels) in STAGES.items():
            if name != family.name:
                continue
            for s in family.samples:
                if any(s.labels.get(k) != v for k, v in labels.items()):
                    continue
                total, count = totals[key]
                if s.name == f"{name}_sum":
                    totals[key] = (total + s.value, count)
                elif s.name == f"{name}_count":
                    totals[key] = (total, count + s.value)
    return totals


def means(before: Sample, after: Sample) -> dict[str, float]:
    """Each stage's mean over what was observed between the two samples (stages with no new
    observation left out)."""
    out = {}
    for key in STAGES:
        total_0, count_0 = before.get(key, (0.0, 0.0))
        total_1, count_1 = after.get(key, (0.0, 0.0))
        if count_1 > count_0:
            out[key] = (total_1 - total_0) / (count_1 - count_0)
    return out


async def sample(port: int) -> Sample | None:
    """The server's stages now, or None when its ``/metrics`` cannot be read."""
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/metrics",
                timeout=aiohttp.ClientTimeout(total=5)) as response:
            return parse(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return None
