"""Prometheus metrics. One registry per app (tests build many apps in one process); label
children are bound once and cached, so the hot path pays one dict lookup per metric. The four
updated on every authorisation (decision latency, decisions by reason, Redis and PostgreSQL call
latency) are authz/fastmetrics.py's: the same series, a fraction of the cost."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from authz.fastmetrics import CounterChild, FastCounter, FastHistogram, HistogramChild

__all__ = ["Metrics"]

_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
_CALL_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decision_seconds = FastHistogram(
            "holdfast_decision_seconds", "Authorisation decision latency, request in to answer out",
            ["provider", "decision"], _LATENCY_BUCKETS,
        )
        self.decisions = FastCounter(
            "holdfast_decisions", "Authorisation decisions by reason", ["provider", "reason"])
        self.redis_seconds = FastHistogram(
            "holdfast_redis_call_seconds", "Redis call latency", ["op"], _CALL_BUCKETS)
        self.postgres_seconds = FastHistogram(
            "holdfast_postgres_call_seconds", "PostgreSQL call latency", ["op"], _CALL_BUCKETS)
        for collector in (self.decision_seconds, self.decisions, self.redis_seconds,
                          self.postgres_seconds):
            r.register(collector)
        self.pg_batch_size = Histogram(
            "holdfast_pg_batch_size", "Authorisations decided per ledger call (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )
        self.pg_batch_retries = Counter(
            "holdfast_pg_batch_retries_total",
            "Ledger batches that failed as a whole and were decided one request at a time",
            registry=r,
        )
        self.pg_batch_card_waits = Counter(
            "holdfast_pg_batch_card_waits_total",
            "Authorisations held for a later ledger call because their card was in one still "
            "running", registry=r,
        )
        self.redis_errors = Counter(
            "holdfast_redis_errors_total", "Redis calls that failed or timed out", ["op"],
            registry=r,
        )
        self.redis_connects = Counter(
            "holdfast_redis_hotpath_connects_total",
            "Connections opened by the decision's pipelined Redis connection (one at start; "
            "each more is a lost or replaced connection)", registry=r,
        )
        self.postgres_errors = Counter(
            "holdfast_postgres_errors_total", "PostgreSQL calls that failed", ["op"], registry=r,
        )
        self.realtime_priority = Gauge(
            "holdfast_realtime_priority",
            "The event loop's SCHED_FIFO priority (HOLDFAST_REALTIME_PRIORITY); 0: the fair "
            "scheduler", registry=r,
        )
        self.stand_in = Gauge(
            "holdfast_stand_in_active", "1 while decisions are made without Redis (stand-in)",
            registry=r,
        )
        self.auth_failures = Counter(
            "holdfast_webhook_auth_failures_total", "Rejected signatures or credentials",
            ["route", "code"], registry=r,
        )
        self.http_errors = Counter(
            "holdfast_http_errors_total", "Requests answered with an error", ["status", "code"],
            registry=r,
        )
        self.compensations = Counter(
            "holdfast_velocity_compensations_total",
            "Velocity counters given back after a decline, partial approval or replay",
            ["result"], registry=r,
        )
        self.cache_loads = Counter(
            "holdfast_policy_cache_loads_total", "Policy cache misses loaded from PostgreSQL",
            registry=r,
        )
        self.provider_unknown_values = Counter(
            "holdfast_provider_unknown_values_total",
            "Provider enum values (status, type, method) this version does not know",
            ["provider", "field"], registry=r,
        )
        self.deadline_exceeded = Counter(
            "holdfast_decision_deadline_exceeded_total",
            "Decisions answered issuer_unavailable because the ledger missed the deadline",
            registry=r)
        self.late_approvals = Counter(
            "holdfast_late_approvals_total",
            "Approvals the ledger committed after the deadline had answered a decline",
            registry=r)
        # refreshed every HOLDFAST_STATS_INTERVAL_S by the server from PostgreSQL
        self.inbox_pending = Gauge(
            "holdfast_inbox_pending", "Inbox events waiting for a consumer", registry=r)
        self.inbox_oldest_age = Gauge(
            "holdfast_inbox_oldest_pending_age_seconds", "Age of the oldest pending inbox event",
            registry=r)
        self.quarantined = Gauge(
            "holdfast_events_quarantined", "Inbox events parked in quarantine", registry=r)
        self.open_holds = Gauge(
            "holdfast_open_holds", "Open holds", ["currency"], registry=r)
        self.open_holds_amount = Gauge(
            "holdfast_open_holds_amount", "Amount held by open holds, minor units",
            ["currency"], registry=r)
        self.sweep_lag = Gauge(
            "holdfast_sweep_lag_seconds", "How long the oldest hold past its window has waited",
            registry=r)
        self._decision: dict[tuple[str, str], HistogramChild] = {}
        self._reason: dict[tuple[str, str], CounterChild] = {}
        self._redis: dict[str, HistogramChild] = {}
        self._postgres: dict[str, HistogramChild] = {}

    def observe_decision(self, provider: str, approved: bool, reason: str, seconds: float) -> None:
        decision = "approve" if approved else "decline"
        hist = self._decision.get((provider, decision))
        if hist is None:
            hist = self._decision[(provider, decision)] = self.decision_seconds.labels(
                provider, decision
            )
        hist.observe(seconds)
        counter = self._reason.get((provider, reason))
        if counter is None:
            counter = self._reason[(provider, reason)] = self.decisions.labels(provider, reason)
        counter.inc()

    def observe_redis(self, op: str, seconds: float) -> None:
        hist = self._redis.get(op)
        if hist is None:
            hist = self._redis[op] = self.redis_seconds.labels(op)
        hist.observe(seconds)

    def observe_postgres(self, op: str, seconds: float) -> None:
        hist = self._postgres.get(op)
        if hist is None:
            hist = self._postgres[op] = self.postgres_seconds.labels(op)
        hist.observe(seconds)
