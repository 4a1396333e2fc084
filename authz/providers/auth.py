"""Provider authentication, checked on the raw bytes before anything parses them.

- Lithic (ASA and events): Standard Webhooks. ``webhook-id``, ``webhook-timestamp`` and
  ``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>`` values) over
  ``"<id>.<timestamp>.<raw body>"``, keyed with the base64-decoded ``whsec_`` secret, +-tolerance.
- Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` over ``"<t>.<raw body>"``.
- Marqeta: HTTP Basic (``user:password`` entries), plus ``X-Marqeta-Signature`` (hex HMAC-SHA1 or
  HMAC-SHA256 of the raw body) required whenever an HMAC secret is configured. Marqeta signs no
  timestamp, so its replay protection is the idempotency of the JIT token and transaction token.

Every check compares each candidate against each active secret without an early exit (rotation,
constant time). Failures raise ``Unauthorized`` with a stable code; messages never echo a value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Final

from authz.errors import Unauthorized
from authz.settings import Secret

__all__ = [
    "sign_marqeta",
    "sign_standard_webhook",
    "sign_stripe",
    "verify_marqeta",
    "verify_standard_webhook",
    "verify_stripe",
]

_MAX_HEADER: Final = 2048
# Standard Webhooks message ids are short opaque strings; the inbox keeps ids of up to 255 bytes
_MAX_MESSAGE_ID: Final = 255


def _ascii(value: str) -> bytes | None:
    """Header text as bytes for a constant-time compare; None for anything that is not plain
    ASCII (it cannot be a valid signature, and must not become an encoding error)."""
    return value.encode() if value.isascii() else None


def _timestamp(value: str, now_s: float, tolerance_s: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise Unauthorized("bad_signature", "signature timestamp is malformed")
    timestamp = int(value)
    if abs(now_s - timestamp) > tolerance_s:
        raise Unauthorized("stale_signature", "signature timestamp outside the replay window")
    return timestamp


def _whsec_key(secret: Secret) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret; None for a secret that does not decode (it
    then matches nothing: fail closed rather than guess)."""
    raw = secret.reveal()
    raw = raw.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


def sign_standard_webhook(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value Lithic sends (tests, sandbox, benchmarks)."""
    key = _whsec_key(Secret(secret))
    if key is None:
        raise ValueError("not a whsec_ secret")
    signed = f"{message_id}.{timestamp}.".encode() + body
    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{mac}"


def verify_standard_webhook(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[Secret], now_s: float,
    tolerance_s: int,
) -> str:
    """Verify a Standard Webhooks signature; returns the message id (the delivery's identity)."""
    message_id = headers.get("webhook-id")
    timestamp_raw = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    if not message_id or not timestamp_raw or not signature:
        raise Unauthorized(
            "missing_signature",
            "webhook-id, webhook-timestamp and webhook-signature headers are required",
        )
    if (len(message_id) > _MAX_MESSAGE_ID or not message_id.isascii()
            or not message_id.isprintable() or len(signature) > _MAX_HEADER):
        raise Unauthorized("bad_signature", "webhook signature headers are malformed")
    timestamp = _timestamp(timestamp_raw.strip(), now_s, tolerance_s)
    candidates: list[bytes] = []
    for part in signature.split():
        version, _, value = part.partition(",")
        candidate = _ascii(value)
        if version == "v1" and candidate:
            candidates.append(candidate)
    if not candidates:
        raise Unauthorized("bad_signature", "webhook-signature carries no v1 signature")
    signed = f"{message_id}.{timestamp}.".encode() + body
    matched = False
    for secret in secrets:
        key = _whsec_key(secret)
        if key is None:
            continue
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("bad_signature", "signature does not match")
    return message_id


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_stripe(
    header: str | None, body: bytes, secrets: Sequence[Secret], now_s: float, tolerance_s: int
) -> None:
    if not header:
        raise Unauthorized("missing_signature", "Stripe-Signature header is required")
    if len(header) > _MAX_HEADER:
        raise Unauthorized("bad_signature", "Stripe-Signature header is malformed")
    timestamp_raw: str | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        candidate = _ascii(value)
        if key == "t":
            timestamp_raw = value
        elif key == "v1" and candidate:
            candidates.append(candidate)
    if timestamp_raw is None or not candidates:
        raise Unauthorized("bad_signature", "Stripe-Signature must carry t= and v1=")
    timestamp = _timestamp(timestamp_raw, now_s, tolerance_s)
    signed = f"{timestamp}.".encode() + body
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.reveal().encode(), signed, hashlib.sha256).hexdigest().encode()
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("bad_signature", "signature does not match")


def sign_marqeta(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def _basic_credentials(header: str | None) -> bytes:
    if not header:
        raise Unauthorized("missing_credentials", "HTTP Basic credentials are required")
    scheme, _, encoded = header.strip().partition(" ")
    if (scheme.lower() != "basic" or not encoded or len(encoded) > _MAX_HEADER
            or not encoded.isascii()):
        raise Unauthorized("bad_credentials", "HTTP Basic credentials are malformed")
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("bad_credentials", "HTTP Basic credentials are malformed") from None


def verify_marqeta(
    authorization: str | None, signature: str | None, body: bytes,
    basic_auth: Sequence[Secret], hmac_secrets: Sequence[Secret],
) -> None:
    """Basic auth always; the HMAC signature too when secrets are configured. With no Basic
    credentials configured nothing is accepted (fail closed)."""
    given = _basic_credentials(authorization)
    matched = False
    for entry in basic_auth:
        # the whole "user:password" is compared, so neither half leaks through timing
        matched |= hmac.compare_digest(given, entry.reveal().encode())
    if not matched:
        raise Unauthorized("bad_credentials", "HTTP Basic credentials are not valid")
    if not hmac_secrets:
        return
    if not signature:
        raise Unauthorized("missing_signature", "X-Marqeta-Signature header is required")
    candidate = _ascii(signature.strip().lower())
    if candidate is None or len(candidate) > _MAX_HEADER:
        raise Unauthorized("bad_signature", "X-Marqeta-Signature header is malformed")
    matched = False
    for secret in hmac_secrets:
        key = secret.reveal().encode()
        # Marqeta signs with SHA-1 or SHA-256 (per webhook configuration; both during a switch)
        for algorithm in ("sha1", "sha256"):
            expected = hmac.new(key, body, algorithm).hexdigest().encode()
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("bad_signature", "signature does not match")
