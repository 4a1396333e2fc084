"""One card scenario through all four entry points (native and the three providers): the same
decisions, the same reasons, the same ledger."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import asyncpg

from tests.providers.support import (
    Providers,
    dumps,
    exact_json,
    lithic_asa,
    marqeta_jit,
    register_card,
    stripe_authorization,
    stripe_event,
    token,
)
from tests.support import Api, uid


@dataclass(frozen=True)
class Outcome:
    approved: bool
    amount: int
    handle: str  # what an incremental names: the provider's id of the first request


class EntryPoint(Protocol):
    async def authorize(self, card: str, amount: int, *, partial: bool = False,
                        parent: str | None = None) -> Outcome: ...


class Native:
    def __init__(self, api: Api) -> None:
        self.api = api

    async def authorize(self, card: str, amount: int, *, partial: bool = False,
                        parent: str | None = None) -> Outcome:
        extra = {"parent_id": parent} if parent else {}
        r = await self.api.authorize(card, amount, partial_allowed=partial, **extra)
        assert r.status == 200, r.body
        return Outcome(r.body["decision"] == "approve", r.body["approved_amount"], r.body["id"])


class Lithic:
    def __init__(self, providers: Providers) -> None:
        self.p = providers

    async def authorize(self, card: str, amount: int, *, partial: bool = False,
                        parent: str | None = None) -> Outcome:
        asa_token = parent or token()
        body = lithic_asa(card, amount, asa_token=asa_token, partial=partial,
                          prior_events=1 if parent else 0)
        r = await self.p.lithic("asa", dumps(body))
        assert r.status == 200, r.body
        approved = r.body["result"] == "APPROVED"
        return Outcome(approved, r.body.get("approved_amount", amount) if approved else 0,
                       asa_token)


class Marqeta:
    def __init__(self, providers: Providers) -> None:
        self.p = providers

    async def authorize(self, card: str, amount: int, *, partial: bool = False,
                        parent: str | None = None) -> Outcome:
        jit_token = token()
        method = "pgfs.authorization.incremental" if parent else "pgfs.authorization"
        body = marqeta_jit(card, str(Decimal(amount).scaleb(-2)), jit_token=jit_token,
                           method=method, original=parent, partial=partial)
        r = await self.p.marqeta("jit", exact_json(body))
        assert r.status in (200, 402), r.body
        funded = int(Decimal(r.body["jit_funding"]["amount"]).scaleb(2))
        return Outcome(r.status == 200, funded if r.status == 200 else 0, jit_token)


class Stripe:
    def __init__(self, providers: Providers) -> None:
        self.p = providers

    async def authorize(self, card: str, amount: int, *, partial: bool = False,
                        parent: str | None = None) -> Outcome:
        iauth = parent or f"iauth_{uid('s').replace('-', '')}"
        auth = stripe_authorization(card, amount, iauth=iauth, controllable=partial,
                                    history=1 if parent else 0)
        r = await self.p.stripe(dumps(stripe_event("issuing_authorization.request", auth)))
        assert r.status == 200, r.body
        approved = r.body["approved"]
        return Outcome(approved, r.body.get("amount", amount) if approved else 0, iauth)


async def _scenario(api: Api, db: asyncpg.Pool, entry: EntryPoint
                    ) -> tuple[list[tuple[bool, int]], list[str], dict[str, int]]:
    card = uid("card")
    account = await register_card(api, card, "GBP", 10_000)
    first = await entry.authorize(card, 2_500)                       # approve
    steps = [first, await entry.authorize(card, 1_000, parent=first.handle)]  # incremental
    steps.append(await entry.authorize(card, 7_000))                  # insufficient funds
    await api.admin("POST", f"/v1/cards/{card}/freeze", scope="customer")
    steps.append(await entry.authorize(card, 100))                    # frozen card
    await api.admin("POST", f"/v1/cards/{card}/unfreeze", scope="customer")
    steps.append(await entry.authorize(card, 8_000, partial=True))    # partial
    reasons = await db.fetch(
        "SELECT r.reason FROM authorization_requests r JOIN authorizations a"
        " ON a.id = r.authorization_id WHERE a.card_id = $1"
        " ORDER BY r.decided_at, r.id NULLS FIRST", card)  # (an initial request's id is NULL)
    return ([(s.approved, s.amount) for s in steps], [r["reason"] for r in reasons],
            await api.balances(account))


async def test_the_same_scenario_gives_the_same_decisions_and_ledger_everywhere(
        api: Api, providers: Providers, db: asyncpg.Pool) -> None:
    entries: dict[str, EntryPoint] = {
        "native": Native(api), "lithic": Lithic(providers), "marqeta": Marqeta(providers),
        "stripe": Stripe(providers)}
    results = {name: await _scenario(api, db, entry) for name, entry in entries.items()}
    expected = (
        [(True, 2_500), (True, 1_000), (False, 0), (False, 0), (True, 6_500)],
        ["approved", "approved", "insufficient_funds", "card_restricted", "partial_approval"],
        {"posted": 10_000, "held": 10_000, "available": 0},
    )
    for name, got in results.items():
        assert got == expected, name
