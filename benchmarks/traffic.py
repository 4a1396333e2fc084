"""The card universe and the authorisation traffic the benchmark sends.

The universe (which account and card has which currency, funds, state and policy) is a pure
function of the card index, so the seeder, which writes it to PostgreSQL, and the load generator,
which builds requests in another process, agree without sharing anything but the card count.

Traffic looks like a card programme's: amounts drawn around each merchant category's typical
ticket, contactless/POS/e-commerce/ATM channels, mostly domestic, a few percent declines (a
blocked MCC, over the per-transaction limit, a foreign country on a domestic-only card, a frozen
card, an account that runs out of funds), some partial-approval requests and some incremental
authorisations (tips, fuel, hotels) on earlier requests of the same card.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Final

import orjson

from authz.signatures import sign_native

__all__ = [
    "BLOCKED_MCC",
    "MAX_AMOUNT_MINOR",
    "CardProfile",
    "build_bodies",
    "frame_requests",
    "profile",
    "share_accounts",
]

AUTHORIZE_PATH: Final = "/v1/authorize"
BLOCKED_MCC: Final = "7995"  # betting: blocked by every card's policy
MAX_AMOUNT_MINOR: Final = 2_000_00  # per-transaction limit on every card
RICH_FUNDS_MINOR: Final = 50_000_00  # enough that a run never exhausts a normal account
POOR_FUNDS_MINOR: Final = 60_00  # a couple of purchases, then insufficient_funds
_HOME: Final = {"GBP": "GB", "EUR": "FR", "USD": "US"}
# cards per funding account (share_accounts): 1, each card its own account, unless a benchmark
# asks for a company's cards on one account
_cards_per_account = [1]


def share_accounts(cards_per_account: int) -> None:
    """From now on, consecutive cards of one currency, ``cards_per_account`` at a time, draw on
    one account (a company's cards on its funding account). Activity is shuffled against the
    card index, so each account draws about its cards' share of the traffic (100 to an account:
    ~1 % each). 1: every card its own account, as by default."""
    if cards_per_account < 1:
        raise ValueError("cards_per_account must be at least 1")
    _cards_per_account[0] = cards_per_account
_EEA_NEIGHBOURS: Final = ("IE", "FR", "DE", "ES", "NL", "IT")


@dataclass(frozen=True, slots=True)
class CardProfile:
    index: int
    card_id: str
    account_id: str
    currency: str
    funds_minor: int
    state: str  # active | frozen
    policy: dict[str, Any]  # the native API's policy shape (policies.model.Policy.parse)


def profile(index: int) -> CardProfile:
    """Card ``index`` of the universe. Spreads are by residue so every share holds at any size."""
    currency = "EUR" if index % 20 == 3 else "USD" if index % 20 == 11 else "GBP"
    poor = index % 97 == 5  # ~1 %
    frozen = index % 211 == 7  # ~0.5 %
    policy: dict[str, Any] = {
        "max_amount": MAX_AMOUNT_MINOR,
        "mcc_block": [BLOCKED_MCC],
        # velocity on every card, as in production, so the Lua script does its real work; the
        # limits are loose enough that a benchmark run does not hit them
        "velocity": [
            {"window": "1h", "max_count": 1_000},
            {"window": "1d", "max_amount": 100_000_00},
        ],
    }
    if index % 10 == 1:  # ~10 %: domestic-and-neighbours only
        policy["country_allow"] = sorted({_HOME[currency], *_EEA_NEIGHBOURS})
    per = _cards_per_account[0]
    return CardProfile(
        index=index,
        card_id=f"bc-{index:05d}",
        # shared: the group's account in the card's currency (its funds are its cards' together)
        account_id=f"ba-{index:05d}" if per == 1 else f"ba-g{index // per:05d}-{currency}",
        currency=currency,
        funds_minor=POOR_FUNDS_MINOR if poor else RICH_FUNDS_MINOR,
        state="frozen" if frozen else "active",
        policy=policy,
    )


@dataclass(frozen=True, slots=True)
class _Category:
    mcc: str
    weight: int
    median_minor: int
    channels: tuple[str, ...]
    names: tuple[str, ...]
    incremental: bool  # its authorisations may be raised later (tips, fuel, stays)


_CATEGORIES: Final = (
    _Category("5411", 22, 35_00, ("contactless", "pos"), ("Grocer", "Supermarket"), False),
    _Category("5812", 14, 22_00, ("contactless", "pos"), ("Bistro", "Trattoria"), True),
    _Category("5814", 12, 8_00, ("contactless",), ("Burger Bar", "Coffee Kiosk"), False),
    _Category("5541", 8, 55_00, ("pos",), ("Fuel Stop",), True),
    _Category("4111", 8, 4_50, ("contactless",), ("Metro", "City Bus"), False),
    _Category("5999", 10, 30_00, ("ecommerce",), ("Online Shop",), False),
    _Category("5311", 6, 60_00, ("pos", "ecommerce"), ("Department Store",), False),
    _Category("4511", 2, 250_00, ("ecommerce",), ("Airline",), False),
    _Category("7011", 3, 180_00, ("ecommerce", "pos"), ("Hotel",), True),
    _Category("6011", 4, 100_00, ("atm",), ("ATM",), False),
    _Category("5732", 3, 120_00, ("ecommerce", "moto"), ("Electronics",), False),
)
_CATEGORY_WEIGHTS: Final = list(itertools.accumulate(c.weight for c in _CATEGORIES))
_MERCHANTS_PER_CATEGORY: Final = 400
_CARD_SKEW: Final = 0.5  # Zipf exponent of card activity: the busiest card ~0.5 % of traffic
_INCREMENTAL_GAP: Final = 1_000  # an incremental is sent >= this many requests after its parent


@dataclass(frozen=True, slots=True)
class TrafficMix:
    """Shares of requests that are not plain purchases."""

    blocked_mcc: float = 0.02
    over_limit: float = 0.01
    foreign: float = 0.06
    incremental: float = 0.03
    partial_allowed: float = 0.10


@dataclass(frozen=True, slots=True)
class _Parent:
    position: int
    request_id: str
    body: dict[str, Any]


def _card_weights(cards: int, rng: random.Random) -> tuple[list[int], list[float]]:
    """Card indices and cumulative Zipf weights; shuffled so activity does not follow the index
    patterns that decide currency, funds and state."""
    order = list(range(cards))
    rng.shuffle(order)
    weights = itertools.accumulate(1.0 / (rank + 1) ** _CARD_SKEW for rank in range(cards))
    return order, list(weights)


def _amount(rng: random.Random, category: _Category) -> int:
    amount = int(rng.lognormvariate(math.log(category.median_minor), 0.8))
    if category.mcc == "6011":  # cash comes in tens
        return max(10_00, round(amount, -3))
    return min(max(amount, 50), MAX_AMOUNT_MINOR // 2)


def build_bodies(
    count: int, *, cards: int, seed: int, id_prefix: str, mix: TrafficMix | None = None,
    scatter_ids: bool = False,
) -> list[bytes]:
    """``count`` request bodies (JSON bytes), ids ``<id_prefix>-<n>``, deterministic per seed.

    With ``scatter_ids`` the ids are ``<8 hex digits>-<id_prefix>-<n>``, the hex a bijective
    scramble of ``n``: new rows then land all over the primary-key indexes, as a processor's
    random ids (UUIDs) do, instead of in one corner of them."""
    mix = mix or TrafficMix()
    rng = random.Random(seed)
    order, card_cum = _card_weights(cards, random.Random(cards))
    picks = rng.choices(order, cum_weights=card_cum, k=count)
    profiles: dict[int, CardProfile] = {}  # only the cards picked (the universe may be 10^6)
    parents: list[_Parent] = []
    eligible = 0  # parents[:eligible] were built at least _INCREMENTAL_GAP requests ago
    out: list[bytes] = []
    for n, card_index in enumerate(picks):
        while eligible < len(parents) and parents[eligible].position <= n - _INCREMENTAL_GAP:
            eligible += 1
        request_id = (f"{(n * 0x9E3779B1 + seed) & 0xFFFFFFFF:08x}-{id_prefix}-{n}"
                      if scatter_ids else f"{id_prefix}-{n}")
        if eligible and rng.random() < mix.incremental:
            parent = parents[rng.randrange(max(0, eligible - 2_000), eligible)]
            body = dict(parent.body)
            body["id"] = request_id
            body["parent_id"] = parent.request_id
            body["amount"] = max(100, parent.body["amount"] // rng.choice((5, 10, 4)))
            body.pop("partial_allowed", None)
            out.append(orjson.dumps(body))
            continue
        card = profiles.get(card_index)
        if card is None:
            card = profiles[card_index] = profile(card_index)
        category = _CATEGORIES[
            rng.choices(range(len(_CATEGORIES)), cum_weights=_CATEGORY_WEIGHTS)[0]
        ]
        amount = _amount(rng, category)
        mcc = category.mcc
        country = _HOME[card.currency]
        roll = rng.random()
        if roll < mix.blocked_mcc:
            mcc = BLOCKED_MCC
        elif roll < mix.blocked_mcc + mix.over_limit:
            amount = MAX_AMOUNT_MINOR + rng.randrange(1, MAX_AMOUNT_MINOR)
        elif roll < mix.blocked_mcc + mix.over_limit + mix.foreign:
            country = rng.choice(("US", "JP", "BR", "TH", "ZA"))
        merchant_n = rng.randrange(_MERCHANTS_PER_CATEGORY)
        body = {
            "id": request_id,
            "card_id": card.card_id,
            "amount": amount,
            "currency": card.currency,
            "merchant": {
                "id": f"m-{mcc}-{merchant_n}",
                "name": f"{rng.choice(category.names)} {merchant_n}",
                "mcc": mcc,
                "country": country,
            },
            "channel": rng.choice(category.channels),
        }
        if rng.random() < mix.partial_allowed:
            body["partial_allowed"] = True
        out.append(orjson.dumps(body))
        plain = roll >= mix.blocked_mcc + mix.over_limit + mix.foreign
        if category.incremental and plain and card.state == "active":
            parents.append(_Parent(n, request_id, body))
    return out


def frame_requests(bodies: list[bytes], *, host: str, secret: str, now_s: int) -> list[bytes]:
    """Complete HTTP/1.1 requests, signed with the native scheme, ready to write to a socket.

    Signed at ``now_s``: the server accepts a signature for 300 s, far longer than a phase."""
    head = (
        f"POST {AUTHORIZE_PATH} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/json\r\nHoldfast-Signature: "
    ).encode()
    out = []
    for body in bodies:
        signature = sign_native(secret, now_s, body).encode()
        out.append(
            b"%s%s\r\nContent-Length: %d\r\n\r\n%s" % (head, signature, len(body), body)
        )
    return out
