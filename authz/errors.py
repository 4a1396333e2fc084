"""The API's error tree. Every rejection is an ``ApiError`` with an HTTP status and a stable
snake_case code; the error middleware renders it as ``{"error": {"code", "message"}}``.

    ApiError
    ├── BadRequest (400)        invalid_json, invalid_field, missing_field, unknown_currency, ...
    ├── Unauthorized (401)      missing_signature, bad_signature, stale_signature, missing_token,
    │                           bad_token
    ├── Forbidden (403)         insufficient_scope
    ├── NotFound (404)          not_found, unknown_account, unknown_card, unknown_authorization
    ├── Conflict (409)          idempotency_conflict, account_exists, card_conflict,
    │                           invalid_state, account_not_empty
    ├── PayloadTooLarge (413)   body_too_large
    ├── Unprocessable (422)     insufficient_funds, currency_mismatch (payments)
    ├── (429)                   rate_limited (authz.ratelimit answers it directly)
    └── Unavailable (503)       database_unavailable, cache_unavailable

Declines are results, not errors: an authorisation that is refused is a 200 with a reason.
Messages never contain a card number, a CVV or a secret.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
]


class ApiError(Exception):
    status = 500

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unprocessable(ApiError):
    """Well-formed, but the ledger cannot do it (funds, currency)."""

    status = 422


class Unavailable(ApiError):
    status = 503
