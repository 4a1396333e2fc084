"""The sandbox's card processor against Holdfast over real HTTP: a signed native authorisation,
its clearing delivered later through the network (with duplicates), a Stripe-format
authorisation; and the payments metrics an SRE would look at."""

from __future__ import annotations

import asyncio

import asyncpg

from clearing.consumer import Consumer, ConsumerConfig
from tests.payments.support import Flow, beneficiary
from tests.support import FakeClock


async def test_processor_authorises_and_clears_through_the_network(
        flow: Flow, db: asyncpg.Pool, clock: FakeClock) -> None:
    account = await flow.account(10_000)
    card = await flow.api.card(account)
    processor = flow.sandbox.processor
    answer = await processor.authorize(card, 1_250, "GBP")
    assert (answer["decision"], answer["approved_amount"]) == ("approve", 1_250)
    assert await flow.balances(account) == {"posted": 10_000, "held": 1_250, "available": 8_750}
    config = flow.sandbox.config
    config.duplicate_rate = 1.0  # every event delivered twice
    try:
        processor.event("authorization.clearing", answer["id"], 1_300, "GBP", final=True)
        await flow.sandbox.idle()
    finally:
        config.duplicate_rate = 0.0
    consumer = Consumer(db, ConsumerConfig(), clock=clock)
    while await consumer.run_batch():
        pass
    assert await flow.balances(account) == {"posted": 8_700, "held": 0, "available": 8_700}


async def test_processor_speaks_stripe_too(flow: Flow) -> None:
    account = await flow.account(10_000)
    card = await flow.api.card(account)
    answer = await flow.sandbox.processor.stripe_authorize(card, 400, "GBP")
    assert answer["approved"] is True
    assert await flow.balances(account) == {"posted": 10_000, "held": 400, "available": 9_600}


async def test_payment_metrics_for_an_sre(flow: Flow) -> None:
    account = await flow.account(10_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    await flow.pay(account, 100, to)
    await flow.settle()
    await asyncio.sleep(1.2)  # the gauges refresh every second in these tests
    r = await flow.api.raw("GET", "/metrics")
    text = r.body if isinstance(r.body, str) else ""
    for name in ('holdfast_payments{state="settled"}',
                 'holdfast_payee_checks_total{result="match"}',
                 "holdfast_payment_outbox_pending ", "holdfast_payment_outbox_oldest_age_seconds ",
                 "holdfast_bank_events_quarantined ", "holdfast_suspense_credits ",
                 "holdfast_payment_outbox_failed "):
        assert name in text, name
