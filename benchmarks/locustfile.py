"""Locust load for Holdfast over HTTP: a realistic mix of card-network traffic and admin reads.

    .venv/bin/pip install --constraint constraints.txt -e '.[load]'   # locust, the pins kept
    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 30s \\
        --host http://127.0.0.1:8080

Each simulated processor connection (a ``FastHttpUser``) sends, in proportions set by
``HOLDFAST_LOCUST_MIX``:

- **authorize**: a signed native ``POST /v1/authorize`` for a card of the pool, with a merchant
  category, ticket and channel drawn as in ``benchmarks/traffic.py`` (10 % allow a partial
  approval); an approval is remembered for the lifecycle tasks below;
- **incremental**: a signed ``POST /v1/authorize`` with ``parent_id`` raising an earlier approval
  at a restaurant, fuel pump or hotel (tip, fill-up, extra night);
- **reversal**: a signed ``POST /v1/events`` ``authorization.reversal`` of part or all of an
  earlier approval;
- **clearing**: a signed ``POST /v1/events`` ``authorization.clearing`` (final; sometimes with a
  tip above the hold, sometimes under it), which ends that authorisation's life here;
- **admin**: a bearer-token read: ``GET /v1/authorizations/{id}``, ``/v1/cards/{id}`` or
  ``/v1/accounts/{id}``.

Events are only stored by the server (202) and applied by ``holdfast consumers``; run those too
if the ledger should follow. Configuration, all optional, by environment:

===============================  ==========================================================
``HOLDFAST_WEBHOOK_SECRET``      the native signing secret (default: the development one)
``HOLDFAST_LOCUST_CARDS``        cards ``bc-00000`` .. of the benchmark universe (default
                                 10000; ``python -m benchmarks.scratch create`` seeds them)
``HOLDFAST_LOCUST_CARD_IDS``     explicit ``card:CUR[:account]`` list instead, e.g.
                                 ``card-alice:GBP:acct-alice`` for ``make run``'s demo data
``HOLDFAST_LOCUST_ADMIN_TOKEN``  bearer token for the admin reads (default ``dev-ops-token``)
``HOLDFAST_LOCUST_MIX``          weights, default
                                 ``authorize=80,incremental=3,reversal=5,clearing=9,admin=3``
``HOLDFAST_LOCUST_WAIT``         per-user pause between tasks: ``0.05-0.2`` (uniform, s;
                                 the default), ``0.1`` (constant), ``rate:20`` (each user at
                                 most 20 tasks/s) or ``0`` (no pause: a closed loop)
``HOLDFAST_LOCUST_SEED``         seed for the random draws (default: not seeded)
===============================  ==========================================================

Locust measures from send to answer in a closed loop per user; for latency under a fixed arrival
rate (no coordinated omission) use ``make bench``'s open-loop generator.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from locust import FastHttpUser, between, constant, constant_throughput

from authz.settings import DEV_WEBHOOK_SECRET
from authz.signatures import sign_native

__all__ = ["HoldfastUser"]

_DEFAULT_MIX: Final = "authorize=80,incremental=3,reversal=5,clearing=9,admin=3"
_HOME: Final = {"GBP": "GB", "EUR": "FR", "USD": "US"}
# (mcc, weight, median ticket in minor units, channels, name, may be raised by an incremental)
_CATEGORIES: Final = (
    ("5411", 22, 35_00, ("contactless", "pos"), "Grocer", False),
    ("5812", 14, 22_00, ("contactless", "pos"), "Bistro", True),
    ("5814", 12, 8_00, ("contactless",), "Coffee Kiosk", False),
    ("5541", 8, 55_00, ("pos",), "Fuel Stop", True),
    ("4111", 8, 4_50, ("contactless",), "Metro", False),
    ("5999", 10, 30_00, ("ecommerce",), "Online Shop", False),
    ("5311", 6, 60_00, ("pos", "ecommerce"), "Department Store", False),
    ("4511", 2, 250_00, ("ecommerce",), "Airline", False),
    ("7011", 3, 180_00, ("ecommerce", "pos"), "Hotel", True),
    ("6011", 4, 100_00, ("atm",), "ATM", False),
    ("5732", 3, 120_00, ("ecommerce", "moto"), "Electronics", False),
)
_CATEGORY_WEIGHTS: Final = list(itertools.accumulate(c[1] for c in _CATEGORIES))
_REMEMBER: Final = 200  # approvals a user keeps for its lifecycle tasks


@dataclass(frozen=True, slots=True)
class Card:
    id: str
    account_id: str
    currency: str


@dataclass(slots=True)
class Approval:
    id: str
    card: Card
    amount: int  # held now (approved, raised, minus reversed)
    mcc: str
    body: dict[str, Any]


def _universe_card(i: int) -> Card:
    # the benchmark universe (benchmarks/traffic.py, profile()): same ids and currencies
    currency = "EUR" if i % 20 == 3 else "USD" if i % 20 == 11 else "GBP"
    return Card(f"bc-{i:05d}", f"ba-{i:05d}", currency)


def _cards(env: dict[str, str]) -> list[Card]:
    explicit = env.get("HOLDFAST_LOCUST_CARD_IDS", "").strip()
    if explicit:
        cards = []
        for item in explicit.split(","):
            card_id, _, rest = item.strip().partition(":")
            currency, _, account = rest.partition(":")
            cards.append(Card(card_id, account or card_id, currency or "GBP"))
        return cards
    return [_universe_card(i) for i in range(int(env.get("HOLDFAST_LOCUST_CARDS", "10000")))]


def _mix(raw: str) -> dict[str, int]:
    weights = {"authorize": 0, "incremental": 0, "reversal": 0, "clearing": 0, "admin": 0}
    for part in raw.split(","):
        name, _, value = part.strip().partition("=")
        if name not in weights:
            raise ValueError(f"HOLDFAST_LOCUST_MIX: unknown task {name!r} (know {sorted(weights)})")
        weights[name] = int(value)
    return weights


def _wait(raw: str) -> Callable[..., float]:
    raw = raw.strip()
    if raw.startswith("rate:"):
        return constant_throughput(float(raw[5:]))  # type: ignore[no-any-return,unused-ignore]
    low, sep, high = raw.partition("-")
    if sep:
        return between(float(low), float(high))  # type: ignore[no-any-return,unused-ignore]
    return constant(float(raw))  # type: ignore[no-any-return,unused-ignore]


_ENV: Final = dict(os.environ)
CARDS: Final = _cards(_ENV)
MIX: Final = _mix(_ENV.get("HOLDFAST_LOCUST_MIX", _DEFAULT_MIX))
SECRET: Final = _ENV.get("HOLDFAST_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET).split(",")[0]
ADMIN_TOKEN: Final = _ENV.get("HOLDFAST_LOCUST_ADMIN_TOKEN", "dev-ops-token")
_SEED: Final = _ENV.get("HOLDFAST_LOCUST_SEED")
_RUN: Final = uuid.uuid4().hex[:8]  # request ids are unique per locust process
_COUNTER = itertools.count()
# card activity is skewed (Zipf, exponent 0.5), as in make bench's traffic
_CARD_WEIGHTS: Final = list(itertools.accumulate(1 / (r + 1) ** 0.5 for r in range(len(CARDS))))


class HoldfastUser(FastHttpUser):  # type: ignore[misc,unused-ignore]
    """One processor connection: signed network traffic and, now and then, an admin read."""

    wait_time = _wait(_ENV.get("HOLDFAST_LOCUST_WAIT", "0.05-0.2"))

    def on_start(self) -> None:
        self.rng = random.Random(None if _SEED is None else f"{_SEED}:{next(_COUNTER)}")
        self.approvals: list[Approval] = []

    # -- helpers ----------------------------------------------------------------------------
    def _id(self, kind: str) -> str:
        return f"lc-{_RUN}-{kind}-{next(_COUNTER)}"

    def _signed(self, path: str, body: dict[str, Any], name: str) -> Any:
        raw = orjson.dumps(body)
        headers = {"Content-Type": "application/json",
                   "Holdfast-Signature": sign_native(SECRET, int(time.time()), raw)}
        return self.client.post(path, data=raw.decode(), headers=headers, name=name,
                                catch_response=True)

    def _remember(self, approval: Approval) -> None:
        self.approvals.append(approval)
        if len(self.approvals) > _REMEMBER:
            self.approvals.pop(0)

    def _decide(self, body: dict[str, Any], name: str) -> dict[str, Any] | None:
        with self._signed("/v1/authorize", body, name) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return None
            answer: dict[str, Any] = resp.json()
            if answer.get("reason") in ("issuer_unavailable", "duplicate"):
                resp.failure(f"decision {answer.get('reason')}")  # the server's own trouble
            else:
                resp.success()
            return answer

    # -- tasks ------------------------------------------------------------------------------
    def authorize(self) -> None:
        rng = self.rng
        card = CARDS[rng.choices(range(len(CARDS)), cum_weights=_CARD_WEIGHTS)[0]]
        mcc, _, median, channels, name, _ = _CATEGORIES[
            rng.choices(range(len(_CATEGORIES)), cum_weights=_CATEGORY_WEIGHTS)[0]]
        amount = max(50, min(int(rng.lognormvariate(0.0, 0.8) * median), 1_000_00))
        merchant = rng.randrange(400)
        body: dict[str, Any] = {
            "id": self._id("a"), "card_id": card.id, "amount": amount,
            "currency": card.currency,
            "merchant": {"id": f"m-{mcc}-{merchant}", "name": f"{name} {merchant}", "mcc": mcc,
                         "country": _HOME.get(card.currency, "GB")},
            "channel": rng.choice(channels),
        }
        if rng.random() < 0.10:
            body["partial_allowed"] = True
        answer = self._decide(body, "POST /v1/authorize")
        if answer and answer.get("decision") == "approve":
            self._remember(Approval(body["id"], card, int(answer["approved_amount"]), mcc, body))

    def incremental(self) -> None:
        raisable = [a for a in self.approvals if a.mcc in ("5812", "5541", "7011")]
        if not raisable:
            return self.authorize()
        parent = self.rng.choice(raisable)
        body = dict(parent.body)
        body.pop("partial_allowed", None)
        body.update(id=self._id("i"), parent_id=parent.id,
                    amount=max(100, parent.amount // self.rng.choice((4, 5, 10))))
        answer = self._decide(body, "POST /v1/authorize (incremental)")
        if answer and answer.get("decision") == "approve":
            parent.amount += int(answer["approved_amount"])
        return None

    def _event(self, kind: str, approval: Approval, amount: int, final: bool, name: str) -> None:
        body = {"id": self._id("e"), "type": kind, "authorization_id": approval.id,
                "card_id": approval.card.id, "amount": amount,
                "currency": approval.card.currency, "final": final}
        with self._signed("/v1/events", body, name) as resp:
            if resp.status_code == 202:
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")

    def reversal(self) -> None:
        if not self.approvals:
            return self.authorize()
        approval = self.rng.choice(self.approvals)
        full = self.rng.random() < 0.6
        amount = approval.amount if full else max(1, approval.amount // 2)
        self._event("authorization.reversal", approval, amount, False,
                    "POST /v1/events (reversal)")
        approval.amount -= amount
        if approval.amount <= 0:
            self.approvals.remove(approval)
        return None

    def clearing(self) -> None:
        if not self.approvals:
            return self.authorize()
        approval = self.approvals.pop(self.rng.randrange(len(self.approvals)))
        roll = self.rng.random()
        # tips and fuel clear above the hold, split shipments and partial fills below it
        amount = (approval.amount + approval.amount // 5 if roll < 0.15
                  else max(1, approval.amount * 3 // 4) if roll < 0.25 else approval.amount)
        self._event("authorization.clearing", approval, max(1, amount), True,
                    "POST /v1/events (clearing)")
        return None

    def admin_read(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        roll = self.rng.random()
        if self.approvals and roll < 0.5:
            approval = self.rng.choice(self.approvals)
            self.client.get(f"/v1/authorizations/{approval.id}", headers=headers,
                            name="GET /v1/authorizations/{id}")
            return
        card = self.rng.choice(CARDS)
        if roll < 0.75:
            self.client.get(f"/v1/cards/{card.id}", headers=headers, name="GET /v1/cards/{id}")
        else:
            self.client.get(f"/v1/accounts/{card.account_id}", headers=headers,
                            name="GET /v1/accounts/{id}")


# task weights from HOLDFAST_LOCUST_MIX (data rather than @task; a task of weight w is listed
# w times, as locust itself does with a {task: weight} dict)
HoldfastUser.tasks = [task for task, weight in (
    (HoldfastUser.authorize, MIX["authorize"]),
    (HoldfastUser.incremental, MIX["incremental"]),
    (HoldfastUser.reversal, MIX["reversal"]),
    (HoldfastUser.clearing, MIX["clearing"]),
    (HoldfastUser.admin_read, MIX["admin"]),
) for _ in range(weight)]
