"""The sandbox's settings: where Holdfast is, the secrets it shares with it, and how badly the
network should behave. Rates are probabilities (0..1), not money."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

__all__ = ["SandboxConfig", "sign"]


@dataclass(slots=True)
class SandboxConfig:
    holdfast_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8090
    native_secret: str = "dev-webhook-secret"  # noqa: S105 (development default)
    bank_webhook_secret: str = "dev-bank-webhook-secret"  # noqa: S105 (development default)
    stripe_secret: str | None = None
    bank_api_key: str | None = None
    admin_token: str | None = None  # the demo's management calls (payments, accounts)
    # webhook delivery
    delay_ms: int = 50
    jitter_ms: int = 50
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    failure_rate: float = 0.0  # a delivery attempt or a bank API call fails (503)
    delivery_attempts: int = 8
    # the bank
    timeout_rate: float = 0.0  # a submission is recorded but answered too late
    hang_s: float = 5.0
    reject_rate: float = 0.0  # an accepted payment is later rejected
    seed: int = 1


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``: the scheme Holdfast checks for
    native calls, the bank's webhooks and (with its own header) Stripe."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"
