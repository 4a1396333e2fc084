"""Accounts for banking: virtual account numbers, inbound credits (by virtual account, by a messy
reference, to suspense), statements paged by cursor, closing. Over real HTTP, credits sent by the
sandbox bank as signed webhooks."""

from __future__ import annotations

from typing import Any

from clearing.payments.iban import is_valid_iban
from tests.payments.support import FEE, Flow, beneficiary
from tests.support import uid


async def test_virtual_account_is_allocated_once_with_a_valid_iban(flow: Flow) -> None:
    account = await flow.account(0)
    r = await flow.api.admin("POST", f"/v1/accounts/{account}/virtual-accounts")
    assert r.status == 201
    va = r.body
    assert va["sort_code"] == "990001" and len(va["account_number"]) == 8
    assert va["iban"] == f"GB{va['iban'][2:4]}HFST990001{va['account_number']}"
    assert is_valid_iban(va["iban"]) and va["status"] == "active"
    again = await flow.api.admin("POST", f"/v1/accounts/{account}/virtual-accounts")
    assert (again.status, again.body["id"]) == (200, va["id"])
    listed = await flow.api.admin("GET", f"/v1/accounts/{account}/virtual-accounts",
                                  scope="customer")
    assert [v["id"] for v in listed.body["virtual_accounts"]] == [va["id"]]
    await flow.account(1)  # a deposit: the settlement account exists
    settlement = await flow.api.admin("POST", "/v1/accounts/settlement-GBP/virtual-accounts")
    assert (settlement.status, settlement.body["error"]["code"]) == (409, "wrong_account_kind")


async def test_credit_to_a_virtual_account(flow: Flow) -> None:
    account = await flow.account(0)
    va = await flow.virtual_account(account)
    tx = await flow.credit(1_234, {"sort_code": va["sort_code"],
                                   "account_number": va["account_number"]}, "rent")
    await flow.settle()
    row = await flow.credited(tx)
    assert (row["account_id"], row["amount"], row["matched_by"]) == (
        account, 1_234, "virtual_account")
    # by IBAN too
    tx2 = await flow.credit(766, {"iban": va["iban"]}, None)
    await flow.settle()
    assert (await flow.credited(tx2))["account_id"] == account
    assert await flow.balances(account) == {"posted": 2_000, "held": 0, "available": 2_000}
    page = await flow.entries(account)
    assert [(e["kind"], e["amount"]) for e in page.body["entries"]] == [
        ("inbound_credit", 766), ("inbound_credit", 1_234)]


async def test_credit_by_a_messy_reference(flow: Flow) -> None:
    account = await flow.account(0)
    code = (await flow.virtual_account(account))["reference_code"]
    messy = f"Inv. 42 / {code[:2].lower()}-{code[2:5].lower()} {code[5:]}!"
    tx = await flow.credit(5_000, None, messy)
    await flow.settle()
    row = await flow.credited(tx)
    assert (row["account_id"], row["matched_by"]) == (account, "reference")
    assert (await flow.balances(account))["posted"] == 5_000


async def test_unmatched_credits_go_to_suspense_with_a_reason(flow: Flow) -> None:
    before = await flow.balances("suspense-GBP") if await flow.db.fetchval(
        "SELECT 1 FROM accounts WHERE id = 'suspense-GBP'") else {"posted": 0}
    tx = await flow.credit(300, None, "for my friend")
    await flow.settle()
    row = await flow.credited(tx)
    assert (row["account_id"], row["matched_by"], row["suspense_reason"]) == (
        "suspense-GBP", "suspense", "no_match")
    # an account closed after it got its number: its retired number no longer credits it
    closed = await flow.account(0)
    va = await flow.virtual_account(closed)
    r = await flow.api.admin("POST", f"/v1/accounts/{closed}/close")
    assert (r.status, r.body["status"]) == (200, "closed")
    tx2 = await flow.credit(400, {"sort_code": va["sort_code"],
                                  "account_number": va["account_number"]}, "hello")
    # two accounts' codes in one reference: nobody's
    a, b = await flow.account(0), await flow.account(0)
    codes = [(await flow.virtual_account(x))["reference_code"] for x in (a, b)]
    tx3 = await flow.credit(500, None, " and ".join(codes))
    # a euro credit to a sterling account's number
    va_a = await flow.api.admin("GET", f"/v1/accounts/{a}/virtual-accounts")
    number = va_a.body["virtual_accounts"][0]
    tx4 = await flow.credit(600, {"iban": number["iban"]}, None, currency="EUR")
    await flow.settle()
    reasons = [(await flow.credited(t))["suspense_reason"] for t in (tx2, tx3, tx4)]
    assert reasons == ["virtual_account_retired", "ambiguous_reference", "currency_mismatch"]
    assert (await flow.credited(tx4))["account_id"] == "suspense-EUR"
    assert (await flow.balances("suspense-GBP"))["posted"] == before["posted"] + 1_200
    assert (await flow.balances(closed))["posted"] == 0


