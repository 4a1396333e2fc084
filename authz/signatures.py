"""Webhook authenticity, checked on the raw bytes before anything parses them.

Native scheme: ``Holdfast-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
Several ``v1`` values may be sent and several secrets may be active (rotation): any match passes.
Comparisons are constant-time; a timestamp outside the tolerance is refused (replay window).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from authz.errors import Unauthorized
from authz.settings import Secret

__all__ = ["sign_native", "verify_native"]

_MAX_HEADER = 1024


def sign_native(secret: str, timestamp: int, body: bytes) -> str:
    """The header value a card processor sends (used by tests, the demo and the benchmarks)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_native(
    header: str | None, body: bytes, secrets: Sequence[Secret], now_s: float, tolerance_s: int
) -> None:
    if not header:
        raise Unauthorized("missing_signature", "Holdfast-Signature header is required")
    if len(header) > _MAX_HEADER:
        raise Unauthorized("bad_signature", "Holdfast-Signature header is malformed")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise Unauthorized("bad_signature", "Holdfast-Signature must carry t= and v1=")
    if abs(now_s - timestamp) > tolerance_s:
        raise Unauthorized("stale_signature", "signature timestamp outside the replay window")
    signed = f"{timestamp}.".encode() + body
    matched = False
    for secret in secrets:
        # (the one-shot C call: no Python HMAC object per request)
        expected = hmac.digest(secret.reveal().encode(), signed, "sha256").hex()
        for candidate in candidates:
            # no early exit: every pair is compared, so timing says nothing about which matched
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("bad_signature", "signature does not match")
