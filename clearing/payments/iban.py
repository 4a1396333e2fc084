"""IBANs: ISO 13616 structure with ISO 7064 MOD 97-10 check digits, and UK account details.

Pure functions; the SQL twin ``hf_iban_valid`` lets ``holdfast verify`` re-check stored IBANs.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["IBAN_LENGTHS", "gb_iban", "iban_check_digits", "is_valid_iban", "normalise_iban"]

# Lengths of the countries we expect to pay most (SEPA and the UK); others are checked for
# structure (15-34 characters) and check digits only.
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
}
_SHAPE: Final = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")
_BANK_CODE: Final = re.compile(r"^[A-Z]{4}$")
_SEPARATORS: Final = re.compile(r"[\s-]")


def _as_number(text: str) -> int:
    # letters count as 10..35 (A=10), digits as themselves
    return int("".join(str(int(ch, 36)) for ch in text))


def normalise_iban(raw: str) -> str:
    """Upper case without spaces or dashes (the printed form groups by four)."""
    return _SEPARATORS.sub("", raw).upper()


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits that make ``country + kk + bban`` a valid IBAN."""
    remainder = _as_number(bban + country + "00") % 97
    return f"{98 - remainder:02d}"


def is_valid_iban(iban: str) -> bool:
    """Structure, known country length and MOD 97-10 (an already normalised IBAN)."""
    if not _SHAPE.match(iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    return _as_number(iban[4:] + iban[:4]) % 97 == 1


def gb_iban(bank_code: str, sort_code: str, account_number: str) -> str:
    """The UK IBAN of a sort code and account number: GBkk BBBB SSSSSS AAAAAAAA."""
    if not _BANK_CODE.match(bank_code):
        raise ValueError("bank code must be four letters (the BIC's first four)")
    if not (len(sort_code) == 6 and sort_code.isdigit()):
        raise ValueError("sort code must be six digits")
    if not (len(account_number) == 8 and account_number.isdigit()):
        raise ValueError("account number must be eight digits")
    bban = bank_code + sort_code + account_number
    return "GB" + iban_check_digits("GB", bban) + bban