async def test_a_credit_is_applied_once_whatever_the_redelivery(flow: Flow) -> None:
    """The same webhook twice, and the same bank transaction under a new event id."""
    account = await flow.account(0)
    va = await flow.virtual_account(account)
    body: dict[str, Any] = {"id": uid("evt"), "type": "credit.received", "data": {
        "id": uid("btx"), "amount": 250, "currency": "GBP", "reference": "x",
        "creditor": {"sort_code": va["sort_code"], "account_number": va["account_number"]},
        "value_date": "2030-01-02"}}
    for _ in range(2):
        r = await flow.bank_webhook(body)
        assert r.status == 200
    assert r.body["status"] == "duplicate"
    renamed = {**body, "id": uid("evt")}
    assert (await flow.bank_webhook(renamed)).body["status"] == "accepted"
    changed = {**body, "data": {**body["data"], "amount": 999}}
    r = await flow.bank_webhook(changed)
    assert (r.status, r.body["error"]["code"]) == (409, "idempotency_conflict")
    await flow.settle()
    assert (await flow.balances(account))["posted"] == 250


async def test_statement_pages_newest_first_by_cursor(flow: Flow) -> None:
    account = await flow.account(10_000)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    for amount in (100, 200, 300):
        await flow.pay(account, amount, to)
    await flow.settle()
    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(10):
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await flow.entries(account, **query)
        assert page.status == 200 and page.body["order"] == "newest_first"
        seen += [(e["kind"], e["amount"]) for e in page.body["entries"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and seen[-1] == ("deposit", 10_000)
    assert sum(a for _, a in seen) == 10_000 - 600 - 3 * FEE
    bad = await flow.entries(account, cursor="not-a-cursor")
    assert (bad.status, bad.body["error"]["code"]) == (400, "invalid_cursor")
    assert (await flow.entries(account, limit="0")).body["error"]["code"] == "invalid_limit"
    missing = await flow.entries(uid("nobody"))
    assert (missing.status, missing.body["error"]["code"]) == (404, "unknown_account")


async def test_closing_needs_an_empty_account_without_cards(flow: Flow) -> None:
    account = await flow.account(1_000)
    r = await flow.api.admin("POST", f"/v1/accounts/{account}/close")
    assert (r.status, r.body["error"]["code"]) == (409, "account_not_empty")
    empty = await flow.account(0)
    card = await flow.api.card(empty)
    r = await flow.api.admin("POST", f"/v1/accounts/{empty}/close")
    assert (r.status, r.body["error"]["code"]) == (409, "account_has_cards")
    assert (await flow.api.admin("POST", f"/v1/cards/{card}/terminate")).status == 200
    va = await flow.virtual_account(empty)
    r = await flow.api.admin("POST", f"/v1/accounts/{empty}/close")
    assert r.status == 200
    again = await flow.api.admin("POST", f"/v1/accounts/{empty}/close")
    assert (again.status, again.body["closed_at"]) == (200, r.body["closed_at"])
    listed = await flow.api.admin("GET", f"/v1/accounts/{empty}/virtual-accounts")
    assert [(v["id"], v["status"]) for v in listed.body["virtual_accounts"]] == [
        (va["id"], "retired")]
    refused = await flow.api.admin("POST", f"/v1/accounts/{empty}/virtual-accounts")
    assert (refused.status, refused.body["error"]["code"]) == (409, "account_closed")
    pay = await flow.pay(empty, 1, beneficiary("Jane Smith"))
    assert (pay.status, pay.body["error"]["code"]) == (409, "account_closed")
    customer = await flow.api.admin("POST", f"/v1/accounts/{account}/close", scope="customer")
    assert (customer.status, customer.body["error"]["code"]) == (403, "insufficient_scope")
