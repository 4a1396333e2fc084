"""Card numbers and CVVs sent by providers are never stored: after pushing PAN-laden payloads
through every adapter (and after the other provider tests, which run first), no text column of
any table holds a Luhn-valid card number. Logs are checked after every test (conftest)."""

from __future__ import annotations

import asyncpg

from tests.providers.support import (
    Providers,
    card_numbers,
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
from tests.support import Api, uid

PAN = "4111111111111111"
_TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")


async def test_card_data_in_provider_payloads_is_dropped(
        api: Api, providers: Providers, db: asyncpg.Pool) -> None:
    card = uid("pcard")
    await register_card(api, card, "GBP", 100_000)
    asa = lithic_asa(card, 100)
    asa["card"].update({"pan": PAN, "cvv": "123", "memo": f"card {PAN}"})
    asa["merchant"]["descriptor"] = f"SHOP {PAN}"
    assert (await providers.lithic("asa", dumps(asa))).body["result"] == "APPROVED"
    event = {"event_type": "card_transaction.updated", "token": token(), "card_token": card,
             "card": {"pan": PAN, "cvv": "123"}, "note": f"number {PAN}", "events": []}
    assert (await providers.lithic("events", dumps(event))).status == 200

    jit = marqeta_jit(card, "1.00")
    jit["card"] = {"last_four": "1111", "pan": PAN, "cvv_number": "123"}
    jit["card_acceptor"]["name"] = f"SHOP {PAN}"
    assert (await providers.marqeta("jit", exact_json(jit))).status == 200
    assert (await providers.marqeta("events", exact_json(fixture("marqeta_refund.json")))
            ).status == 200

    auth = stripe_authorization(card, 100)
    auth["card"].update({"number": PAN, "cvc": "123"})
    auth["merchant_data"]["name"] = f"SHOP {PAN}"
    r = await providers.stripe(dumps(stripe_event("issuing_authorization.request", auth)))
    assert r.body["approved"] is True
    assert (await providers.stripe(dumps(stripe_event("issuing_authorization.created", auth)))
            ).status == 200


async def test_no_table_holds_a_card_number(db: asyncpg.Pool) -> None:
    columns = await db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type = ANY($1::text[])"
        " ORDER BY table_name, column_name", list(_TEXT_TYPES))
    assert columns
    found: list[str] = []
    for col in columns:
        # digests are hex: their digit runs are not card data
        if col["column_name"].endswith("_hash"):
            continue
        rows = await db.fetch(
            f'SELECT "{col["column_name"]}"::text AS v FROM "{col["table_name"]}"'
            f' WHERE "{col["column_name"]}"::text ~ $1', r"[0-9]([ -]?[0-9]){12}")
        for row in rows:
            if card_numbers(row["v"]):
                found.append(f"{col['table_name']}.{col['column_name']}: {row['v'][:80]}")
    assert not found, f"card numbers stored in {sorted(set(found))}"
