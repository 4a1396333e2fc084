"""Canonical card-side models: decline reasons, the authorisation request and decision, the policy.

Everything is a frozen, slotted dataclass over ints, strings and tuples; provider shapes never get
here (adapters map them first).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

__all__ = [
    "CHANNELS",
    "AuthorizationRequest",
    "Decision",
    "Policy",
    "PolicyError",
    "Reason",
    "VelocityWindow",
]

CHANNELS: Final = frozenset({"pos", "ecommerce", "atm", "contactless", "moto"})


class Reason(enum.Enum):
    """Stable reasons with their ISO 8583 field-39 codes, declared in order of precedence: when
    several declines apply, the one declared first wins (the same order as ``hf_reason_rank``)."""

    INVALID_CARD = ("invalid_card", "14")
    CARD_RESTRICTED = ("card_restricted", "62")
    CARD_EXPIRED = ("card_expired", "54")
    DO_NOT_HONOR = ("do_not_honor", "05")
    NOT_PERMITTED = ("not_permitted", "57")
    SUSPECTED_FRAUD = ("suspected_fraud", "59")
    AMOUNT_LIMIT_EXCEEDED = ("amount_limit_exceeded", "61")
    COUNT_LIMIT_EXCEEDED = ("count_limit_exceeded", "65")
    INSUFFICIENT_FUNDS = ("insufficient_funds", "51")
    # outside the precedence order: they are never combined with another reason
    DUPLICATE = ("duplicate", "94")
    ISSUER_UNAVAILABLE = ("issuer_unavailable", "91")
    SYSTEM_ERROR = ("system_error", "96")
    APPROVED = ("approved", "00")
    PARTIAL_APPROVAL = ("partial_approval", "10")

    def __init__(self, label: str, code: str) -> None:
        self.label = label
        self.code = code

    @classmethod
    def from_label(cls, label: str) -> Reason:
        return _BY_LABEL[label]


_BY_LABEL: Final = {r.label: r for r in Reason}


class AuthorizationRequest(NamedTuple):
    """One authorisation request as the decision core sees it, whatever provider sent it.

    ``provider_id`` + ``sequence`` identify the request (idempotency); ``authorization_id`` is the
    lifecycle object it opens, or ``parent_id`` the one it raises (incremental)."""

    provider: str
    provider_id: str
    sequence: int
    authorization_id: str
    card_id: str
    amount_minor: int
    currency: str
    merchant_id: str
    merchant_name: str
    mcc: str
    country: str
    channel: str
    partial_allowed: bool
    parent_id: str | None
    # a digest of the request's meaningful fields: the same identity with another digest is a
    # conflicting duplicate, not a retry
    request_hash: str


class Decision(NamedTuple):
    authorization_id: str
    approved: bool
    approved_amount_minor: int
    reason: Reason
    stand_in: bool
    replay: bool = False


class PolicyError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"policy.{field}: {message}")
        self.field = field


# window granularity: minutes (sliding), hours (sliding), calendar days in the card's time zone
_WINDOW_RE: Final = re.compile(r"^([1-9][0-9]{0,3})([mhd])$")
_MAX_BUCKETS: Final = {"m": 120, "h": 72, "d": 31}


@dataclass(frozen=True, slots=True)
class VelocityWindow:
    """A limit on count and/or amount over a window.

    ``unit`` is the bucket granularity: ``m`` minute buckets for windows of up to two hours
    (``"90m"``, ``"1h"``, ``"2h"``), ``h`` hour buckets for longer hour windows (``"24h"``), ``d``
    calendar days in the card's UTC offset (``"1d"`` = today, ``"7d"`` = today and the six days
    before). Sliding windows count their oldest, partly expired bucket too, so a window may look
    back up to one bucket further than its length: never an undercount."""

    label: str
    unit: str
    buckets: int
    max_amount_minor: int | None
    max_count: int | None

    @classmethod
    def parse(cls, raw: object, index: int) -> VelocityWindow:
        field = f"velocity[{index}]"
        if not isinstance(raw, Mapping):
            raise PolicyError(field, "must be an object")
        unknown = set(raw) - {"window", "max_amount", "max_count"}
        if unknown:
            raise PolicyError(field, f"unknown field(s) {sorted(unknown)}")
        label = raw.get("window")
        match = _WINDOW_RE.match(label) if isinstance(label, str) else None
        if match is None:
            raise PolicyError(f"{field}.window", "must look like '30m', '1h', '24h', '1d', '7d'")
        n, unit = int(match.group(1)), match.group(2)
        if unit == "h" and n <= 2:
            unit, n = "m", n * 60
        if n > _MAX_BUCKETS[unit]:
            raise PolicyError(f"{field}.window", "longest windows: 120m, 72h, 31d")
        max_amount = _optional_positive_int(raw.get("max_amount"), f"{field}.max_amount")
        max_count = _optional_positive_int(raw.get("max_count"), f"{field}.max_count")
        if max_amount is None and max_count is None:
            raise PolicyError(field, "needs max_amount, max_count or both")
        return cls(str(label), unit, n, max_amount, max_count)


@dataclass(frozen=True, slots=True)
class Policy:
    max_amount_minor: int | None = None
    currencies: frozenset[str] = frozenset()
    mcc_allow: frozenset[str] = frozenset()
    mcc_block: frozenset[str] = frozenset()
    country_allow: frozenset[str] = frozenset()
    country_block: frozenset[str] = frozenset()
    channels_block: frozenset[str] = frozenset()
    merchant_lock: frozenset[str] = frozenset()
    velocity: tuple[VelocityWindow, ...] = ()
    utc_offset_minutes: int = 0

    @classmethod
    def parse(cls, raw: object) -> Policy:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise PolicyError("", "must be an object")
        unknown = set(raw) - _POLICY_FIELDS
        if unknown:
            raise PolicyError(sorted(unknown)[0], "unknown field")
        velocity = raw.get("velocity", [])
        if not isinstance(velocity, list) or len(velocity) > 8:
            raise PolicyError("velocity", "must be a list of at most 8 windows")
        offset = raw.get("utc_offset_minutes", 0)
        if type(offset) is not int or not -14 * 60 <= offset <= 14 * 60:
            raise PolicyError("utc_offset_minutes", "must be an integer from -840 to 840")
        return cls(
            max_amount_minor=_optional_positive_int(raw.get("max_amount"), "max_amount"),
            currencies=_code_set(raw, "currencies", r"^[A-Z]{3}$"),
            mcc_allow=_code_set(raw, "mcc_allow", r"^[0-9]{4}$"),
            mcc_block=_code_set(raw, "mcc_block", r"^[0-9]{4}$"),
            country_allow=_code_set(raw, "country_allow", r"^[A-Z]{2}$"),
            country_block=_code_set(raw, "country_block", r"^[A-Z]{2}$"),
            channels_block=_channel_set(raw),
            merchant_lock=_code_set(raw, "merchant_lock", r"^[^,]{1,64}$"),
            velocity=tuple(VelocityWindow.parse(w, i) for i, w in enumerate(velocity)),
            utc_offset_minutes=offset,
        )

    def to_json(self) -> dict[str, Any]:
        """The canonical stored form (sorted, so equal policies compare equal as JSON)."""
        out: dict[str, Any] = {}
        if self.max_amount_minor is not None:
            out["max_amount"] = self.max_amount_minor
        for name in ("currencies", "mcc_allow", "mcc_block", "country_allow", "country_block",
                     "channels_block", "merchant_lock"):
            values = getattr(self, name)
            if values:
                out[name] = sorted(values)
        if self.velocity:
            out["velocity"] = [_window_json(w) for w in self.velocity]
        if self.utc_offset_minutes:
            out["utc_offset_minutes"] = self.utc_offset_minutes
        return out


_POLICY_FIELDS: Final = frozenset({
    "max_amount", "currencies", "mcc_allow", "mcc_block", "country_allow", "country_block",
    "channels_block", "merchant_lock", "velocity", "utc_offset_minutes",
})


def _window_json(w: VelocityWindow) -> dict[str, Any]:
    out: dict[str, Any] = {"window": w.label}
    if w.max_amount_minor is not None:
        out["max_amount"] = w.max_amount_minor
    if w.max_count is not None:
        out["max_count"] = w.max_count
    return out


def _optional_positive_int(value: object, field: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 < value <= 10**15:
        raise PolicyError(field, "must be a positive integer (minor units or a count)")
    return value


def _code_set(raw: Mapping[str, object], field: str, pattern: str) -> frozenset[str]:
    values = raw.get(field, [])
    if not isinstance(values, list) or len(values) > 500:
        raise PolicyError(field, "must be a list of at most 500 codes")
    regex = re.compile(pattern)
    for v in values:
        if not isinstance(v, str) or not regex.match(v):
            raise PolicyError(field, f"{v!r} does not match {pattern}")
    return frozenset(values)


def _channel_set(raw: Mapping[str, object]) -> frozenset[str]:
    values = raw.get("channels_block", [])
    if not isinstance(values, list) or not all(v in CHANNELS for v in values):
        raise PolicyError("channels_block", f"must be a list of {sorted(CHANNELS)}")
    return frozenset(str(v) for v in values)
