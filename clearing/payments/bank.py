"""The bank provider's command API (payee checks, payment submissions), as a small client.
The bank's field names live here and in ``webhooks.py`` only.

Every submission carries ``Idempotency-Key: <payment id>``, the same on every attempt, so a
retry after a timeout can only ever find the payment the first attempt made.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from clearing.payments.model import Beneficiary

__all__ = [
    "BankClient",
    "BankConfig",
    "BankRefused",
    "BankUnavailable",
    "PayeeCheck",
    "Submission",
]


@dataclass(frozen=True, slots=True)
class BankConfig:
    url: str  # e.g. http://127.0.0.1:8090/bank
    api_key: str | None = None
    submit_timeout_s: float = 2.0
    payee_check_timeout_s: float = 1.5


class BankUnavailable(Exception):
    """No answer we can act on (timeout, connection refused, 5xx): try again, same key."""


class BankRefused(Exception):
    """A definitive refusal (4xx): the bank made nothing."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"bank refused with {status} {code}")
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class PayeeCheck:
    result: str  # match | close_match | no_match | unavailable
    name: str | None  # the account holder's name, on a close match


@dataclass(frozen=True, slots=True)
class Submission:
    bank_payment_id: str
    duplicate: bool  # the bank had it already (an earlier attempt got through)


def _creditor(b: Beneficiary) -> dict[str, str]:
    if b.iban is not None:
        return {"name": b.name, "iban": b.iban}
    return {"name": b.name, "sort_code": b.sort_code or "",
            "account_number": b.account_number or ""}


class BankClient:
    def __init__(self, session: aiohttp.ClientSession, config: BankConfig) -> None:
        self._session = session
        self._config = config

    def _headers(self, key: str | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    async def _post(self, path: str, body: dict[str, Any], timeout_s: float,
                    key: str | None = None) -> tuple[int, dict[str, Any]]:
        try:
            async with asyncio.timeout(timeout_s), self._session.post(
                    self._config.url + path, data=orjson.dumps(body),
                    headers=self._headers(key)) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BankUnavailable(type(exc).__name__) from exc
        if status >= 500:
            raise BankUnavailable(f"HTTP {status}")
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise BankUnavailable("unparseable answer") from None
        if not isinstance(parsed, dict):
            raise BankUnavailable("unexpected answer")
        if status >= 400:
            error = parsed.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            raise BankRefused(status, str(code or "refused")[:64])
        return status, parsed

    async def check_payee(self, beneficiary: Beneficiary) -> PayeeCheck:
        _, body = await self._post("/v1/payee-checks", _creditor(beneficiary),
                                   self._config.payee_check_timeout_s)
        result = body.get("result")
        if result not in ("match", "close_match", "no_match", "unavailable"):
            raise BankUnavailable("unknown payee check result")
        name = body.get("name")
        return PayeeCheck(str(result), name if isinstance(name, str) else None)

    async def submit(self, payment_id: str, amount_minor: int, currency: str,
                     beneficiary: Beneficiary, reference: str) -> Submission:
        body = {"end_to_end_id": payment_id, "amount": amount_minor, "currency": currency,
                "creditor": _creditor(beneficiary), "reference": reference}
        status, answer = await self._post("/v1/payments", body, self._config.submit_timeout_s,
                                          key=payment_id)
        bank_id = answer.get("id")
        if not isinstance(bank_id, str) or not bank_id:
            raise BankUnavailable("submission answer without a payment id")
        return Submission(bank_id, duplicate=status == 200)
