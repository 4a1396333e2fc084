"""The canonical lifecycle event every adapter maps its provider's events to, and the consumers
apply. Amounts are minor units."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["EVENT_TYPES", "NEEDS_AUTHORIZATION", "LifecycleEvent"]

EVENT_TYPES: Final = frozenset({
    "authorization.reversal",   # release part or all of the hold (amount = amount reversed)
    "authorization.clearing",   # post the amount; final releases the rest of the hold
    "authorization.expiry",     # the processor expired the authorisation: release what remains
    "authorization.advice",     # approved without us (stand-in): hold it even if we'd decline
    "refund",                   # a credit from the merchant
    "chargeback",               # a dispute opened: provisional credit to the cardholder
    "chargeback.won",           # the dispute is won: the provisional credit stays
    "chargeback.reversal",      # the dispute is lost: the provisional credit is taken back
})
# events that only make sense against an authorisation
NEEDS_AUTHORIZATION: Final = frozenset({
    "authorization.reversal", "authorization.expiry", "authorization.advice", "chargeback",
    "chargeback.won", "chargeback.reversal",
})


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    id: str
    type: str
    authorization_id: str | None
    card_id: str | None
    amount_minor: int
    currency: str
    final: bool

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LifecycleEvent:
        return cls(
            id=str(raw["id"]),
            type=str(raw["type"]),
            authorization_id=raw.get("authorization_id"),
            card_id=raw.get("card_id"),
            amount_minor=int(raw["amount"]),
            currency=str(raw["currency"]),
            final=bool(raw.get("final", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "authorization_id": self.authorization_id,
            "card_id": self.card_id,
            "amount": self.amount_minor,
            "currency": self.currency,
            "final": self.final,
        }
