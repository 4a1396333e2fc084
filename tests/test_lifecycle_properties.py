"""Property: a random lifecycle, delivered in a random order with random duplicates, ends with
``verify`` clean, each event applied exactly once, and the same balances as in-order delivery."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.consumer import Consumer, ConsumerConfig, requeue_quarantined
from clearing.inbox import store_event
from holds.verify import verify
from tests.support import Api, FakeClock, auth_body, uid

Op = tuple[str, int, bool]  # (type, amount, final)

_op = st.one_of(
    st.tuples(st.just("authorization.reversal"), st.integers(1, 3_000), st.just(False)),
    st.tuples(st.just("authorization.clearing"), st.integers(1, 3_000), st.just(False)),
    st.tuples(st.just("refund"), st.integers(1, 3_000), st.just(False)),
)


@st.composite
def lifecycles(draw: st.DrawFn) -> tuple[int, list[Op], list[int]]:
    amount = draw(st.integers(1, 5_000))
    ops: list[Op] = draw(st.lists(_op, max_size=4))
    if draw(st.booleans()):
        ops.append(("authorization.clearing", draw(st.integers(1, 6_000)), True))
    # delivery: every op at least once, some twice, in any order
    order = list(range(len(ops))) + draw(st.lists(st.sampled_from(range(len(ops))), max_size=3)
                                         if ops else st.just([]))
    return amount, ops, draw(st.permutations(order))


async def _run(api: Api, db: asyncpg.Pool, consumer: Consumer, amount: int, ops: list[Op],
               order: list[int]) -> tuple[int, int]:
    account = await api.account("GBP", funds=20_000)
    card = await api.card(account)
    body = auth_body(card, amount)
    authorization_id = body["id"]
    event_ids = [uid("evt") for _ in ops]
    for i in order:
        type_, value, final = ops[i]
        event: dict[str, Any] = {"id": event_ids[i], "type": type_, "amount": value,
                                 "currency": "GBP", "final": final,
                                 "authorization_id": authorization_id, "card_id": None}
        await store_event(db, "native", event_ids[i], type_, event, canonical=event)
    # some events may arrive before the authorisation itself
    await consumer.run_batch()
    r = await api.authorize_raw(orjson.dumps(body))
    assert r.body["decision"] == "approve"
    await requeue_quarantined(db)
    while await consumer.run_batch():
        pass
    applied = await db.fetchval(
        "SELECT count(*) FROM ledger_operations WHERE op_id = ANY($1)",
        [f"native:{e}" for e in event_ids])
    assert applied == len(ops), "each event applied exactly once"
    balances = await api.balances(account)
    return balances["posted"], balances["held"]


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=lifecycles())
async def test_any_delivery_order_gives_the_in_order_balances(
    api: Api, db: asyncpg.Pool, clock: FakeClock, case: tuple[int, list[Op], list[int]],
) -> None:
    amount, ops, order = case
    consumer = Consumer(db, ConsumerConfig(batch_size=1_000), clock=clock)
    shuffled = await _run(api, db, consumer, amount, ops, order)
    in_order = await _run(api, db, consumer, amount, ops, list(range(len(ops))))
    assert shuffled == in_order
    # the balances follow from the events alone, whatever the order
    cleared = sum(v for t, v, _ in ops if t == "authorization.clearing")
    reversed_ = sum(v for t, v, _ in ops if t == "authorization.reversal")
    refunded = sum(v for t, v, _ in ops if t == "refund")
    final = any(f for _, _, f in ops)
    assert shuffled == (20_000 - cleared + refunded,
                        0 if final else max(0, amount - cleared - reversed_))
    async with db.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report.render()
