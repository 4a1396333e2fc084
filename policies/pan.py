"""Restricted card data: recognise and remove card numbers (PAN) and CVVs wherever they appear.

Adapters drop these fields by name before anything is stored; ``scrub`` is the second line of
defence for whole payloads, and ``mask_pans`` for free text (logs, error messages)."""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["RESTRICTED_KEYS", "luhn_valid", "mask_pans", "scrub"]

# a card number as it is written: 13-19 digits in one run, or in the printed groupings
# 4-4-4-4(-3) and 4-6-5 with one kind of separator. Arbitrary digit groups (UUIDs, references)
# are not joined, and a grouped form must stand apart from letters (a UUID's hex groups), so
# they are never mistaken for one.
_PAN_RE: Final = re.compile(
    r"(?<![0-9])[0-9]{13,19}(?![0-9])"
    r"|(?<![0-9A-Za-z])(?:"
    r"[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{1,3})?"
    r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{5}"
    r")(?![0-9A-Za-z])"
)
# keys whose values are restricted data whatever they look like
RESTRICTED_KEYS: Final = frozenset({
    "pan", "card_number", "cardnumber", "number", "cvv", "cvv2", "cvc", "cvc2", "cid", "pin",
    "pin_block", "track1", "track2", "track_data", "magnetic_stripe", "security_code",
})


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_pans(text: str) -> str:
    """Replace every Luhn-valid 13-19 digit run (spaces or dashes allowed) by ``****<last4>``."""

    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return f"****{digits[-4:]}"
        return match.group(0)

    return _PAN_RE.sub(mask, text)


def scrub(value: Any) -> Any:
    """A copy of a JSON-like value with restricted keys removed and card numbers masked."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()
                if not (isinstance(k, str) and k.lower() in RESTRICTED_KEYS)}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return mask_pans(value)
    return value
