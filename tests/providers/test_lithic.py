"""Lithic Auth Stream Access and event webhooks, in Lithic's own format and signature."""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from authz.errors import Unauthorized
from authz.providers.auth import sign_standard_webhook, verify_standard_webhook
from authz.settings import Secret
from tests.providers import keys
from tests.providers.support import (
    Providers,
    dumps,
    fixture,
    fixture_bytes,
    footprint,
    lithic_asa,
    metric,
    register_card,
    token,
)
from tests.support import Api, FakeClock, Server, uid

VECTOR = fixture("lithic_webhook_signature_testvector.json")
VECTOR_TS = int(VECTOR["headers"]["webhook-timestamp"])


def test_the_published_test_vector_verifies_exactly() -> None:
    headers, body = VECTOR["headers"], VECTOR["payload_raw"].encode()
    assert VECTOR["secret"] == keys.LITHIC_VECTOR_SECRET
    assert verify_standard_webhook(headers, body, [Secret(VECTOR["secret"])], VECTOR_TS, 300) \
        == headers["webhook-id"]
    # and we sign byte for byte as Lithic does
    assert sign_standard_webhook(VECTOR["secret"], headers["webhook-id"], VECTOR_TS, body) \
        == headers["webhook-signature"]


@pytest.mark.parametrize("shift", [-360, 360])
def test_the_test_vector_outside_five_minutes_is_stale(shift: int) -> None:
    with pytest.raises(Unauthorized) as err:
        verify_standard_webhook(VECTOR["headers"], VECTOR["payload_raw"].encode(),
                                [Secret(VECTOR["secret"])], VECTOR_TS + shift, 300)
    assert err.value.code == "stale_signature"


def test_the_test_vector_with_one_byte_changed_fails() -> None:
    body = VECTOR["payload_raw"].replace("Lorem", "lorem").encode()
    with pytest.raises(Unauthorized) as err:
        verify_standard_webhook(VECTOR["headers"], body, [Secret(VECTOR["secret"])], VECTOR_TS,
                                300)
    assert err.value.code == "bad_signature"


async def test_the_test_vector_is_accepted_by_the_events_endpoint(
        api: Api, clock: FakeClock, db: asyncpg.Pool) -> None:
    clock.set(VECTOR_TS + 30)
    headers = {**VECTOR["headers"], "Content-Type": "application/json"}
    r = await api.raw("POST", "/providers/lithic/events", VECTOR["payload_raw"].encode(), headers)
    assert r.status == 200, r.body
    assert r.body == {"id": VECTOR["headers"]["webhook-id"], "status": "accepted"}
    row = await db.fetchrow("SELECT type, canonical FROM inbox_events WHERE provider = 'lithic'"
                            " AND provider_event_id = $1", VECTOR["headers"]["webhook-id"])
    assert row is not None
    assert (row["type"], row["canonical"]) == ("lithic:unknown", None)


async def test_the_asa_fixture_is_approved_in_lithics_shape(
        api: Api, providers: Providers) -> None:
    request = fixture("lithic_asa_request.json")
    account = await register_card(api, request["card"]["token"], "USD", 10_000)
    r = await providers.lithic("asa", fixture_bytes("lithic_asa_request.json"))
    assert r.status == 200, r.body
    assert r.body == {"token": request["token"], "result": "APPROVED"}
    assert set(r.body) <= set(fixture("lithic_asa_response_approve.json"))
    assert await api.balances(account) == {"posted": 10_000, "held": 52, "available": 9_948}
    # the authorisation is found by its canonical id and by Lithic's token
    for key in (f"lithic:{request['token']}", request["token"]):
        got = await api.admin("GET", f"/v1/authorizations/{key}")
        assert (got.status, got.body["id"]) == (200, f"lithic:{request['token']}")


async def test_a_decline_carries_lithics_result(api: Api, providers: Providers) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 1_000)
    r = await providers.lithic("asa", dumps(lithic_asa(card, 5_000)))
    assert r.body["result"] == "INSUFFICIENT_FUNDS"
    assert set(r.body) == set(fixture("lithic_asa_response_decline.json"))
    assert (await api.balances(account))["held"] == 0


async def test_a_retry_after_5xx_gets_the_identical_answer(api: Api, providers: Providers
                                                           ) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 10_000)
    body = dumps(lithic_asa(card, 2_000))
    first = await providers.lithic("asa", body)
    again = await providers.lithic("asa", body)  # a new delivery: new webhook-id and signature
    assert first.body == again.body == {"token": orjson.loads(body)["token"], "result": "APPROVED"}
    assert (await api.balances(account))["held"] == 2_000


async def test_partial_approval_sends_approved_amount(api: Api, providers: Providers) -> None:
    card = uid("lcard")
    await register_card(api, card, "GBP", 1_500)
    r = await providers.lithic("asa", dumps(lithic_asa(card, 4_000, partial=True)))
    assert (r.body["result"], r.body["approved_amount"]) == ("APPROVED", 1_500)


