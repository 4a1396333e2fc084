"""Payments metrics: what the worker does (counters, latency) and, refreshed from PostgreSQL by
the server, where payments stand (gauges). Registered on the caller's registry, so they are
served with the process's other metrics."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from clearing.payments.stats import PaymentStats

__all__ = ["PaymentGauges", "PaymentMetrics"]

_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PaymentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.payee_checks = Counter(
            "holdfast_payee_checks_total", "Confirmation of Payee answers, by result",
            ["result"], registry=r)
        self.submissions = Counter(
            "holdfast_payment_submissions_total",
            "Payment submissions to the bank by outcome (ok, duplicate: the bank had it from an "
            "earlier attempt, refused)", ["outcome"], registry=r)
        self.outbox_retries = Counter(
            "holdfast_payment_outbox_retries_total",
            "Outbox calls to the bank that timed out or failed and will be retried", ["kind"],
            registry=r)
        self.submission_seconds = Histogram(
            "holdfast_payment_submission_seconds", "Bank submission call latency",
            buckets=_BUCKETS, registry=r)
        self.bank_events = Counter(
            "holdfast_bank_events_applied_total", "Bank webhooks applied, by kind and outcome",
            ["kind", "outcome"], registry=r)
        self.bank_events_requeued = Counter(
            "holdfast_bank_events_requeued_total",
            "Quarantined bank facts put back because their payment moved on", registry=r)


class PaymentGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.by_state = Gauge("holdfast_payments", "Payments by state", ["state"], registry=r)
        self.outbox_pending = Gauge(
            "holdfast_payment_outbox_pending", "Outbox jobs waiting for the bank", registry=r)
        self.outbox_oldest_age = Gauge(
            "holdfast_payment_outbox_oldest_age_seconds",
            "Age of the oldest pending outbox job", registry=r)
        self.outbox_failed = Gauge(
            "holdfast_payment_outbox_failed", "Outbox jobs parked for an operator", registry=r)
        self.bank_events_pending = Gauge(
            "holdfast_bank_events_pending", "Bank webhooks waiting to be applied", registry=r)
        self.bank_events_quarantined = Gauge(
            "holdfast_bank_events_quarantined", "Bank webhooks in quarantine", registry=r)
        self.suspense_credits = Gauge(
            "holdfast_suspense_credits", "Inbound credits that went to suspense", registry=r)
        self.reconciliation_breaks = Gauge(
            "holdfast_reconciliation_breaks",
            "Breaks found by the latest reconciliation, by kind", ["kind"], registry=r)

    def update(self, stats: PaymentStats) -> None:
        for state, count in stats.by_state.items():
            self.by_state.labels(state).set(count)
        self.outbox_pending.set(stats.outbox_pending)
        self.outbox_oldest_age.set(stats.outbox_oldest_age_s)
        self.outbox_failed.set(stats.outbox_failed)
        self.bank_events_pending.set(stats.bank_events_pending)
        self.bank_events_quarantined.set(stats.bank_events_quarantined)
        self.suspense_credits.set(stats.suspense_credits)
        for kind, count in stats.reconciliation_breaks.items():
            self.reconciliation_breaks.labels(kind).set(count)
