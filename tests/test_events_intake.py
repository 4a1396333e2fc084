"""``POST /v1/events``: verified, stored raw and immutable in the inbox exactly once, then
acknowledged (the consumers apply it later)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from tests.support import Api, uid


async def post_event(api: Api, event: dict[str, Any]) -> Any:
    raw = orjson.dumps(event)
    return await api.raw("POST", "/v1/events", raw, {"Holdfast-Signature": api.sign(raw)})


async def test_event_is_stored_once_and_acknowledged(api: Api, db: asyncpg.Pool) -> None:
    event = {"id": uid("evt"), "type": "authorization.clearing", "authorization_id": uid("a"),
             "amount": 1_500, "currency": "GBP", "final": True}
    r = await post_event(api, event)
    assert (r.status, r.body) == (202, {"id": event["id"], "status": "accepted"})
    r = await post_event(api, event)
    assert (r.status, r.body) == (202, {"id": event["id"], "status": "duplicate"})
    rows = await db.fetch("SELECT type, status, payload::text FROM inbox_events "
                          "WHERE provider = 'native' AND provider_event_id = $1", event["id"])
    assert len(rows) == 1
    assert (rows[0]["type"], rows[0]["status"]) == ("authorization.clearing", "pending")
    assert orjson.loads(rows[0]["payload"])["amount"] == 1_500


async def test_same_event_id_with_another_body_is_a_conflict(api: Api) -> None:
    event = {"id": uid("evt"), "type": "refund", "card_id": uid("c"), "amount": 100,
             "currency": "GBP"}
    assert (await post_event(api, event)).status == 202
    r = await post_event(api, {**event, "amount": 101})
    assert (r.status, r.body["error"]["code"]) == (409, "idempotency_conflict")


async def test_inbox_payload_is_immutable(api: Api, db: asyncpg.Pool) -> None:
    event = {"id": uid("evt"), "type": "refund", "card_id": uid("c"), "amount": 100,
             "currency": "GBP"}
    assert (await post_event(api, event)).status == 202
    with pytest.raises(asyncpg.PostgresError, match="immutable"):
        await db.execute("UPDATE inbox_events SET payload = '{}' WHERE provider_event_id = $1",
                         event["id"])
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("DELETE FROM inbox_events WHERE provider_event_id = $1", event["id"])


@pytest.mark.parametrize(("event", "code"), [
    ({"type": "refund", "card_id": "c", "amount": 1, "currency": "GBP"}, "missing_field"),
    ({"id": "e", "type": "teleport", "card_id": "c", "amount": 1, "currency": "GBP"},
     "invalid_event_type"),
    ({"id": "e", "type": "authorization.reversal", "card_id": "c", "amount": 1,
      "currency": "GBP"}, "missing_field"),
    ({"id": "e", "type": "refund", "amount": 1, "currency": "GBP"}, "missing_field"),
    ({"id": "e", "type": "refund", "card_id": "c", "amount": -1, "currency": "GBP"},
     "invalid_amount"),
    ({"id": "e", "type": "refund", "card_id": "c", "amount": 1, "currency": "EURO"},
     "unknown_currency"),
])
async def test_bad_events_are_refused_and_not_stored(api: Api, db: asyncpg.Pool,
                                                     event: dict[str, Any], code: str) -> None:
    before = await db.fetchval("SELECT count(*) FROM inbox_events")
    r = await post_event(api, event)
    assert (r.status, r.body["error"]["code"]) == (400, code)
    assert await db.fetchval("SELECT count(*) FROM inbox_events") == before
