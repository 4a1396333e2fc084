"""Provider test helpers: the public fixtures, clients that sign each provider's way, request
builders derived from the fixtures, and footprint counts for "nothing changed" checks."""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from authz.app import METRICS
from authz.providers.auth import sign_marqeta, sign_standard_webhook, sign_stripe
from policies.pan import luhn_valid
from tests.providers import keys
from tests.support import Api, Reply, Server

# ../shared/fixtures/providers from the repository root (CI keeps a read-only copy there too)
FIXTURES: Final = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "providers"
_PAN_RE: Final = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture(name: str) -> Any:
    """A fixture with decimal numbers kept exact (Marqeta money is decimal)."""
    return json.loads(fixture_bytes(name), parse_float=Decimal)


def exact_json(value: Any) -> bytes:
    """JSON with ``Decimal`` values written as JSON numbers, digit for digit."""
    numbers: dict[str, str] = {}

    def walk(item: Any) -> Any:
        if isinstance(item, Decimal):
            key = f"@@number{len(numbers)}@@"
            numbers[key] = str(item)
            return key
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    text = json.dumps(walk(value))
    for key, number in numbers.items():
        text = text.replace(f'"{key}"', number)
    return text.encode()


def card_numbers(text: str) -> list[str]:
    """Luhn-valid 13-19 digit runs (spaces or dashes allowed), as ``policies.pan`` sees them."""
    found = []
    for match in _PAN_RE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(digits)
    return found


def token() -> str:
    """A provider-like UUID token. About one random UUID in 500 has digit groups that, joined by
    their dashes, form a Luhn-valid 13-19 digit run; those are drawn again, so the card-number
    scans of these tests cannot trip on an id."""
    while True:
        value = str(uuid.uuid4())
        if not card_numbers(value):
            return value


@dataclass(frozen=True)
class Footprint:
    requests: int
    authorizations: int
    holds: int
    events: int


async def footprint(db: asyncpg.Pool) -> Footprint:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM authorization_requests) AS r,"
        " (SELECT count(*) FROM authorizations) AS a, (SELECT count(*) FROM holds) AS h,"
        " (SELECT count(*) FROM inbox_events) AS e")
    assert row is not None
    return Footprint(row["r"], row["a"], row["h"], row["e"])


def metric(server: Server, name: str, labels: dict[str, str]) -> float:
    value = server.app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def register_card(api: Api, card_id: str, currency: str, funds: int,
                        policy: dict[str, Any] | None = None) -> str:
    """A customer account with ``funds`` and the provider's card token as a Holdfast card."""
    account = await api.account(currency, funds=funds)
    r = await api.admin("PUT", f"/v1/cards/{card_id}",
                        {"account_id": account, "state": "active", "policy": policy or {}})
    assert r.status in (200, 201), r.body
    return account


class Providers:
    """Posts to the provider routes, authenticated the way each provider does it."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def lithic(self, path: str, body: bytes, *, at: float | None = None,
                     message_id: str | None = None, secret: str = keys.LITHIC_SECRET,
                     headers: dict[str, str] | None = None) -> Reply:
        ts = int(self.api.clock() if at is None else at)
        msg = message_id or f"msg_{token()}"
        signed = {
            "Content-Type": "application/json",
            "webhook-id": msg,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign_standard_webhook(secret, msg, ts, body),
        }
        return await self.api.raw("POST", f"/providers/lithic/{path}", body,
                                  {**signed, **(headers or {})})

    async def marqeta(self, path: str, body: bytes, *,
                      user: str = keys.MARQETA_USER, password: str = keys.MARQETA_PASSWORD,
                      algorithm: str | None = "sha256", secret: str = keys.MARQETA_HMAC,
                      headers: dict[str, str] | None = None) -> Reply:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        signed = {"Content-Type": "application/json", "Authorization": f"Basic {basic}"}
        if algorithm is not None:
            signed["X-Marqeta-Signature"] = sign_marqeta(secret, body, algorithm)
        return await self.api.raw("POST", f"/providers/marqeta/{path}", body,
                                  {**signed, **(headers or {})})

    async def stripe(self, body: bytes, *, at: float | None = None,
                     secret: str = keys.STRIPE_SECRET,
                     headers: dict[str, str] | None = None) -> Reply:
        ts = int(self.api.clock() if at is None else at)
        signed = {"Content-Type": "application/json",
                  "Stripe-Signature": sign_stripe(secret, ts, body)}
        return await self.api.raw("POST", "/providers/stripe/webhooks", body,
                                  {**signed, **(headers or {})})


# -- request builders (each starts from the provider's public example) -------------------------

def lithic_asa(card_id: str, amount: int, currency: str = "GBP", *, asa_token: str | None = None,
               partial: bool = False, prior_events: int = 0, mcc: str = "5812") -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture("lithic_asa_request.json"))
    body["token"] = asa_token or token()
    body["card"]["token"] = card_id
    body["amount"] = body["authorization_amount"] = amount
    body["amounts"] = {"cardholder": {"amount": amount, "currency": currency,
                                      "conversion_rate": "1.000000"},
                       "merchant": {"amount": amount, "currency": currency}}
    body["pos"]["terminal"]["partial_approval_capable"] = partial
    body["merchant"]["mcc"] = mcc
    body["events"] = [{"token": token(), "type": "AUTHORIZATION", "result": "APPROVED"}
                      for _ in range(prior_events)]
    return body


def marqeta_jit(card_id: str, amount: str, currency: str = "GBP", *, jit_token: str | None = None,
                method: str = "pgfs.authorization", original: str | None = None,
                partial: bool = False, mcc: str = "5812") -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture("marqeta_jit_funding_request.json"))
    body["token"] = token()
    body["card_token"] = card_id
    body["amount"] = body["request_amount"] = Decimal(amount)
    order = body["gpa_order"]
    order["currency_code"] = body["currency_code"] = currency
    order["amount"] = order["funding"]["amount"] = Decimal(amount)
    funding = order["jit_funding"]
    funding["token"] = jit_token or token()
    funding["method"] = method
    funding["amount"] = Decimal(amount)
    if original is not None:
        funding["original_jit_funding_token"] = original
    body["pos"]["partial_approval_capable"] = partial
    body["card_acceptor"]["mcc"] = mcc
    return body


def stripe_authorization(card_id: str, amount: int, currency: str = "gbp", *,
                         iauth: str | None = None, controllable: bool = False,
                         history: int = 0, mcc: str = "5812") -> dict[str, Any]:
    auth: dict[str, Any] = copy.deepcopy(fixture("stripe_authorization_request.json"))
    auth["id"] = iauth or f"iauth_{token()}"
    auth["card"]["id"] = card_id
    auth["currency"] = auth["merchant_currency"] = currency
    pending = auth["pending_request"]
    pending["amount"] = pending["merchant_amount"] = amount
    pending["currency"] = pending["merchant_currency"] = currency
    pending["is_amount_controllable"] = controllable
    auth["request_history"] = [
        {"amount": 100, "approved": True, "currency": currency, "reason": "webhook_approved",
         "created": 1234567890} for _ in range(history)]
    auth["merchant_data"]["category_code"] = mcc
    return auth


def stripe_event(event_type: str, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = copy.deepcopy(fixture("stripe_event_envelope.json"))
    envelope["id"] = f"evt_{token()}"
    envelope["type"] = event_type
    envelope["data"] = {"object": item, **extra}
    return envelope


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
