"""Property: whatever order the bank's facts about a payment arrive in (late acknowledgements,
'settled' before 'accepted', a return before its settlement), duplicated or re-sent under new
event ids, and however their processing interleaves with their arrival, each payment ends in the
state the bank's history implies, its money moved exactly once, nothing is left in quarantine,
and ``verify`` holds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.payments.facts import Fact, apply_fact
from clearing.payments.model import new_id
from clearing.payments.webhooks import parse_webhook, store_bank_event
from clearing.payments.worker import requeue_bank_events
from holds.verify import verify
from tests.payments.support import FEE, Flow, beneficiary

HISTORIES = {  # what the bank did -> the facts it tells, in its own order, and the end state
    "settle": (["accepted", "settled"], "settled"),
    "settle_unannounced": (["settled"], "settled"),
    "settle_return": (["accepted", "settled", "returned"], "returned"),
    "reject": (["rejected"], "rejected"),
    "reject_after_accept": (["accepted", "rejected"], "rejected"),
    "accept_only": (["accepted"], "accepted"),
}


@dataclass(frozen=True)
class Delivery:
    payment: int
    fact: str  # a bank fact, or 'ack' (the outbox got the submission's answer)
    copy: int  # 0: first delivery; 1: the same event again; 2: re-sent under a new event id
    process_after: bool  # the worker runs right after this arrives


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[int], list[Delivery]]:
    histories = draw(st.lists(st.sampled_from(sorted(HISTORIES)), min_size=1, max_size=2))
    amounts = draw(st.lists(st.integers(1, 5_000), min_size=len(histories),
                            max_size=len(histories)))
    base = [(i, f) for i, h in enumerate(histories) for f in [*HISTORIES[h][0], "ack"]]
    extra = draw(st.lists(st.tuples(st.sampled_from(base), st.sampled_from([1, 2])),
                          max_size=3))
    items = [(i, f, 0) for i, f in base] + [(i, f, c) for (i, f), c in extra]
    order = draw(st.permutations(items))
    flags = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    return histories, amounts, [Delivery(i, f, c, p) for (i, f, c), p in zip(order, flags,
                                                                              strict=True)]


async def _process(flow: Flow) -> None:
    while await flow.worker.apply_one() or await requeue_bank_events(flow.db):
        pass


async def _deliver(flow: Flow, d: Delivery, payment_id: str, bank_id: str, amount: int,
                   event_ids: dict[tuple[int, str], str]) -> None:
    if d.fact == "ack":
        async with flow.db.acquire() as conn, conn.transaction():
            await apply_fact(conn, payment_id, Fact("submitted", "outbox",
                                                    bank_payment_id=bank_id),
                             dt.datetime.now(dt.UTC))
        return
    key = (d.payment, d.fact)
    event_id = event_ids.setdefault(key, new_id("evt"))
    if d.copy == 2:
        event_id = new_id("evt")
    data = {"id": bank_id, "end_to_end_id": payment_id, "amount": amount, "currency": "GBP",
            "value_date": "2030-06-01"}
    if d.fact == "returned":
        data["return_id"] = f"rtn_{bank_id}"
    body = {"id": event_id, "type": f"payment.{d.fact}", "data": data}
    _, event_type, canonical = parse_webhook(body)
    await store_bank_event(flow.db, event_id, event_type, body, canonical)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=scenarios())
async def test_any_interleaving_of_bank_facts_keeps_every_invariant(
        flow: Flow, case: tuple[list[str], list[int], list[Delivery]]) -> None:
    histories, amounts, deliveries = case
    account = await flow.account(20_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    payments = []
    for amount in amounts:
        r = await flow.pay(account, amount, to)
        assert r.body["status"] == "queued", r.body
        payments.append((r.body["id"], new_id("bp", 24)))
    event_ids: dict[tuple[int, str], str] = {}
    for d in deliveries:
        payment_id, bank_id = payments[d.payment]
        await _deliver(flow, d, payment_id, bank_id, amounts[d.payment], event_ids)
        if d.process_after:
            await _process(flow)
    await _process(flow)

    posted, held = 20_000, 0
    for (payment_id, _), history, amount in zip(payments, histories, amounts, strict=True):
        expected = HISTORIES[history][1]
        assert await flow.status(payment_id) == expected, history
        if expected in ("settled", "returned"):
            posted -= amount + FEE
        if expected == "returned":
            posted += amount
        if expected == "accepted":
            held += amount + FEE
        left = await flow.db.fetchval(
            "SELECT count(*) FROM bank_events WHERE canonical ->> 'payment_id' = $1"
            " AND status <> 'applied'", payment_id)
        assert left == 0, "a fact stayed in quarantine"
    assert await flow.balances(account) == {"posted": posted, "held": held,
                                            "available": posted - held}
    async with flow.db.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report.render()
