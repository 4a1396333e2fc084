"""Bad input gets a clear error (status + stable code) and changes nothing: no decision stored,
no hold, no velocity counter touched. Unsigned or wrongly signed requests are refused before the
body is parsed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from authz.settings import Settings
from authz.signatures import sign_native
from tests.support import Api, FakeClock, auth_body, uid


@dataclass
class Footprint:
    decisions: int
    authorizations: int
    holds: int
    events: int
    velocity: dict[bytes | str, bytes | str]


async def footprint(db: asyncpg.Pool, redis: aioredis.Redis, settings: Settings, card: str
                    ) -> Footprint:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM authorization_requests) AS d,"
        " (SELECT count(*) FROM authorizations) AS a, (SELECT count(*) FROM holds) AS h,"
        " (SELECT count(*) FROM inbox_events) AS e"
    )
    assert row is not None
    # the card's velocity counters as stored (packed bytes: read without decoding)
    raw = aioredis.Redis.from_url(settings.redis_url)
    try:
        velocity = await raw.hgetall(f"{settings.redis_prefix}{{card:{card}}}:v")
    finally:
        await raw.aclose()
    return Footprint(row["d"], row["a"], row["h"], row["e"], velocity)


@dataclass
class Scene:
    api: Api
    card: str
    account: str
    before: Footprint


@pytest.fixture
async def scene(api: Api, db: asyncpg.Pool, redis: aioredis.Redis, settings: Settings
                ) -> AsyncIterator[Scene]:
    account = await api.account("GBP", funds=10_000)
    card = await api.card(account, {"velocity": [{"window": "1h", "max_count": 100}]})
    # warm the card's velocity hash so "no counter touched" is observable
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    before = await footprint(db, redis, settings, card)
    yield Scene(api, card, account, before)
    after = await footprint(db, redis, settings, card)
    assert after == before, "a rejected request changed something"
    assert (await api.balances(account))["held"] == 100


def _body(card: str, **changes: Any) -> bytes:
    body = auth_body(card, 500)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return orjson.dumps(body)


_DROP = object()


async def test_unsigned_request_is_401(scene: Scene) -> None:
    r = await scene.api.authorize_raw(_body(scene.card), signature=None)
    assert (r.status, r.body["error"]["code"]) == (401, "missing_signature")


async def test_wrong_signature_is_401(scene: Scene) -> None:
    body = _body(scene.card)
    forged = sign_native("not-the-secret", int(scene.api.clock()), body)
    r = await scene.api.authorize_raw(body, signature=forged)
    assert (r.status, r.body["error"]["code"]) == (401, "bad_signature")


async def test_signature_over_another_body_is_401(scene: Scene) -> None:
    signed_for = _body(scene.card)
    r = await scene.api.authorize_raw(_body(scene.card),
                                      signature=scene.api.sign(signed_for))
    assert (r.status, r.body["error"]["code"]) == (401, "bad_signature")


async def test_malformed_signature_header_is_401(scene: Scene) -> None:
    r = await scene.api.authorize_raw(_body(scene.card), signature="v1=abc")
    assert (r.status, r.body["error"]["code"]) == (401, "bad_signature")


async def test_stale_timestamp_is_401(scene: Scene, clock: FakeClock) -> None:
    body = _body(scene.card)
    old = scene.api.sign(body, at=clock() - 301)
    r = await scene.api.authorize_raw(body, signature=old)
    assert (r.status, r.body["error"]["code"]) == (401, "stale_signature")


async def test_unparseable_body_with_bad_signature_is_401_not_400(scene: Scene) -> None:
    """Authentication comes before parsing: garbage with a bad signature is a 401."""
    r = await scene.api.authorize_raw(b"{not json", signature="t=1,v1=00")
    assert r.status == 401


async def test_rotated_secret_is_accepted(api: Api, clock: FakeClock) -> None:
    account = await api.account("GBP", funds=1_000)
    card = await api.card(account)
    body = _body(card)
    r = await api.authorize_raw(body, signature=sign_native("rotated-out-old-secret",
                                                            int(clock()), body))
    assert r.status == 200 and r.body["decision"] == "approve"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b"", "invalid_json"),
    ],
)
async def test_malformed_json(scene: Scene, raw: bytes, code: str) -> None:
    r = await scene.api.authorize_raw(raw)
    assert (r.status, r.body["error"]["code"]) == (400, code)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"amount": -100}, "invalid_amount"),
        ({"amount": 0}, "invalid_amount"),
        ({"amount": 12.5}, "invalid_amount"),
        ({"amount": "500"}, "invalid_amount"),
        ({"amount": True}, "invalid_amount"),
        ({"amount": 10**16}, "invalid_amount"),
        ({"amount": _DROP}, "missing_field"),
        ({"currency": "XYZ"}, "unknown_currency"),
        ({"currency": "gbp"}, "unknown_currency"),
        ({"currency": _DROP}, "missing_field"),
        ({"id": _DROP}, "missing_field"),
        ({"id": "has spaces"}, "invalid_field"),
        ({"id": "x" * 65}, "invalid_field"),
        ({"card_id": _DROP}, "missing_field"),
        ({"merchant": _DROP}, "missing_field"),
        ({"merchant": "shop"}, "invalid_field"),
        ({"merchant": {"id": "m", "mcc": "58120", "country": "GB"}}, "invalid_mcc"),
        ({"merchant": {"id": "m", "mcc": "ab12", "country": "GB"}}, "invalid_mcc"),
        ({"merchant": {"id": "m", "mcc": "5812", "country": "GBR"}}, "invalid_country"),
        ({"merchant": {"id": "m", "mcc": "5812", "country": "gb"}}, "invalid_country"),
        ({"channel": "telepathy"}, "invalid_channel"),
        ({"channel": _DROP}, "missing_field"),
        ({"partial_allowed": "yes"}, "invalid_field"),
    ],
)
async def test_invalid_fields(scene: Scene, changes: dict[str, Any], code: str) -> None:
    r = await scene.api.authorize_raw(_body(scene.card, **changes))
    assert r.status == 400, r.body
    assert r.body["error"]["code"] == code
    assert r.body["error"]["message"]


async def test_incremental_naming_itself_is_invalid(scene: Scene) -> None:
    body = auth_body(scene.card, 500)
    body["parent_id"] = body["id"]
    r = await scene.api.authorize_raw(orjson.dumps(body))
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_field")


async def test_oversized_body_is_413(scene: Scene, settings: Settings) -> None:
    body = auth_body(scene.card, 500)
    body["padding"] = "x" * (settings.max_body_bytes + 1)
    r = await scene.api.authorize_raw(orjson.dumps(body))
    assert (r.status, r.body["error"]["code"]) == (413, "body_too_large")


async def test_error_never_echoes_a_card_number(scene: Scene) -> None:
    r = await scene.api.authorize_raw(_body(scene.card, card_id="4111111111111111 "))
    assert r.status == 400
    assert "4111111111111111" not in orjson.dumps(r.body).decode()


async def test_unknown_route_is_a_json_404(api: Api) -> None:
    r = await api.raw("GET", "/v1/nothing-here")
    assert (r.status, r.body["error"]["code"]) == (404, "not_found")


async def test_wrong_method_is_a_json_405(api: Api) -> None:
    r = await api.raw("GET", "/v1/authorize")
    assert (r.status, r.body["error"]["code"]) == (405, "method_not_allowed")


async def test_unknown_fields_are_ignored_for_forward_compatibility(api: Api) -> None:
    account = await api.account("GBP", funds=1_000)
    card = await api.card(account)
    body = auth_body(card, 100)
    body["network_data"] = {"stan": "123456"}
    r = await api.authorize_raw(orjson.dumps(body))
    assert r.body["decision"] == "approve"


async def test_events_need_a_signature_too(api: Api, db: asyncpg.Pool) -> None:
    before = await db.fetchval("SELECT count(*) FROM inbox_events")
    body = orjson.dumps({"id": uid("evt"), "type": "refund", "card_id": "c", "amount": 1,
                         "currency": "GBP"})
    r = await api.raw("POST", "/v1/events", body, {"Holdfast-Signature": "t=1,v1=00"})
    assert r.status == 401
    assert await db.fetchval("SELECT count(*) FROM inbox_events") == before