async def test_an_incremental_on_the_same_token_raises_the_hold(api: Api, providers: Providers
                                                                ) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 10_000)
    asa_token = token()
    first = await providers.lithic("asa", dumps(lithic_asa(card, 3_000, asa_token=asa_token)))
    more = await providers.lithic("asa", dumps(lithic_asa(card, 1_000, asa_token=asa_token,
                                                          prior_events=1)))
    assert first.body["result"] == more.body["result"] == "APPROVED"
    assert (await api.balances(account))["held"] == 4_000
    got = await api.admin("GET", f"/v1/authorizations/lithic:{asa_token}")
    assert [h["kind"] for h in got.body["history"]] == ["initial", "incremental"]


async def test_a_frozen_card_is_paused(api: Api, providers: Providers) -> None:
    card = uid("lcard")
    await register_card(api, card, "GBP", 10_000)
    await api.admin("POST", f"/v1/cards/{card}/freeze", scope="customer")
    r = await providers.lithic("asa", dumps(lithic_asa(card, 100)))
    assert r.body["result"] == "CARD_PAUSED"


async def test_reasons_without_a_lithic_word_decline_with_our_label(
        api: Api, providers: Providers) -> None:
    card = uid("lcard")
    await register_card(api, card, "GBP", 10_000)
    r = await providers.lithic("asa", dumps(lithic_asa(card, 100, currency="EUR")))
    assert r.body["result"] == "DO_NOT_HONOR"  # declined by Lithic as a custom result


async def test_an_unknown_status_is_declined_recorded_and_counted(
        api: Api, providers: Providers, server: Server, db: asyncpg.Pool) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 10_000)
    body = lithic_asa(card, 100)
    body["status"] = "FUTURE_AUTHORIZATION_KIND"
    labels = {"provider": "lithic", "field": "asa.status"}
    before = metric(server, "holdfast_provider_unknown_values_total", labels)
    r = await providers.lithic("asa", dumps(body))
    assert (r.status, r.body["result"]) == (200, "DO_NOT_HONOR")
    assert metric(server, "holdfast_provider_unknown_values_total", labels) == before + 1
    assert (await api.balances(account))["held"] == 0
    stored = await db.fetchval("SELECT type FROM inbox_events WHERE provider = 'lithic'"
                               " AND provider_event_id = $1", f"asa:{body['token']}:0")
    assert stored == "lithic:asa.FUTURE_AUTHORIZATION_KIND"


async def test_a_credit_authorization_is_approved_without_a_hold(
        api: Api, providers: Providers) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 0)
    body = lithic_asa(card, 700)
    body["status"] = "CREDIT_AUTHORIZATION"
    r = await providers.lithic("asa", dumps(body))
    assert r.body == {"token": body["token"], "result": "APPROVED"}
    assert (await api.balances(account))["held"] == 0


async def test_a_zero_amount_verification_holds_nothing(api: Api, providers: Providers) -> None:
    card = uid("lcard")
    account = await register_card(api, card, "GBP", 1_000)
    r = await providers.lithic("asa", dumps(lithic_asa(card, 0)))
    assert r.body["result"] == "APPROVED"
    await api.admin("POST", f"/v1/cards/{card}/freeze", scope="customer")
    r = await providers.lithic("asa", dumps(lithic_asa(card, 0)))
    assert r.body["result"] == "CARD_PAUSED"
    assert (await api.balances(account))["held"] == 0


async def test_a_balance_inquiry_answers_the_balance(api: Api, providers: Providers) -> None:
    card = uid("lcard")
    await register_card(api, card, "GBP", 4_200)
    body = lithic_asa(card, 0)
    body["status"] = "BALANCE_INQUIRY"
    r = await providers.lithic("asa", dumps(body))
    assert r.body == {"token": body["token"], "result": "APPROVED",
                      "balance": {"amount": 4_200, "available": 4_200}}


async def test_a_clearing_event_is_stored_with_its_lifecycle_meaning(
        api: Api, providers: Providers, db: asyncpg.Pool) -> None:
    clearing = token()
    txn = {"token": token(), "card_token": uid("lcard"), "status": "SETTLED",
           "event_type": "card_transaction.updated", "cardholder_currency": "GBP",
           "events": [{"type": "AUTHORIZATION", "amount": 900, "token": token()},
                      {"type": "CLEARING", "amount": 850, "token": clearing,
                       "amounts": {"cardholder": {"amount": 850, "currency": "GBP"}}}],
           "card": {"token": "x", "pan": "4111111111111111", "cvv": "123"}}
    message = f"msg_{uid('m')}"
    r = await providers.lithic("events", dumps(txn), message_id=message)
    assert r.body == {"id": message, "status": "accepted"}
    again = await providers.lithic("events", dumps(txn), message_id=message)
    assert again.body == {"id": message, "status": "duplicate"}
    row = await db.fetchrow("SELECT type, payload::text AS payload, canonical FROM inbox_events"
                            " WHERE provider = 'lithic' AND provider_event_id = $1", message)
    assert row is not None and row["type"] == "authorization.clearing"
    assert orjson.loads(row["canonical"]) == {
        "id": clearing, "type": "authorization.clearing",
        "authorization_id": f"lithic:{txn['token']}", "card_id": txn["card_token"],
        "amount": 850, "currency": "GBP", "final": True}
    assert "4111" not in row["payload"] and "cvv" not in row["payload"]


