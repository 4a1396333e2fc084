"""Stripe Issuing webhooks: the synchronous authorisation request and every other event type."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from authz.providers.auth import sign_stripe
from authz.providers.stripe import DEFAULT_API_VERSION
from tests.providers import keys
from tests.providers.support import (
    Providers,
    dumps,
    fixture,
    footprint,
    metric,
    register_card,
    stripe_authorization,
    stripe_event,
)
from tests.support import Api, FakeClock, Server, uid


async def test_the_request_fixture_is_answered_synchronously(
        api: Api, providers: Providers) -> None:
    auth = fixture("stripe_authorization_request.json")
    account = await register_card(api, auth["card"]["id"], "USD", 10_000)
    r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", auth)))
    assert r.status == 200, r.body
    # not amount-controllable: no amount in the answer
    assert r.body == {"approved": True,
                      "metadata": {"holdfast_reason": "approved", "holdfast_code": "00"}}
    assert r.headers["Stripe-Version"] == DEFAULT_API_VERSION
    assert r.headers["Content-Type"].startswith("application/json")
    assert await api.balances(account) == {"posted": 10_000, "held": 700, "available": 9_300}
    # the incremental arrives on the same iauth, the first request now in its history
    more = {**auth, "request_history": [{"amount": 700, "approved": True, "reason":
                                         "webhook_approved", "currency": "usd"}],
            "pending_request": {**auth["pending_request"], "amount": 300}}
    r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", more,
                                                  )))
    assert r.body["approved"] is True
    assert (await api.balances(account))["held"] == 1_000
    got = await api.admin("GET", f"/v1/authorizations/stripe:{auth['id']}")
    assert [h["kind"] for h in got.body["history"]] == ["initial", "incremental"]
    assert (await api.admin("GET", f"/v1/authorizations/{auth['id']}")).body["id"] == \
        f"stripe:{auth['id']}"


async def test_the_version_header_follows_the_event(api: Api, providers: Providers) -> None:
    card = uid("ic")
    await register_card(api, card, "GBP", 10_000)
    event = stripe_event("issuing_authorization.request", stripe_authorization(card, 100))
    event["api_version"] = "2024-06-20"
    r = await providers.stripe(dumps(event))
    assert r.headers["Stripe-Version"] == "2024-06-20"


async def test_amount_is_sent_only_when_controllable(api: Api, providers: Providers) -> None:
    card = uid("ic")
    await register_card(api, card, "GBP", 600)
    partial = stripe_authorization(card, 1_000, controllable=True)
    r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", partial)))
    assert (r.body["approved"], r.body["amount"]) == (True, 600)
    fixed = stripe_authorization(card, 1_000)
    r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", fixed)))
    assert r.body == {"approved": False, "metadata": {
        "holdfast_reason": "insufficient_funds", "holdfast_code": "51"}}


async def test_a_zero_amount_verification_holds_nothing(api: Api, providers: Providers) -> None:
    card = uid("ic")
    account = await register_card(api, card, "GBP", 1_000)
    event = stripe_event("issuing_authorization.request", stripe_authorization(card, 0))
    r = await providers.stripe(dumps(event))
    assert (r.body, r.headers["Stripe-Version"]) == ({"approved": True}, DEFAULT_API_VERSION)
    unknown = stripe_event("issuing_authorization.request", stripe_authorization(uid("ic"), 0))
    assert (await providers.stripe(dumps(unknown))).body == {"approved": False}
    assert (await api.balances(account))["held"] == 0


async def test_a_duplicate_request_is_answered_identically(api: Api, providers: Providers
                                                           ) -> None:
    card = uid("ic")
    account = await register_card(api, card, "GBP", 10_000)
    body = dumps(stripe_event("issuing_authorization.request", stripe_authorization(card, 400)))
    first, again = await providers.stripe(body), await providers.stripe(body)
    assert first.body == again.body
    assert (await api.balances(account))["held"] == 400


@pytest.mark.parametrize(("event_type", "name", "stored_type"), [
    ("issuing_transaction.created", "stripe_transaction_capture.json", "authorization.clearing"),
    ("issuing_dispute.created", "stripe_dispute.json", "stripe:issuing_dispute.created"),
    ("issuing_card.updated", "stripe_card_spending_controls.json", "stripe:issuing_card.updated"),
    ("issuing_authorization.created", "stripe_authorization_request.json",
     "stripe:issuing_authorization.created"),
])
async def test_other_events_are_stored_and_acknowledged(
        providers: Providers, db: asyncpg.Pool, event_type: str, name: str, stored_type: str
) -> None:
    event = stripe_event(event_type, fixture(name))
    r = await providers.stripe(dumps(event))
    assert r.body == {"id": event["id"], "status": "accepted"}
    row = await db.fetchrow("SELECT type, canonical FROM inbox_events WHERE provider = 'stripe'"
                            " AND provider_event_id = $1", event["id"])
    assert row is not None and row["type"] == stored_type
    if stored_type == "authorization.clearing":  # a capture: Stripe's negative amount
        assert orjson.loads(row["canonical"]) == {
            "id": event["id"], "type": "authorization.clearing",
            "authorization_id": "stripe:iauth_1Pgc78B7WZ01zgkW9IPKCfII",
            "card_id": "ic_1Pgag5B7WZ01zgkWephORn8N", "amount": 100, "currency": "USD",
            "final": False}


async def test_a_redelivery_is_a_duplicate_even_with_other_pending_webhooks(
        providers: Providers) -> None:
    event = stripe_event("issuing_dispute.updated", fixture("stripe_dispute.json"))
    assert (await providers.stripe(dumps({**event, "pending_webhooks": 2}))).body["status"] == \
        "accepted"
    again = await providers.stripe(dumps({**event, "pending_webhooks": 1}))
    assert again.body == {"id": event["id"], "status": "duplicate"}


async def test_the_generic_envelope_fixture_is_acknowledged_and_counted(
        providers: Providers, server: Server, db: asyncpg.Pool) -> None:
    event = fixture("stripe_event_envelope.json")  # plan.created: not an Issuing event
    labels = {"provider": "stripe", "field": "event.type"}
    before = metric(server, "holdfast_provider_unknown_values_total", labels)
    r = await providers.stripe(dumps(event))
    assert r.status == 200 and r.body["id"] == event["id"]
    assert metric(server, "holdfast_provider_unknown_values_total", labels) == before + 1
    assert await db.fetchval("SELECT type FROM inbox_events WHERE provider = 'stripe'"
                             " AND provider_event_id = $1", event["id"]) == "stripe:plan.created"


@pytest.mark.parametrize(("status", "previous", "now", "expected"), [
    ("pending", 1_000, 400, ("authorization.reversal", 600)),
    ("reversed", 1_000, 0, ("authorization.reversal", 1_000)),
    ("expired", None, 1_000, ("authorization.expiry", 0)),
    ("closed", 1_000, 0, None),
])
async def test_authorization_updates_carry_their_lifecycle_meaning(
        providers: Providers, db: asyncpg.Pool, status: str, previous: int | None, now: int,
        expected: tuple[str, int] | None) -> None:
    auth = {**stripe_authorization(uid("ic"), 1_000), "status": status, "amount": now,
            "pending_request": None}
    extra: dict[str, Any] = {} if previous is None else {
        "previous_attributes": {"amount": previous}}
    event = stripe_event("issuing_authorization.updated", auth, **extra)
    assert (await providers.stripe(dumps(event))).status == 200
    raw = await db.fetchval("SELECT canonical FROM inbox_events WHERE provider = 'stripe'"
                            " AND provider_event_id = $1", event["id"])
    got = None if raw is None else orjson.loads(raw)
    assert (None if got is None else (got["type"], got["amount"])) == expected


async def test_a_network_stand_in_is_an_advice(providers: Providers, db: asyncpg.Pool) -> None:
    auth = stripe_authorization(uid("ic"), 900)
    auth["request_history"] = [{"amount": 900, "approved": True, "reason": "network_fallback",
                                "currency": "gbp"}]
    event = stripe_event("issuing_authorization.created", auth)
    await providers.stripe(dumps(event))
    raw = await db.fetchval("SELECT canonical FROM inbox_events WHERE provider = 'stripe'"
                            " AND provider_event_id = $1", event["id"])
    assert orjson.loads(raw)["type"] == "authorization.advice"


async def _refused(api: Api, db: asyncpg.Pool, server: Server, body: bytes,
                   headers: dict[str, str], code: str) -> None:
    before = await footprint(db)
    labels = {"route": "/providers/stripe/webhooks", "code": code}
    failures = metric(server, "holdfast_webhook_auth_failures_total", labels)
    r = await api.raw("POST", "/providers/stripe/webhooks", body, headers)
    assert (r.status, r.body["error"]["code"]) == (401, code)
    assert await footprint(db) == before
    assert metric(server, "holdfast_webhook_auth_failures_total", labels) == failures + 1


async def test_unsigned_wrong_and_stale_signatures_are_refused(
        api: Api, providers: Providers, db: asyncpg.Pool, server: Server, clock: FakeClock
) -> None:
    card = uid("ic")
    await register_card(api, card, "GBP", 10_000)
    body = dumps(stripe_event("issuing_authorization.request", stripe_authorization(card, 100)))
    now = int(clock())
    await _refused(api, db, server, body, {}, "missing_signature")
    await _refused(api, db, server, body, {"Stripe-Signature": sign_stripe("whsec_x", now, body)},
                   "bad_signature")
    await _refused(api, db, server, body, {"Stripe-Signature": f"t={now}"}, "bad_signature")
    await _refused(api, db, server, b"{nope",
                   {"Stripe-Signature": sign_stripe(keys.STRIPE_SECRET, now, body)},
                   "bad_signature")
    await _refused(api, db, server, body,
                   {"Stripe-Signature": sign_stripe(keys.STRIPE_SECRET, now - 301, body)},
                   "stale_signature")
    # several v1 values, one from a rotated secret: accepted
    mixed = sign_stripe("whsec_unknown", now, body) + "," + \
        sign_stripe(keys.STRIPE_OLD_SECRET, now, body).split(",")[1]
    r = await api.raw("POST", "/providers/stripe/webhooks", body, {"Stripe-Signature": mixed})
    assert r.status == 200, r.body


async def test_bad_input_is_400_and_changes_nothing(
        api: Api, providers: Providers, db: asyncpg.Pool) -> None:
    card = uid("ic")
    await register_card(api, card, "GBP", 10_000)
    good = stripe_authorization(card, 100)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "pending_request": None}, "missing_field"),
        ({**good, "pending_request": {**good["pending_request"], "amount": 1.5}},
         "invalid_amount"),
        ({**good, "pending_request": {**good["pending_request"], "currency": "zzz"}},
         "unknown_currency"),
        ({**good, "card": {"id": "4111 1111 1111 1111"}}, "invalid_field"),
        ({**good, "id": "iauth_4111111111111111"}, "invalid_field"),
        ({**good, "merchant_data": {**good["merchant_data"], "category_code": None}},
         "missing_field"),
    ]
    before = await footprint(db)
    for auth, code in cases:
        r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", auth)))
        assert (r.status, r.body["error"]["code"]) == (400, code), auth
        assert "4111" not in r.body["error"]["message"]
    assert await footprint(db) == before
