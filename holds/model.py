"""Money and the ledger's canonical records.

Amounts are ``int`` minor units with an ISO 4217 currency; the exponent says how many minor units
make a major one (JPY 0, GBP 2, BHD 3). Nothing here ever holds a float.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_AMOUNT_MINOR",
    "Account",
    "AccountKind",
    "Hold",
    "currency_exponent",
    "hold_window_s",
    "is_currency",
]

# ISO 4217 active codes and their minor-unit exponents (funds codes and metals excluded).
_EXPONENT_0: Final = (
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
)
_EXPONENT_3: Final = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4: Final = "CLF UYW"
_EXPONENT_2: Final = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
    "GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD "
    "MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP "
    "PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD XCG YER ZAR ZMW ZWG"
)

CURRENCY_EXPONENTS: Final[dict[str, int]] = {
    **dict.fromkeys(_EXPONENT_2.split(), 2),
    **dict.fromkeys(_EXPONENT_0.split(), 0),
    **dict.fromkeys(_EXPONENT_3.split(), 3),
    **dict.fromkeys(_EXPONENT_4.split(), 4),
}

# PostgreSQL bigint holds 2**63 - 1; a single amount is capped far below so sums cannot overflow.
MAX_AMOUNT_MINOR: Final = 10**15


def is_currency(code: object) -> bool:
    return isinstance(code, str) and code in CURRENCY_EXPONENTS


def currency_exponent(code: str) -> int:
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        raise ValueError(f"unknown ISO 4217 currency {code!r}") from None


class AccountKind:
    CUSTOMER: Final = "customer"
    SETTLEMENT: Final = "settlement"
    FEES: Final = "fees"
    SUSPENSE: Final = "suspense"
    ALL: Final = frozenset({"customer", "settlement", "fees", "suspense"})


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    kind: str
    currency: str
    posted_minor: int
    held_minor: int
    overdraft_limit_minor: int

    @property
    def available_minor(self) -> int:
        """What an authorisation may still take: posted - held + overdraft."""
        return self.posted_minor - self.held_minor + self.overdraft_limit_minor


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    account_id: str
    currency: str
    state: str
    authorized_minor: int
    posted_minor: int
    over_posted_minor: int
    released_minor: int
    remaining_minor: int


# Merchant categories whose final amount is known only at check-out: their holds live longer.
_LONG_HOLD_MCC_RANGES: Final = (
    (3351, 3500), (3501, 3999), (7011, 7011), (7512, 7513), (7519, 7519),
)


@functools.lru_cache(maxsize=20_000)  # every four-digit MCC under both settings: per request
def hold_window_s(mcc: str, default_s: int, long_s: int) -> int:
    """How long a hold may stay open before the expiry sweep releases it: ``long_s`` for lodging
    (3501-3999, 7011) and car rental (3351-3500, 7512, 7513, 7519), else ``default_s``."""
    code = int(mcc) if mcc.isdigit() else -1
    for low, high in _LONG_HOLD_MCC_RANGES:
        if low <= code <= high:
            return long_s
    return default_s
