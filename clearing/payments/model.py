"""The canonical payment model: beneficiaries, validation with stable codes, normalisation of
names and references, and masking of sensitive values for logs. Pure: no I/O.

Names and account numbers are *sensitive*: stored (the bank needs them) but only ever logged
through ``mask_name`` / ``mask_account``.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from clearing.payments.iban import is_valid_iban, normalise_iban
from policies.pan import mask_pans

__all__ = [
    "MAX_NAME_LEN",
    "MAX_REFERENCE_LEN",
    "Beneficiary",
    "InvalidPayment",
    "mask_account",
    "mask_name",
    "name_key",
    "new_id",
    "normalise_reference",
    "parse_beneficiary",
    "parse_reference",
]

MAX_NAME_LEN: Final = 140
# Faster Payments carries 18 characters, SEPA 140; 35 is what most banks accept everywhere
MAX_REFERENCE_LEN: Final = 35
_SORT_CODE: Final = re.compile(r"^([0-9]{2})-?([0-9]{2})-?([0-9]{2})$")
_ACCOUNT_NUMBER: Final = re.compile(r"^[0-9]{8}$")


class InvalidPayment(ValueError):
    """Bad input, with a stable code (the API answers 400 and nothing changes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Beneficiary:
    name: str
    sort_code: str | None = None
    account_number: str | None = None
    iban: str | None = None

    @property
    def identifier(self) -> str:
        """The payee's account, whatever the name: what Confirmation of Payee is keyed on."""
        if self.iban is not None:
            return self.iban
        # the slash keeps the 14 digits from reading as one run (a card number to a scanner)
        return f"GB:{self.sort_code}/{self.account_number}"

    @property
    def domestic(self) -> bool:
        return self.iban is None

    def to_json(self) -> dict[str, str]:
        if self.iban is not None:
            return {"name": self.name, "iban": self.iban}
        return {"name": self.name, "sort_code": self.sort_code or "",
                "account_number": self.account_number or ""}

    def masked(self) -> str:
        where = mask_account(self.iban or self.account_number or "")
        return f"{mask_name(self.name)} {where}"


def _text(raw: Mapping[str, Any], key: str, max_len: int, where: str = "") -> str:
    value = raw.get(key)
    if value is None:
        raise InvalidPayment("missing_field", f"{where}{key} is required")
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidPayment("invalid_field",
                             f"{where}{key} must be a string of 1 to {max_len} characters")
    if not value.isprintable():
        raise InvalidPayment("invalid_field", f"{where}{key} has control characters")
    return value.strip()


def parse_beneficiary(raw: object) -> Beneficiary:
    """``{"name","sort_code","account_number"}`` or ``{"name","iban"}``, exactly one form."""
    if raw is None:
        raise InvalidPayment("missing_field", "beneficiary is required")
    if not isinstance(raw, dict):
        raise InvalidPayment("invalid_beneficiary", "beneficiary must be an object")
    name = _text(raw, "name", MAX_NAME_LEN, "beneficiary.")
    if not any(ch.isalpha() for ch in name):
        raise InvalidPayment("invalid_beneficiary", "beneficiary.name must contain letters")
    has_iban = raw.get("iban") is not None
    has_domestic = raw.get("sort_code") is not None or raw.get("account_number") is not None
    if has_iban == has_domestic:
        raise InvalidPayment("invalid_beneficiary",
                             "beneficiary needs either sort_code and account_number, or iban")
    if has_iban:
        iban = normalise_iban(_text(raw, "iban", 42, "beneficiary."))
        if not is_valid_iban(iban):
            raise InvalidPayment("invalid_iban", "beneficiary.iban is not a valid IBAN")
        return Beneficiary(name=name, iban=iban)
    sort_match = _SORT_CODE.match(_text(raw, "sort_code", 8, "beneficiary."))
    if sort_match is None:
        raise InvalidPayment("invalid_sort_code", "beneficiary.sort_code must be six digits")
    number = _text(raw, "account_number", 8, "beneficiary.")
    if not _ACCOUNT_NUMBER.match(number):
        raise InvalidPayment("invalid_account_number",
                             "beneficiary.account_number must be eight digits")
    return Beneficiary(name=name, sort_code="".join(sort_match.groups()), account_number=number)


def parse_reference(raw: object) -> str:
    if raw is None:
        raise InvalidPayment("missing_field", "reference is required")
    if (not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_REFERENCE_LEN
            or not raw.isprintable()):
        raise InvalidPayment(
            "invalid_reference",
            f"reference must be 1 to {MAX_REFERENCE_LEN} printable characters")
    if mask_pans(raw) != raw:
        # a card number must never be stored or sent on: refuse rather than carry it
        raise InvalidPayment("invalid_reference", "reference must not contain a card number")
    return raw.strip()


def new_id(prefix: str, length: int = 32) -> str:
    """``<prefix>_<random hex>``, redrawn in the rare case (about 1 in 300) where its digits
    form a Luhn-valid 13-19 digit run: no id of ours may look like a card number to the scans
    of logs and tables that prove none is stored."""
    while True:
        value = uuid.uuid4().hex[:length]
        if mask_pans(value) == value:
            return f"{prefix}_{value}"


def normalise_reference(text: str) -> str:
    """What payers mean, not how they typed it: compatibility forms folded, upper case, and
    only letters and digits kept ("hf-k7m2 qx." and "HFK7M2QX" are the same)."""
    folded = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in folded if ch.isalnum())


def name_key(name: str) -> str:
    """A name for comparison: accents, case, punctuation and spacing removed."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    words = "".join(ch if ch.isalnum() else " " for ch in plain).split()
    return " ".join(words)


def mask_name(name: str) -> str:
    """Initials only: 'Jane Smith' -> 'J*** S****'."""
    return " ".join(w[0] + "*" * (len(w) - 1) for w in name.split()) or "*"


def mask_account(number: str) -> str:
    """Last four characters only."""
    return "****" + number[-4:] if len(number) > 4 else "****"