async def _refused(api: Api, db: asyncpg.Pool, server: Server, path: str, body: bytes,
                   headers: dict[str, str], code: str) -> None:
    before = await footprint(db)
    labels = {"route": f"/providers/lithic/{path}", "code": code}
    failures = metric(server, "holdfast_webhook_auth_failures_total", labels)
    r = await api.raw("POST", f"/providers/lithic/{path}", body, headers)
    assert (r.status, r.body["error"]["code"]) == (401, code)
    assert await footprint(db) == before
    assert metric(server, "holdfast_webhook_auth_failures_total", labels) == failures + 1


@pytest.mark.parametrize("path", ["asa", "events"])
async def test_unsigned_wrong_and_stale_signatures_are_refused_before_parsing(
        api: Api, db: asyncpg.Pool, server: Server, clock: FakeClock, path: str) -> None:
    card = uid("lcard")
    await register_card(api, card, "GBP", 10_000)
    body = dumps(lithic_asa(card, 100))
    now = int(clock())
    good = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
            "webhook-signature": sign_standard_webhook(keys.LITHIC_SECRET, "msg_1", now, body)}
    await _refused(api, db, server, path, body, {}, "missing_signature")
    wrong = sign_standard_webhook("whsec_" + "QUJD" * 8, "msg_1", now, body)
    await _refused(api, db, server, path, body, {**good, "webhook-signature": wrong},
                   "bad_signature")
    await _refused(api, db, server, path, b"{not json", good, "bad_signature")
    stale_ts = now - 301
    stale = {"webhook-id": "msg_1", "webhook-timestamp": str(stale_ts),
             "webhook-signature": sign_standard_webhook(keys.LITHIC_SECRET, "msg_1", stale_ts,
                                                        body)}
    await _refused(api, db, server, path, body, stale, "stale_signature")
    # the signature covers the message id: replaying it under another id fails
    await _refused(api, db, server, path, body, {**good, "webhook-id": "msg_2"}, "bad_signature")


async def test_bad_input_is_a_400_with_a_stable_code_and_changes_nothing(
        api: Api, providers: Providers, db: asyncpg.Pool) -> None:
    card = uid("lcard")
    await register_card(api, card, "GBP", 10_000)
    cases: list[tuple[bytes, str]] = [
        (b"[1, 2]", "invalid_body"),
        (b"{", "invalid_json"),
        (dumps({**lithic_asa(card, 100), "token": None}), "missing_field"),
        (dumps({**lithic_asa(card, 100), "amounts": {"cardholder": {"amount": 1.5,
                                                                    "currency": "GBP"}}}),
         "invalid_amount"),
        (dumps({**lithic_asa(card, 100), "amounts": {"cardholder": {"amount": 100,
                                                                    "currency": "XXX"}}}),
         "unknown_currency"),
        (dumps(lithic_asa(card, 100, mcc="58x2")), "invalid_mcc"),
        (dumps({**lithic_asa(card, 100), "card": {"token": "4111111111111111 x"}}),
         "invalid_field"),
        # ids are stored as given: one that is a card number is refused
        (dumps({**lithic_asa(card, 100), "token": "4111111111111111"}), "invalid_field"),
        (dumps({**lithic_asa(card, 100), "card": {"token": "tok_4111111111111111"}}),
         "invalid_field"),
    ]
    before = await footprint(db)
    for body, code in cases:
        r = await providers.lithic("asa", body)
        assert (r.status, r.body["error"]["code"]) == (400, code), body
        assert "4111" not in r.body["error"]["message"]
    assert await footprint(db) == before


async def test_current_shape_incremental_rides_on_its_event_token(
        api: Api, providers: Providers) -> None:
    """Today's ASA carries an event_token per request and no events history: the first request
    on a token opens the authorisation, a later one on the same token raises its hold, and a
    retry of either (same event_token) gets the identical answer."""
    card = token()
    account = await register_card(api, card, "GBP", 10_000)
    asa_token = token()

    def current(amount: int, event_token: str) -> bytes:
        body = lithic_asa(card, amount, asa_token=asa_token)
        del body["events"]
        body["event_token"] = event_token
        return dumps(body)

    first, more = current(4_000, token()), current(1_500, token())
    r1 = await providers.lithic("asa", first)
    assert r1.body == {"token": asa_token, "result": "APPROVED"}
    r2 = await providers.lithic("asa", more)
    assert r2.body == {"token": asa_token, "result": "APPROVED"}
    assert (await providers.lithic("asa", first)).body == r1.body
    assert (await providers.lithic("asa", more)).body == r2.body
    assert await api.balances(account) == {"posted": 10_000, "held": 5_500, "available": 4_500}
    got = await api.admin("GET", f"/v1/authorizations/lithic:{asa_token}")
    assert [h["kind"] for h in got.body["history"]] == ["initial", "incremental"]
    assert got.body["held_amount"] == 5_500
