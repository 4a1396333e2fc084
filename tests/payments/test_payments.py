"""Outbound payments end to end over real HTTP: Holdfast's API, the sandbox bank's API and its
signed webhooks, the payments worker in between. Each test ends with ``verify`` (conftest)."""

from __future__ import annotations

from tests.payments.support import FEE, Flow, beneficiary
from tests.support import uid


def events(payment: dict[str, object]) -> list[tuple[object, object]]:
    history = payment["history"]
    assert isinstance(history, list)
    return [(h["event"], h["to"]) for h in history]


async def test_happy_path_payee_checked_held_sent_settled(flow: Flow) -> None:
    """Pay Jane Smith 25.00 with a 0.25 fee: held before anything leaves, settled by the bank,
    posted as two entries (payment, fee)."""
    account = await flow.account(10_000)
    jane = beneficiary("Jane Smith")
    flow.payee("Jane Smith", jane)
    key = uid("key")
    r = await flow.pay(account, 2_500, jane, "INVOICE 77", key=key)
    assert r.status == 201, r.body
    payment = r.body
    assert (payment["status"], payment["held"], payment["fee"]) == ("queued", 2_500 + FEE, FEE)
    assert payment["payee_check"] == {"result": "match", "suggested_name": None}
    assert await flow.balances(account) == {"posted": 10_000, "held": 2_525, "available": 7_475}

    # the same request again is the same payment; another body under the key is refused
    again = await flow.pay(account, 2_500, jane, "INVOICE 77", key=key)
    assert (again.status, again.body["id"]) == (200, payment["id"])
    other = await flow.pay(account, 2_600, jane, "INVOICE 77", key=key)
    assert (other.status, other.body["error"]["code"]) == (409, "idempotency_conflict")

    await flow.settle()
    done = await flow.payment(payment["id"])
    assert done["status"] == "settled" and done["held"] == 0 and done["bank_payment_id"]
    history = events(done)
    assert history[:3] == [("created", "checking_payee"), ("payee_ok", "queued"),
                           ("submitted", "submitted")]
    # the network may deliver 'settled' before 'accepted': the late one changes nothing
    assert sorted(history[3:]) in ([("accepted", "accepted"), ("settled", "settled")],
                                   [("accepted", "settled"), ("settled", "settled")])
    assert await flow.balances(account) == {"posted": 7_475, "held": 0, "available": 7_475}
    assert len(flow.sandbox.bank.by_end_to_end(payment["id"])) == 1
    page = await flow.entries(account)
    assert [(e["kind"], e["amount"], e["reference"]) for e in page.body["entries"][:2]] == [
        ("payment_fee", -FEE, payment["id"]), ("payment", -2_500, payment["id"])]


async def test_known_payee_is_not_checked_again_and_sent_is_not_settled(flow: Flow) -> None:
    account = await flow.account(10_000)
    bob = beneficiary("Robert Jones")
    flow.payee("Robert Jones", bob)
    first = await flow.pay(account, 100, bob)
    await flow.settle()
    checks = flow.sandbox.bank.payee_checks_seen
    # the same payee, the same name however it is typed: no second check
    flow.sandbox.bank.next_lives.append("hold")  # the bank acknowledges, then stays silent
    second = await flow.pay(account, 200, {**bob, "name": "  robert JONES "})
    assert second.status == 201 and second.body["status"] == "queued"
    assert flow.sandbox.bank.payee_checks_seen == checks
    await flow.settle()
    assert await flow.status(second.body["id"]) == "submitted"  # sent, never shown as settled
    assert await flow.balances(account) == {"posted": 10_000 - 100 - FEE, "held": 200 + FEE,
                                            "available": 10_000 - 300 - 2 * FEE}
    [sent] = flow.sandbox.bank.by_end_to_end(second.body["id"])
    flow.sandbox.bank.fact(sent, "accepted")
    flow.sandbox.bank.fact(sent, "settled")
    await flow.settle()
    assert await flow.status(second.body["id"]) == "settled"
    assert await flow.status(first.body["id"]) == "settled"


async def test_payee_check_no_match_is_blocked_and_releases_the_hold(flow: Flow) -> None:
    account = await flow.account(5_000)
    to = beneficiary("Alice Cooper")
    flow.payee("Robert Jones", to)
    r = await flow.pay(account, 1_000, to)
    assert r.status == 201 and r.body["status"] == "blocked"
    assert r.body["payee_check"]["result"] == "no_match" and r.body["held"] == 0
    assert await flow.balances(account) == {"posted": 5_000, "held": 0, "available": 5_000}
    await flow.settle()
    assert flow.sandbox.bank.by_end_to_end(r.body["id"]) == []  # nothing was sent
    c = await flow.api.admin("POST", f"/v1/payments/{r.body['id']}/confirm", scope="customer")
    assert (c.status, c.body["error"]["code"]) == (409, "invalid_state")


