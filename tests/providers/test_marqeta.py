"""Marqeta Gateway JIT Funding and transaction webhooks: Basic auth plus HMAC, decimal money."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from authz.errors import BadRequest, Unauthorized
from authz.providers.auth import sign_marqeta, verify_marqeta
from authz.providers.common import major_to_minor, minor_to_major
from authz.settings import Secret
from tests.providers import keys
from tests.providers.support import (
    Providers,
    exact_json,
    fixture,
    fixture_bytes,
    footprint,
    marqeta_jit,
    metric,
    register_card,
    token,
)
from tests.support import Api, Server, uid


def _response_keys() -> set[str]:
    """Fields a JIT response may carry: the published approval plus what Marqeta's own gateway
    log shows our gateway answering."""
    approve = fixture("marqeta_jit_funding_response_approve.json")["jit_funding"]
    logged = fixture("marqeta_transaction_webhook_authorization.json")["transactions"][0]
    answered = logged["gpa_order"]["funding"]["gateway_log"]["response"]["data"]["jit_funding"]
    return set(approve) | set(answered) | {"decline_reason"}


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    ("1.91", "PLN", 191), ("1500", "JPY", 1500), ("1.234", "BHD", 1234), ("12.340", "GBP", 1234),
    ("0.01", "GBP", 1), (1500, "JPY", 1500), ("999999999999.99", "USD", 99999999999999),
])
def test_decimal_major_units_convert_exactly(amount: str | int, currency: str, minor: int
                                             ) -> None:
    value = Decimal(amount) if isinstance(amount, str) else amount
    assert major_to_minor(value, currency, "amount") == minor
    assert major_to_minor(str(amount), currency, "amount") == minor
    assert Decimal(minor_to_major(minor, currency)) == Decimal(amount)


@pytest.mark.parametrize(("amount", "currency", "code"), [
    ("1.915", "GBP", "amount_precision"), ("1.5", "JPY", "amount_precision"),
    ("0.0005", "BHD", "amount_precision"), ("0", "GBP", "invalid_amount"),
    ("-1.00", "GBP", "invalid_amount"), ("1E+30", "GBP", "invalid_amount"),
    ("1E+999999", "GBP", "invalid_amount"), (True, "GBP", "invalid_amount"),
    ("1.2.3", "GBP", "invalid_amount"), (None, "GBP", "missing_field"),
])
def test_amounts_that_do_not_fit_are_refused(amount: object, currency: str, code: str) -> None:
    value = Decimal(amount) if isinstance(amount, str) and amount[-1].isdigit() and \
        amount.count(".") <= 1 else amount
    with pytest.raises(BadRequest) as err:
        major_to_minor(value, currency, "amount")
    assert err.value.code == code


def test_minor_to_major_keeps_every_digit() -> None:
    assert [minor_to_major(m, c) for m, c in [(5, "GBP"), (5, "BHD"), (5, "JPY"), (0, "GBP")]] \
        == ["0.05", "0.005", "5", "0.00"]


def test_basic_auth_is_compared_whole_and_hmac_is_optional() -> None:
    body = b'{"a": 1}'
    good = "Basic aG9sZGZhc3Q6c2VjcmV0"  # holdfast:secret
    verify_marqeta(good, None, body, [Secret("holdfast:secret")], [])
    for header, code in [(None, "missing_credentials"), ("Bearer x", "bad_credentials"),
                         ("Basic !!!", "bad_credentials"),
                         ("Basic aG9sZGZhc3Q6c2VjcmVY", "bad_credentials")]:
        with pytest.raises(Unauthorized) as err:
            verify_marqeta(header, None, body, [Secret("holdfast:secret")], [])
        assert err.value.code == code
    with pytest.raises(Unauthorized) as err:  # nothing configured: nothing accepted
        verify_marqeta(good, None, body, [], [])
    assert err.value.code == "bad_credentials"


async def test_the_jit_fixture_is_approved_echoing_jit_funding(
        api: Api, providers: Providers) -> None:
    request = fixture("marqeta_jit_funding_request.json")
    account = await register_card(api, request["card_token"], "PLN", 10_000)
    # the fixture's own bytes: 1.91 must arrive as exactly 191 grosze
    r = await providers.marqeta("jit", fixture_bytes("marqeta_jit_funding_request.json"))
    assert r.status == 200, r.body
    funding = request["gpa_order"]["jit_funding"]
    assert r.body["jit_funding"] == {
        "token": funding["token"], "method": "pgfs.authorization",
        "user_token": funding["user_token"], "acting_user_token": funding["acting_user_token"],
        "amount": "1.91", "memo": "approved"}
    assert set(r.body["jit_funding"]) <= _response_keys()
    assert await api.balances(account) == {"posted": 10_000, "held": 191, "available": 9_809}
    got = await api.admin("GET", f"/v1/authorizations/marqeta:{funding['token']}")
    assert (got.status, got.body["approved_amount"]) == (200, 191)


async def test_a_decline_is_402_with_a_decline_reason(api: Api, providers: Providers) -> None:
    card = uid("mcard")
    account = await register_card(api, card, "GBP", 1_000)
    r = await providers.marqeta("jit", exact_json(marqeta_jit(card, "10.01")))
    assert r.status == 402
    expected = fixture("marqeta_jit_funding_response_decline.json")
    assert set(r.body) == {k for k in expected if not k.startswith("_")}
    assert (r.body["jit_funding"]["decline_reason"], r.body["jit_funding"]["amount"]) == (
        "INSUFFICIENT_FUNDS", "10.01")
    assert set(r.body["jit_funding"]) <= _response_keys()
    assert (await api.balances(account))["held"] == 0


@pytest.mark.parametrize(("currency", "amount", "minor"), [
    ("JPY", "1500", 1_500), ("BHD", "1.234", 1_234), ("GBP", "12.34", 1_234)])
async def test_each_currency_is_held_in_its_own_minor_units(
        api: Api, providers: Providers, currency: str, amount: str, minor: int) -> None:
    card = uid("mcard")
    account = await register_card(api, card, currency, 100_000)
    r = await providers.marqeta("jit", exact_json(marqeta_jit(card, amount, currency)))
    assert (r.status, r.body["jit_funding"]["amount"]) == (200, amount)
    assert (await api.balances(account))["held"] == minor


@pytest.mark.parametrize(("currency", "amount", "code"), [
    ("GBP", "12.345", "amount_precision"), ("JPY", "1500.5", "amount_precision"),
    ("BHD", "0.0001", "amount_precision"), ("GBP", "1e30", "invalid_amount"),
    ("GBP", "-5.00", "invalid_amount"), ("GBP", "0.00", "invalid_amount")])
async def test_amounts_that_do_not_fit_are_400_and_change_nothing(
        api: Api, providers: Providers, db: asyncpg.Pool, currency: str, amount: str,
        code: str) -> None:
    card = uid("mcard")
    await register_card(api, card, currency, 100_000)
    before = await footprint(db)
    r = await providers.marqeta("jit", exact_json(marqeta_jit(card, amount, currency)))
    assert (r.status, r.body["error"]["code"]) == (400, code)
    assert await footprint(db) == before


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"amount": NaN}', "invalid_json"), (b'{"amount": Infinity}', "invalid_json"),
    (b"[]", "invalid_body"), (b'{"gpa_order": {}}', "missing_field"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "invalid_body"),
    (b'{"amount": 1' + b"0" * 5000 + b"}", "invalid_json"),
])
async def test_malformed_bodies_are_400(providers: Providers, raw: bytes, code: str) -> None:
    r = await providers.marqeta("jit", raw)
    assert (r.status, r.body["error"]["code"]) == (400, code)


async def test_partial_approval_funds_what_is_available(api: Api, providers: Providers) -> None:
    card = uid("mcard")
    await register_card(api, card, "GBP", 750)
    r = await providers.marqeta("jit", exact_json(marqeta_jit(card, "20.00", partial=True)))
    assert (r.status, r.body["jit_funding"]["amount"], r.body["jit_funding"]["memo"]) == (
        200, "7.50", "partial_approval")


async def test_the_incremental_fixture_raises_the_original_hold(
        api: Api, providers: Providers) -> None:
    incremental = fixture("marqeta_transaction_authorization_incremental.json")
    funding = incremental["gpa_order"]["jit_funding"]
    account = await register_card(api, incremental["card_token"], "PLN", 100_000)
    original = marqeta_jit(incremental["card_token"], "50.00", "PLN", mcc="4121",
                           jit_token=funding["original_jit_funding_token"])
    assert (await providers.marqeta("jit", exact_json(original))).status == 200
    r = await providers.marqeta(
        "jit", fixture_bytes("marqeta_transaction_authorization_incremental.json"))
    assert r.status == 200, r.body
    assert r.body["jit_funding"]["amount"] == "25.15"
    original_token = funding["original_jit_funding_token"]
    assert r.body["jit_funding"]["original_jit_funding_token"] == original_token
    assert (await api.balances(account))["held"] == 5_000 + 2_515
    got = await api.admin("GET", f"/v1/authorizations/marqeta:{original_token}")
    assert [h["kind"] for h in got.body["history"]] == ["initial", "incremental"]


@pytest.mark.parametrize("name", ["marqeta_authorization_advice.json",
                                  "marqeta_refund_authorization.json"])
async def test_informative_methods_are_acknowledged_without_a_hold(
        api: Api, providers: Providers, db: asyncpg.Pool, name: str) -> None:
    body = fixture(name)
    order = body.get("gpa_order") or body["gpa_order_unload"]
    before = await footprint(db)
    r = await providers.marqeta("jit", fixture_bytes(name))
    assert r.status == 200, r.body
    assert r.body["jit_funding"]["token"] == order["jit_funding"]["token"]
    after = await footprint(db)
    assert (after.requests, after.holds, after.events) == (
        before.requests, before.holds, before.events + 1)
    row = await db.fetchrow("SELECT type, canonical, payload::text AS payload FROM inbox_events"
                            " WHERE provider = 'marqeta' AND provider_event_id = $1",
                            f"jit:{order['jit_funding']['token']}")
    assert row is not None and row["canonical"] is None
    assert row["type"] == f"marqeta:jit.{order['jit_funding']['method']}"


async def test_an_unknown_method_is_declined_recorded_and_counted(
        api: Api, providers: Providers, server: Server) -> None:
    card = uid("mcard")
    account = await register_card(api, card, "GBP", 10_000)
    labels = {"provider": "marqeta", "field": "jit_funding.method"}
    before = metric(server, "holdfast_provider_unknown_values_total", labels)
    r = await providers.marqeta("jit", exact_json(
        marqeta_jit(card, "5.00", method="pgfs.authorization.something_new")))
    assert (r.status, r.body["jit_funding"]["decline_reason"]) == (
        402, "TRANSACTION_NOT_PERMITTED")
    assert metric(server, "holdfast_provider_unknown_values_total", labels) == before + 1
    assert (await api.balances(account))["held"] == 0


def _webhook(name: str) -> bytes:
    """A fixture as Marqeta delivers it: a ``transactions`` list, unless it already is one (or
    is a transaction with its raw ISO 8583 message)."""
    body = fixture(name)
    if isinstance(body, dict) and ("transactions" in body or "transaction" in body):
        return fixture_bytes(name)
    return exact_json({"transactions": [body]})


@pytest.mark.parametrize("name", [
    "marqeta_transaction_webhook_authorization.json",
    "marqeta_transaction_authorization_incremental.json", "marqeta_authorization_advice.json",
    "marqeta_refund.json", "marqeta_refund_authorization.json",
    "marqeta_chargeback_completed.json"])
async def test_transaction_webhooks_are_stored_and_acknowledged(
        providers: Providers, db: asyncpg.Pool, name: str) -> None:
    before = await footprint(db)
    r = await providers.marqeta("events", _webhook(name))
    assert (r.status, r.body["received"]) == (200, 1), r.body
    again = await providers.marqeta("events", _webhook(name))
    assert again.body == {"received": 1, "accepted": 0, "duplicate": 1}
    assert (await footprint(db)).events == before.events + 1


async def test_the_auth_reversal_clearing_sequence_is_stored_with_meaning(
        providers: Providers, db: asyncpg.Pool) -> None:
    for step in fixture("marqeta_sequence_auth_partial_reversal_clearing.json"):
        r = await providers.marqeta("events", exact_json(step))
        assert r.status == 200, r.body
    rows = await db.fetch(
        "SELECT provider_event_id, type, canonical, payload::text AS payload FROM inbox_events"
        " WHERE provider = 'marqeta' AND provider_event_id = ANY($1::text[]) ORDER BY id",
        ["transaction:11:PENDING", "transaction:13:PENDING", "transaction:15:COMPLETION"])
    assert [r["type"] for r in rows] == [
        "marqeta:authorization", "authorization.reversal", "authorization.clearing"]
    clearing = orjson.loads(rows[2]["canonical"])
    assert (clearing["amount"], clearing["currency"], clearing["card_id"]) == (
        15_000, "USD", "db389239-1ba4-4ffd-a1bd-5e0fd3ad46a9")
    for row in rows:  # the raw ISO 8583 message is kept without its card data
        raw = orjson.loads(row["payload"])
        assert "2" not in raw["raw_iso8583"] and "35" not in raw["raw_iso8583"]
        assert "1111118333398836" not in row["payload"]


async def test_the_advice_webhook_is_a_reversal_of_the_difference(
        providers: Providers, db: asyncpg.Pool) -> None:
    advice = fixture("marqeta_authorization_advice.json")
    await providers.marqeta("events", _webhook("marqeta_authorization_advice.json"))
    canonical = await db.fetchval(
        "SELECT canonical FROM inbox_events WHERE provider = 'marqeta'"
        " AND provider_event_id = $1", f"transaction:{advice['token']}:{advice['state']}")
    original = advice["gpa_order"]["jit_funding"]["original_jit_funding_token"]
    assert orjson.loads(canonical) == {
        "id": f"transaction:{advice['token']}",
        "type": "authorization.reversal", "authorization_id": f"marqeta:{original}",
        "card_id": advice["card_token"], "amount": 5, "currency": "PLN", "final": False}


async def test_unknown_categories_and_types_are_stored_not_refused(
        providers: Providers, server: Server, db: asyncpg.Pool) -> None:
    labels = {"provider": "marqeta", "field": "transaction.type"}
    before = metric(server, "holdfast_provider_unknown_values_total", labels)
    txn: dict[str, Any] = {"token": token(), "type": "authorization.hologram", "state": "PENDING",
                           "amount": Decimal("1.00"), "currency_code": "GBP"}
    body = {"transactions": [txn], "hologramtransitions": [{"token": token()}],
            "pings": [{"token": "marqeta", "payload": "healthcheck"}]}
    r = await providers.marqeta("events", exact_json(body))
    assert (r.status, r.body["received"]) == (200, 2)
    assert metric(server, "holdfast_provider_unknown_values_total", labels) == before + 1


async def _refused(api: Api, db: asyncpg.Pool, server: Server, path: str, body: bytes,
                   headers: dict[str, str], code: str) -> None:
    before = await footprint(db)
    labels = {"route": f"/providers/marqeta/{path}", "code": code}
    failures = metric(server, "holdfast_webhook_auth_failures_total", labels)
    r = await api.raw("POST", f"/providers/marqeta/{path}", body, headers)
    assert (r.status, r.body["error"]["code"]) == (401, code)
    assert await footprint(db) == before
    assert metric(server, "holdfast_webhook_auth_failures_total", labels) == failures + 1


@pytest.mark.parametrize("path", ["jit", "events"])
async def test_missing_or_wrong_credentials_and_signatures_are_refused(
        api: Api, providers: Providers, db: asyncpg.Pool, server: Server, path: str) -> None:
    card = uid("mcard")
    await register_card(api, card, "GBP", 10_000)
    jit = marqeta_jit(card, "1.00")
    body = exact_json(jit if path == "jit" else {"transactions": [jit]})

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    signature = sign_marqeta(keys.MARQETA_HMAC, body)
    good = {"Authorization": basic(keys.MARQETA_USER, keys.MARQETA_PASSWORD),
            "X-Marqeta-Signature": signature}
    await _refused(api, db, server, path, body, {"X-Marqeta-Signature": signature},
                   "missing_credentials")
    await _refused(api, db, server, path, body,
                   {**good, "Authorization": basic(keys.MARQETA_USER, "wrong")},
                   "bad_credentials")
    await _refused(api, db, server, path, body,
                   {"Authorization": good["Authorization"]}, "missing_signature")
    await _refused(api, db, server, path, body,
                   {**good, "X-Marqeta-Signature": sign_marqeta("other", body)}, "bad_signature")
    await _refused(api, db, server, path, b"{broken", good, "bad_signature")
    # SHA-1 signatures and the rotated credentials are accepted
    r = await providers.marqeta(path, body, algorithm="sha1", user="old-jit",
                                password="rotated-password-00")
    assert r.status == 200, r.body
