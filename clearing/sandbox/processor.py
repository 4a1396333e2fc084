"""The sandbox card processor: signed native authorisations (``POST /v1/authorize``) and
Stripe-format authorisation requests (``POST /providers/stripe/webhooks``), answered
synchronously, and lifecycle events (``POST /v1/events``) sent through the delivery network
(delay, duplicates, reordering, failures). Card numbers never appear: processors send tokens."""

from __future__ import annotations

import time
from typing import Any, Final

import aiohttp
import orjson

from clearing.payments.model import new_id
from clearing.sandbox.config import SandboxConfig, sign
from clearing.sandbox.delivery import Delivery, Outgoing

__all__ = ["CardProcessor"]

_STRIPE_VERSION: Final = "2025-03-31.basil"


class CardProcessor:
    def __init__(self, session: aiohttp.ClientSession, config: SandboxConfig,
                 delivery: Delivery) -> None:
        self._session = session
        self._config = config
        self._delivery = delivery

    async def _post(self, path: str, body: bytes, header: str, signature: str
                    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", header: signature}
        async with self._session.post(self._config.holdfast_url + path, data=body,
                                      headers=headers) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None

    async def authorize(self, card_id: str, amount: int, currency: str, *, mcc: str = "5812",
                        country: str = "GB", channel: str = "contactless",
                        merchant: str = "Sandbox Cafe") -> dict[str, Any]:
        """A native authorisation; returns Holdfast's answer (its ``id`` is the request id)."""
        body = orjson.dumps({
            "id": new_id("sbx", 20), "card_id": card_id, "amount": amount,
            "currency": currency, "channel": channel,
            "merchant": {"id": "sbx-merchant-1", "name": merchant, "mcc": mcc,
                         "country": country}})
        status, answer = await self._post(
            "/v1/authorize", body, "Holdfast-Signature",
            sign(self._config.native_secret, int(time.time()), body))
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"authorize answered {status}")
        return answer

    def event(self, event_type: str, authorization_id: str, amount: int, currency: str,
              final: bool = False) -> str:
        """A lifecycle event, delivered later through the network. Returns its id."""
        event_id = new_id("sbx_evt", 20)
        body = orjson.dumps({"id": event_id, "type": event_type,
                             "authorization_id": authorization_id, "amount": amount,
                             "currency": currency, "final": final})
        secret = self._config.native_secret
        self._delivery.send(Outgoing(self._config.holdfast_url + "/v1/events", body,
                                     "Holdfast-Signature", lambda ts, b: sign(secret, ts, b)))
        return event_id

    async def stripe_authorize(self, card_id: str, amount: int, currency: str
                               ) -> dict[str, Any]:
        """A Stripe Issuing ``issuing_authorization.request`` for the same card (Stripe names
        our card by the card id we gave it)."""
        if not self._config.stripe_secret:
            raise RuntimeError("no Stripe secret configured")
        iauth = new_id("iauth_sbx", 20)
        body = orjson.dumps({
            "id": new_id("evt_sbx", 20), "object": "event",
            "type": "issuing_authorization.request", "api_version": _STRIPE_VERSION,
            "created": int(time.time()), "livemode": False,
            "data": {"object": {
                "id": iauth, "object": "issuing.authorization", "status": "pending",
                "amount": 0, "currency": currency.lower(), "approved": False,
                "authorization_method": "contactless", "card": {"id": card_id},
                "merchant_data": {"network_id": "sbx-merchant-2", "name": "Sandbox Books",
                                  "category_code": "5942", "country": "GB"},
                "pending_request": {"amount": amount, "currency": currency.lower(),
                                    "is_amount_controllable": False},
                "request_history": []}}})
        status, answer = await self._post(
            "/providers/stripe/webhooks", body, "Stripe-Signature",
            sign(self._config.stripe_secret, int(time.time()), body))
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"stripe authorization answered {status}")
        return {"authorization_id": f"stripe:{iauth}", **answer}