async def test_close_match_waits_for_confirmation_then_goes(flow: Flow) -> None:
    account = await flow.account(5_000)
    to = beneficiary("Jane Smyth")
    flow.payee("Jane Smith", to)
    r = await flow.pay(account, 1_200, to)
    assert r.body["status"] == "pending_confirmation"
    assert r.body["payee_check"] == {"result": "close_match", "suggested_name": "Jane Smith"}
    assert r.body["held"] == 1_200 + FEE
    await flow.settle()
    assert await flow.status(r.body["id"]) == "pending_confirmation"
    assert flow.sandbox.bank.by_end_to_end(r.body["id"]) == []
    path = f"/v1/payments/{r.body['id']}/confirm"
    c = await flow.api.admin("POST", path, scope="customer")
    assert (c.status, c.body["status"]) == (200, "queued")
    await flow.settle()
    assert await flow.status(r.body["id"]) == "settled"
    again = await flow.api.admin("POST", path, scope="customer")  # a retried confirm
    assert (again.status, again.body["status"]) == (200, "settled")
    # the customer confirmed this payee under this name: the next payment goes straight on
    nxt = await flow.pay(account, 100, to)
    assert nxt.body["status"] == "queued"


async def test_close_match_cancelled_releases_the_hold(flow: Flow) -> None:
    account = await flow.account(5_000)
    to = beneficiary("J Smith")
    flow.payee("Jane Smith", to)
    r = await flow.pay(account, 700, to)
    assert r.body["status"] == "pending_confirmation"
    c = await flow.api.admin("POST", f"/v1/payments/{r.body['id']}/cancel", scope="customer")
    assert (c.status, c.body["status"], c.body["held"]) == (200, "cancelled", 0)
    assert await flow.balances(account) == {"posted": 5_000, "held": 0, "available": 5_000}
    late = await flow.api.admin("POST", f"/v1/payments/{r.body['id']}/confirm")
    assert (late.status, late.body["error"]["code"]) == (409, "invalid_state")


async def test_rejected_by_the_bank_releases_the_hold(flow: Flow) -> None:
    account = await flow.account(5_000)
    to = beneficiary("Acme Supplies Ltd")
    flow.payee("Acme Supplies Ltd", to)
    flow.sandbox.bank.next_lives.append("reject")
    r = await flow.pay(account, 3_000, to)
    await flow.settle()
    done = await flow.payment(r.body["id"])
    assert (done["status"], done["reason"], done["held"]) == (
        "rejected", "beneficiary_account_closed", 0)
    assert await flow.balances(account) == {"posted": 5_000, "held": 0, "available": 5_000}
    # refused outright at submission (4xx): rejected too, nothing made at the bank
    flow.sandbox.bank.next_submissions.append("refuse")
    r2 = await flow.pay(account, 1_000, to)
    await flow.settle()
    done2 = await flow.payment(r2.body["id"])
    assert (done2["status"], done2["reason"]) == ("rejected", "invalid_account")
    assert flow.sandbox.bank.by_end_to_end(r2.body["id"]) == []
    assert await flow.balances(account) == {"posted": 5_000, "held": 0, "available": 5_000}


