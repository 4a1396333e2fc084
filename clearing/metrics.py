"""Metrics of the background consumers (exported by ``holdfast consumers`` on its own port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ConsumerMetrics"]


class ConsumerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.applied = Counter(
            "holdfast_events_applied_total", "Inbox events applied, by type and outcome",
            ["type", "outcome"], registry=r)
        self.apply_seconds = Histogram(
            "holdfast_event_apply_seconds", "Time to apply one inbox event", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.requeued = Counter(
            "holdfast_events_requeued_total",
            "Quarantined events put back because what they reference has appeared", registry=r)
        self.sweep_holds = Counter(
            "holdfast_sweep_holds_expired_total", "Holds released by the expiry sweep",
            registry=r)
        self.sweep_amount = Counter(
            "holdfast_sweep_amount_released_total",
            "Minor units released by the expiry sweep (all currencies)", registry=r)
        self.sweep_seconds = Histogram(
            "holdfast_sweep_batch_seconds", "Duration of one expiry batch", registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.sweep_last_run = Gauge(
            "holdfast_sweep_last_run_timestamp_seconds", "When the expiry sweep last finished",
            registry=r)
        self.deltas_rolled_up = Counter(
            "holdfast_settlement_deltas_rolled_up_total",
            "Settlement-side balance deltas applied to their accounts", registry=r)
