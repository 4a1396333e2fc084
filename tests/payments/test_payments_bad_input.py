"""Bad input is refused with a stable code and changes nothing: no payment, no hold, no event
stored, nothing sent to the bank. Unsigned or wrongly signed bank webhooks are refused before
anything parses them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.payments.support import BANK_SECRET, Flow, beneficiary
from tests.support import uid

_GOOD: dict[str, Any] = {"amount": 500, "currency": "GBP", "reference": "OK REF",
                         "beneficiary": {"name": "Jane Smith", "sort_code": "20-00-00",
                                         "account_number": "12345678"}}


def _with(**changes: Any) -> dict[str, Any]:
    body = {**_GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(("body", "code"), [
    (_with(amount=...), "missing_field"),
    (_with(amount=12.5), "invalid_amount"),
    (_with(amount=True), "invalid_amount"),
    (_with(amount=0), "invalid_amount"),
    (_with(currency="XXX"), "unknown_currency"),
    (_with(currency="EUR"), "unsupported_currency"),
    (_with(reference=...), "missing_field"),
    (_with(reference="x" * 36), "invalid_reference"),
    (_with(reference="card 4111 1111 1111 1111"), "invalid_reference"),
    (_with(beneficiary=...), "missing_field"),
    (_with(beneficiary="Jane"), "invalid_beneficiary"),
    (_with(beneficiary={"name": "Jane Smith"}), "invalid_beneficiary"),
    (_with(beneficiary={"name": "Jane", "iban": "GB82WEST12345698765432",
                        "sort_code": "200000", "account_number": "12345678"}),
     "invalid_beneficiary"),
    (_with(beneficiary={"name": "Jane", "iban": "GB00WEST12345698765432"}), "invalid_iban"),
    (_with(beneficiary={"name": "Jane", "sort_code": "2000", "account_number": "12345678"}),
     "invalid_sort_code"),
    (_with(beneficiary={"name": "Jane", "sort_code": "200000", "account_number": "1234"}),
     "invalid_account_number"),
    (_with(beneficiary={"name": "12345", "sort_code": "200000", "account_number": "12345678"}),
     "invalid_beneficiary"),
    (_with(beneficiary={"name": "", "sort_code": "200000", "account_number": "12345678"}),
     "invalid_field"),
])
async def test_bad_payment_bodies_change_nothing(flow: Flow, body: dict[str, Any], code: str
                                                 ) -> None:
    account = await flow.account(1_000)
    r = await flow.api.admin("POST", "/v1/payments", {"account_id": account, **body},
                             headers={"Idempotency-Key": uid("key")})
    assert (r.status, r.body["error"]["code"]) == (400, code), r.body
    assert await flow.db.fetchval("SELECT count(*) FROM payments WHERE account_id = $1",
                                  account) == 0
    assert await flow.balances(account) == {"posted": 1_000, "held": 0, "available": 1_000}


async def test_refusals_by_the_ledger_change_nothing(flow: Flow) -> None:
    account = await flow.account(1_000)
    to = beneficiary("Jane Smith")
    checks = flow.sandbox.bank.payee_checks_seen
    r = await flow.api.admin("POST", "/v1/payments", {"account_id": account, **_GOOD})
    assert (r.status, r.body["error"]["code"]) == (400, "missing_idempotency_key")
    r = await flow.pay(account, 990, to)  # 990 + 25 fee > 1000
    assert (r.status, r.body["error"]["code"]) == (422, "insufficient_funds")
    r = await flow.pay(uid("nobody"), 10, to)
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_account")
    usd = await flow.api.account("USD", funds=1_000)
    r = await flow.pay(usd, 10, {"name": "Jane", "iban": "DE89370400440532013000"},
                       currency="GBP")
    assert (r.status, r.body["error"]["code"]) == (422, "currency_mismatch")
    r = await flow.api.admin("POST", "/v1/payments", {"account_id": account, **_GOOD},
                             headers={"Idempotency-Key": uid("key")}, scope="ops")
    assert (r.status, r.body["error"]["code"]) == (403, "insufficient_scope")
    r = await flow.api.raw("POST", "/v1/payments", b"{not json",
                           {"Authorization": f"Bearer {flow.api.tokens['admin']}",
                            "Idempotency-Key": uid("key")})
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_json")
    for who in (account, usd):
        assert await flow.db.fetchval("SELECT count(*) FROM payments WHERE account_id = $1",
                                      who) == 0
    assert await flow.balances(account) == {"posted": 1_000, "held": 0, "available": 1_000}
    assert flow.sandbox.bank.payee_checks_seen == checks
    assert (await flow.api.admin("GET", "/v1/payments/pay_nope")).status == 404
    r = await flow.api.admin("POST", "/v1/payments/pay_nope/confirm")
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_payment")


async def test_bank_webhooks_must_be_signed_by_the_bank(flow: Flow) -> None:
    event_id = uid("evt")
    body: dict[str, Any] = {"id": event_id, "type": "credit.received", "data": {
        "id": uid("btx"), "amount": 100, "currency": "GBP", "value_date": "2030-01-01"}}
    cases = [
        (await flow.bank_webhook(body, header=None), "missing_signature"),
        (await flow.bank_webhook(body, secret="not-the-bank"), "bad_signature"),
        (await flow.bank_webhook(body, header="t=1,v1=00"), "stale_signature"),
        (await flow.bank_webhook(body, header="garbage"), "bad_signature"),
    ]
    for reply, code in cases:
        assert (reply.status, reply.body["error"]["code"]) == (401, code)
    assert "Holdfast-Signature" not in str(cases[0][0].body)
    # a valid signature over a body that is not JSON, or not a bank event: 400, nothing stored
    bad = await flow.api.raw("POST", "/providers/bank/webhooks", b"[1, 2",
                             {"Bank-Signature": flow.api.sign(b"[1, 2", secret=BANK_SECRET)})
    assert (bad.status, bad.body["error"]["code"]) == (400, "invalid_json")
    broken = {**body, "data": {**body["data"], "amount": 1.5}}
    r = await flow.bank_webhook(broken)
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_amount")
    assert await flow.db.fetchval("SELECT count(*) FROM bank_events WHERE provider_event_id = $1",
                                  event_id) == 0
    # the bank's secret being rotated out still works; unknown event types are informational
    info = {"id": uid("evt"), "type": "account.statement_ready", "data": {}}
    r = await flow.bank_webhook(info, secret="bank-secret-being-rotated-out")
    assert (r.status, r.body["status"]) == (200, "accepted")