async def test_returned_after_settlement_reverses_the_posting(flow: Flow) -> None:
    account = await flow.account(5_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    r = await flow.pay(account, 2_000, to)
    await flow.settle()
    settled = await flow.payment(r.body["id"])
    assert settled["status"] == "settled"
    assert await flow.balances(account) == {"posted": 3_000 - FEE, "held": 0,
                                            "available": 3_000 - FEE}
    back = await flow.api.session.post(
        f"{flow.sandbox_url}/sandbox/bank/payments/{settled['bank_payment_id']}/return")
    assert back.status == 200
    back.release()
    await flow.settle()
    done = await flow.payment(r.body["id"])
    assert (done["status"], done["reason"]) == ("returned", "beneficiary_returned")
    # the amount comes back; the fee was for a payment that was made
    assert await flow.balances(account) == {"posted": 5_000 - FEE, "held": 0,
                                            "available": 5_000 - FEE}
    kinds = [(e["kind"], e["amount"]) for e in (await flow.entries(account)).body["entries"]]
    assert kinds[:3] == [("payment_return", 2_000), ("payment_fee", -FEE), ("payment", -2_000)]


async def test_submission_timeout_is_retried_with_the_same_key_never_twice(flow: Flow) -> None:
    """The bank makes the payment but its answer comes too late; the intent stays queued and
    held, the retry (same Idempotency-Key) finds the payment the first attempt made."""
    account = await flow.account(5_000)
    to = beneficiary("Robert Jones")
    flow.payee("Robert Jones", to)
    bank = flow.sandbox.bank
    bank.next_submissions.append("timeout")
    bank.next_lives.append("hold")
    seen = bank.submissions_seen
    r = await flow.pay(account, 1_500, to)
    await flow.worker.drain()
    after_timeout = await flow.payment(r.body["id"])
    assert after_timeout["status"] == "queued" and after_timeout["held"] == 1_500 + FEE
    assert bank.submissions_seen == seen + 1 and len(bank.by_end_to_end(r.body["id"])) == 1
    job = await flow.db.fetchrow("SELECT status, attempts, last_error FROM payment_outbox"
                                 " WHERE payment_id = $1 AND kind = 'submit'", r.body["id"])
    assert job is not None and (job["status"], job["attempts"]) == ("pending", 1)
    flow.clock.advance(2)  # past the back-off
    await flow.worker.drain()
    [made] = bank.by_end_to_end(r.body["id"])
    submitted = await flow.payment(r.body["id"])
    assert (submitted["status"], submitted["bank_payment_id"]) == ("submitted", made.id)
    assert bank.submissions_seen == seen + 2
    bank.fact(made, "accepted")
    bank.fact(made, "settled")
    await flow.settle()
    assert await flow.status(r.body["id"]) == "settled"
    assert await flow.balances(account) == {"posted": 3_500 - FEE, "held": 0,
                                            "available": 3_500 - FEE}
    assert len(bank.by_end_to_end(r.body["id"])) == 1


async def test_webhook_overtaking_a_lost_answer_settles_without_resubmitting(flow: Flow) -> None:
    """The submission's answer is lost but the bank's webhooks arrive first: the facts win and
    the outbox job finds nothing left to do."""
    account = await flow.account(5_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    bank = flow.sandbox.bank
    bank.next_submissions.append("timeout")
    r = await flow.pay(account, 900, to)
    await flow.worker.drain()  # times out; the bank settles and tells us meanwhile
    await flow.sandbox.idle()
    await flow.worker.drain()
    assert await flow.status(r.body["id"]) == "settled"
    seen = bank.submissions_seen
    flow.clock.advance(2)
    await flow.settle()
    assert bank.submissions_seen == seen  # never sent again
    assert len(bank.by_end_to_end(r.body["id"])) == 1


async def _bank_fact(flow: Flow, payment: dict[str, object], fact: str, bank_id: str,
                     **extra: object) -> str:
    event_id = uid("evt")
    data = {"id": bank_id, "end_to_end_id": payment["id"], "amount": payment["amount"],
            "currency": "GBP", **extra}
    r = await flow.bank_webhook({"id": event_id, "type": f"payment.{fact}", "data": data})
    assert r.status == 200, r.body
    return event_id


async def _inbox(flow: Flow, event_id: str) -> tuple[str, bool]:
    row = await flow.db.fetchrow("SELECT status, retryable FROM bank_events"
                                 " WHERE provider_event_id = $1", event_id)
    assert row is not None
    return row["status"], row["retryable"]


async def test_out_of_order_and_contradictory_bank_facts(flow: Flow) -> None:
    """A return before its settlement waits in quarantine and is applied once the settlement
    lands; a fact that contradicts the history (settled after rejected), or disagrees with the
    payment (amount), stays in quarantine and changes nothing."""
    account = await flow.account(10_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    flow.sandbox.bank.next_lives.extend(["hold", "hold"])
    first = (await flow.pay(account, 1_000, to)).body
    second = (await flow.pay(account, 2_000, to)).body
    await flow.settle()
    bank_1 = (await flow.payment(first["id"]))["bank_payment_id"]
    bank_2 = (await flow.payment(second["id"]))["bank_payment_id"]

    early = await _bank_fact(flow, first, "returned", bank_1, return_id=uid("rtn"))
    await flow.worker.drain()
    assert await _inbox(flow, early) == ("quarantined", True)
    assert await flow.status(first["id"]) == "submitted"
    await _bank_fact(flow, first, "settled", bank_1, value_date="2030-03-04")
    await flow.worker.drain()
    assert (await _inbox(flow, early))[0] == "applied"
    done = await flow.payment(first["id"])
    assert (done["status"], done["settled_on"], done["returned_on"]) == (
        "returned", "2030-03-04", done["returned_on"])

    await _bank_fact(flow, second, "rejected", bank_2, reason="account_closed")
    wrong = await _bank_fact(flow, second, "settled", bank_2)
    await flow.worker.drain()
    assert await _inbox(flow, wrong) == ("quarantined", False)
    assert await flow.status(second["id"]) == "rejected"
    odd = await _bank_fact(flow, {**second, "amount": 1}, "accepted", bank_2)
    stranger = await _bank_fact(flow, {**second, "id": "pay_unknown"}, "accepted", bank_2)
    await flow.worker.drain()
    assert await _inbox(flow, odd) == ("quarantined", False)
    assert await _inbox(flow, stranger) == ("quarantined", False)
    assert await flow.balances(account) == {"posted": 10_000 - FEE, "held": 0,
                                            "available": 10_000 - FEE}


async def test_payee_check_the_bank_cannot_answer_is_retried_by_the_worker(flow: Flow) -> None:
    account = await flow.account(5_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    flow.sandbox.config.failure_rate = 1.0  # every bank call answered 503
    try:
        r = await flow.pay(account, 400, to)
        assert (r.status, r.body["status"], r.body["held"]) == (201, "checking_payee", 400 + FEE)
        await flow.worker.drain()
        assert await flow.status(r.body["id"]) == "checking_payee"
    finally:
        flow.sandbox.config.failure_rate = 0.0
    flow.clock.advance(2)  # the retry's back-off
    await flow.settle()
    done = await flow.payment(r.body["id"])
    assert (done["status"], done["payee_check"]["result"]) == ("settled", "match")
