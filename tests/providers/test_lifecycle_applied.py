"""Provider events after the decision reach the ledger: each adapter's canonical events are
applied by the real consumer ("auth 1000, partial reversal 300, clearing 700 -> posted 700,
held 0"), in the provider's own words."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from clearing.consumer import Consumer, ConsumerConfig
from tests.providers.support import (
    Providers,
    dumps,
    exact_json,
    fixture,
    lithic_asa,
    marqeta_jit,
    register_card,
    stripe_authorization,
    stripe_event,
    token,
)
from tests.support import Api, FakeClock, uid


async def _consume(db: asyncpg.Pool, clock: FakeClock) -> None:
    consumer = Consumer(db, ConsumerConfig(batch_size=500), clock=clock)
    while await consumer.run_batch():
        pass


async def test_stripe_reversal_and_capture(api: Api, providers: Providers, db: asyncpg.Pool,
                                           clock: FakeClock) -> None:
    card = uid("ic")
    account = await register_card(api, card, "GBP", 10_000)
    auth = stripe_authorization(card, 1_000)
    r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", auth)))
    assert r.body["approved"] is True
    reversed_ = {**auth, "amount": 700, "pending_request": None}
    await providers.stripe(dumps(stripe_event("issuing_authorization.updated", reversed_,
                                              previous_attributes={"amount": 1_000})))
    capture = {**fixture("stripe_transaction_capture.json"), "id": f"ipi_{token()}",
               "authorization": auth["id"], "card": card, "amount": -700, "currency": "gbp"}
    await providers.stripe(dumps(stripe_event("issuing_transaction.created", capture)))
    await _consume(db, clock)
    assert await api.balances(account) == {"posted": 9_300, "held": 0, "available": 9_300}


async def test_lithic_reversal_and_clearing(api: Api, providers: Providers, db: asyncpg.Pool,
                                            clock: FakeClock) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 10_000)
    asa = lithic_asa(card, 1_000)
    assert (await providers.lithic("asa", dumps(asa))).body["result"] == "APPROVED"
    events: list[dict[str, Any]] = [{"type": "AUTHORIZATION", "amount": 1_000, "token": token()}]
    for kind, amount, status in [("AUTHORIZATION_REVERSAL", 300, "PENDING"),
                                 ("CLEARING", 700, "SETTLED")]:
        events.append({"type": kind, "amount": amount, "token": token(),
                       "amounts": {"cardholder": {"amount": amount, "currency": "GBP"}}})
        update = {"event_type": "card_transaction.updated", "token": asa["token"],
                  "card_token": card, "status": status, "events": list(events)}
        assert (await providers.lithic("events", dumps(update))).status == 200
    await _consume(db, clock)
    assert await api.balances(account) == {"posted": 9_300, "held": 0, "available": 9_300}
    got = await api.admin("GET", f"/v1/authorizations/lithic:{asa['token']}")
    assert got.body["state"] == "cleared"


async def test_marqeta_reversal_and_clearing(api: Api, providers: Providers, db: asyncpg.Pool,
                                             clock: FakeClock) -> None:
    card = uid("mcard")
    account = await register_card(api, card, "GBP", 10_000)
    jit = marqeta_jit(card, "10.00")
    original = jit["gpa_order"]["jit_funding"]["token"]
    assert (await providers.marqeta("jit", exact_json(jit))).status == 200
    for kind, method, amount in [("authorization.reversal", "pgfs.authorization.reversal", "3.00"),
                                 ("authorization.clearing", "pgfs.authorization.capture", "7.00")]:
        txn = {"type": kind, "state": "COMPLETION", "token": token(), "card_token": card,
               "amount": Decimal(amount), "currency_code": "GBP",
               "gpa_order": {"currency_code": "GBP", "jit_funding": {
                   "token": token(), "method": method, "amount": Decimal(amount),
                   "original_jit_funding_token": original}}}
        r = await providers.marqeta("events", exact_json({"transactions": [txn]}))
        assert r.status == 200, r.body
    await _consume(db, clock)
    assert await api.balances(account) == {"posted": 9_300, "held": 0, "available": 9_300}
