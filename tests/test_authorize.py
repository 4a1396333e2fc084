"""Authorisation scenarios in card language, through the native API, against real Redis and
PostgreSQL. Each test ends with ``verify`` (conftest)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import orjson
import pytest

from authz.app import AUTHORIZER, CACHE, REDIS
from tests.support import Api, FakeClock, Server, auth_body, stored_buckets, uid


async def test_approve_places_a_hold(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    r = await api.authorize(card, 2_500)
    assert r.status == 200
    assert r.body["decision"] == "approve"
    assert r.body["approved_amount"] == 2_500
    assert (r.body["reason"], r.body["code"], r.body["stand_in"]) == ("approved", "00", False)
    assert await api.balances(acct) == {"posted": 10_000, "held": 2_500, "available": 7_500}


async def test_insufficient_funds_declines_and_holds_nothing(api: Api) -> None:
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    r = await api.authorize(card, 1_001)
    assert (r.body["decision"], r.body["reason"], r.body["code"]) == (
        "decline", "insufficient_funds", "51")
    assert r.body["approved_amount"] == 0
    assert await api.balances(acct) == {"posted": 1_000, "held": 0, "available": 1_000}


async def test_partial_approval_takes_what_is_available(api: Api) -> None:
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    r = await api.authorize(card, 1_500, partial_allowed=True)
    assert (r.body["decision"], r.body["reason"], r.body["code"]) == (
        "approve", "partial_approval", "10")
    assert r.body["approved_amount"] == 1_000
    assert (await api.balances(acct))["available"] == 0
    # nothing left: even a partial-allowed request is declined now
    r = await api.authorize(card, 10, partial_allowed=True)
    assert r.body["reason"] == "insufficient_funds"


async def test_overdraft_counts_towards_available(api: Api) -> None:
    acct = await api.account("GBP", funds=0, overdraft=500)
    card = await api.card(acct)
    assert (await api.authorize(card, 400)).body["decision"] == "approve"
    assert (await api.authorize(card, 101)).body["reason"] == "insufficient_funds"
    assert await api.balances(acct) == {"posted": 0, "held": 400, "available": 100}


async def test_unknown_card_is_invalid(api: Api) -> None:
    r = await api.authorize(uid("nocard"), 100)
    assert (r.body["decision"], r.body["reason"], r.body["code"]) == (
        "decline", "invalid_card", "14")


async def test_freeze_takes_effect_on_the_next_authorisation(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    r = await api.admin("POST", f"/v1/cards/{card}/freeze", scope="customer")
    assert r.status == 200 and r.body["state"] == "frozen"
    r = await api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("card_restricted", "62")
    r = await api.admin("POST", f"/v1/cards/{card}/unfreeze", scope="customer")
    assert r.body["state"] == "active"
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    assert (await api.balances(acct))["held"] == 200


async def test_freeze_holds_even_when_the_cache_is_stale(api: Api, db: asyncpg.Pool
                                                         ) -> None:
    """PostgreSQL re-checks card state, so a cache that missed the write cannot approve."""
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"  # cache is warm
    await db.execute("UPDATE cards SET state = 'frozen' WHERE id = $1", card)  # behind its back
    r = await api.authorize(card, 100)
    assert r.body["reason"] == "card_restricted"


async def test_terminated_card_is_invalid(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    assert (await api.admin("POST", f"/v1/cards/{card}/terminate", scope="support")).status == 200
    r = await api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("invalid_card", "14")


async def test_expired_card(api: Api, clock: FakeClock) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, expires="2026-11")
    clock.set(dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC).timestamp())
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    clock.set(dt.datetime(2026, 12, 1, 0, 1, tzinfo=dt.UTC).timestamp())
    r = await api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("card_expired", "54")


@pytest.mark.parametrize(
    ("policy", "extra"),
    [
        ({"mcc_block": ["7995"]}, {"merchant": {"mcc": "7995"}}),
        ({"mcc_allow": ["5411"]}, {"merchant": {"mcc": "5812"}}),
        ({"country_block": ["GB"]}, {}),
        ({"country_allow": ["US", "CA"]}, {}),
        ({"channels_block": ["ecommerce"]}, {"channel": "ecommerce"}),
        ({"merchant_lock": ["m-only"]}, {}),
        ({"currencies": ["EUR"]}, {}),
    ],
    ids=["mcc_block", "mcc_allow", "country_block", "country_allow", "channel", "merchant_lock",
         "currencies"],
)
async def test_static_rules_decline_not_permitted(api: Api, policy: dict[str, Any],
                                                  extra: dict[str, Any]) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, policy)
    r = await api.authorize(card, 100, **extra)
    assert (r.body["decision"], r.body["reason"], r.body["code"]) == (
        "decline", "not_permitted", "57")
    assert (await api.balances(acct))["held"] == 0


async def test_rules_that_do_not_match_approve(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, {"mcc_block": ["7995"], "country_allow": ["GB"],
                                 "merchant_lock": ["m-100"], "currencies": ["GBP"]})
    assert (await api.authorize(card, 100)).body["decision"] == "approve"


async def test_currency_other_than_the_accounts_is_not_honoured(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    r = await api.authorize(card, 100, currency="USD")
    assert (r.body["reason"], r.body["code"]) == ("do_not_honor", "05")


async def test_per_transaction_limit(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, {"max_amount": 500})
    assert (await api.authorize(card, 500)).body["decision"] == "approve"
    r = await api.authorize(card, 501)
    assert (r.body["reason"], r.body["code"]) == ("amount_limit_exceeded", "61")


async def test_precedence_frozen_beats_blocked_mcc_and_funds(api: Api) -> None:
    acct = await api.account("GBP", funds=0)
    card = await api.card(acct, {"mcc_block": ["5812"]}, state="frozen")
    r = await api.authorize(card, 100)
    assert r.body["reason"] == "card_restricted"


async def test_velocity_count_limit_and_roll_over(api: Api, clock: FakeClock) -> None:
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct, {"velocity": [{"window": "1h", "max_count": 2}]})
    clock.set(1_800_000_000)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    clock.advance(600)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    clock.advance(600)
    r = await api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("count_limit_exceeded", "65")
    # 61 minutes after the first, its minute bucket has left the sliding hour
    clock.set(1_800_000_000 + 3_720)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    r = await api.authorize(card, 100)
    assert r.body["reason"] == "count_limit_exceeded"


async def test_two_sliding_windows_over_the_same_minutes(api: Api, clock: FakeClock) -> None:
    """At most 2 in a half hour and 3 in an hour, both kept in minute buckets: each window counts
    only its own minutes."""
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct, {"velocity": [{"window": "30m", "max_count": 2},
                                              {"window": "1h", "max_count": 3}]})
    t0 = 1_800_000_000  # a whole minute
    clock.set(t0)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    clock.set(t0 + 10 * 60)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    clock.set(t0 + 20 * 60)
    assert (await api.authorize(card, 100)).body["reason"] == "count_limit_exceeded"  # 30m
    # at minute 41 the half hour starts at minute 11 and holds nothing; the hour holds two
    clock.set(t0 + 41 * 60)
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    # at minute 45 the half hour holds one, the hour three: the hour refuses a fourth
    clock.set(t0 + 45 * 60)
    r = await api.authorize(card, 100)
    assert (r.body["reason"], r.body["code"]) == ("count_limit_exceeded", "65")


async def test_velocity_daily_amount_is_a_calendar_day(api: Api, clock: FakeClock) -> None:
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct, {"velocity": [{"window": "1d", "max_amount": 1_000}]})
    clock.set(dt.datetime(2027, 3, 1, 22, 0, tzinfo=dt.UTC).timestamp())
    assert (await api.authorize(card, 600)).body["decision"] == "approve"
    r = await api.authorize(card, 500)
    assert (r.body["reason"], r.body["code"]) == ("amount_limit_exceeded", "61")
    assert (await api.authorize(card, 400)).body["decision"] == "approve"
    clock.set(dt.datetime(2027, 3, 2, 0, 5, tzinfo=dt.UTC).timestamp())
    assert (await api.authorize(card, 1_000)).body["decision"] == "approve"


async def test_velocity_day_follows_the_cards_utc_offset(api: Api, clock: FakeClock) -> None:
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct, {"utc_offset_minutes": -300,
                                 "velocity": [{"window": "1d", "max_amount": 1_000}]})
    # 02:00 UTC on the 2nd is still 21:00 on the 1st in UTC-5
    clock.set(dt.datetime(2027, 3, 1, 22, 0, tzinfo=dt.UTC).timestamp())
    assert (await api.authorize(card, 800)).body["decision"] == "approve"
    clock.set(dt.datetime(2027, 3, 2, 2, 0, tzinfo=dt.UTC).timestamp())
    assert (await api.authorize(card, 800)).body["reason"] == "amount_limit_exceeded"
    clock.set(dt.datetime(2027, 3, 2, 5, 30, tzinfo=dt.UTC).timestamp())
    assert (await api.authorize(card, 800)).body["decision"] == "approve"


async def test_funds_decline_gives_velocity_back(api: Api, server: Server) -> None:
    acct = await api.account("GBP", funds=50)
    card = await api.card(acct, {"velocity": [{"window": "1d", "max_count": 1,
                                               "max_amount": 1_000}]})
    assert (await api.authorize(card, 100)).body["reason"] == "insufficient_funds"
    await server.app[AUTHORIZER].drain()  # the give-back runs off the response path
    await api.admin("POST", f"/v1/accounts/{acct}/deposits", {"amount": 5_000},
                    headers={"Idempotency-Key": uid("k")})
    r = await api.authorize(card, 1_000)
    assert r.body["decision"] == "approve", r.body


async def test_partial_approval_gives_back_the_unapproved_amount(api: Api, server: Server
                                                                 ) -> None:
    acct = await api.account("GBP", funds=300)
    card = await api.card(acct, {"velocity": [{"window": "1d", "max_amount": 1_000}]})
    r = await api.authorize(card, 1_000, partial_allowed=True)
    assert r.body["approved_amount"] == 300
    await server.app[AUTHORIZER].drain()
    await api.admin("POST", f"/v1/accounts/{acct}/deposits", {"amount": 5_000},
                    headers={"Idempotency-Key": uid("k")})
    # 300 counted, 700 left in the day
    assert (await api.authorize(card, 700)).body["decision"] == "approve"
    assert (await api.authorize(card, 1)).body["reason"] == "amount_limit_exceeded"


async def test_velocity_buckets_hold_what_was_counted(api: Api, server: Server,
                                                      clock: FakeClock) -> None:
    """The stored counters themselves: one count per initial authorisation (none for an
    incremental), the approved amounts, the unapproved part of a partial approval given back."""
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, {"velocity": [{"window": "1h", "max_count": 10},
                                              {"window": "1d", "max_amount": 100_000}]})
    now = 1_800_000_000
    clock.set(now)
    first = await api.authorize(card, 1_000, merchant={"mcc": "7011"})
    assert first.body["decision"] == "approve"
    assert (await api.authorize(card, 250, parent_id=first.body["id"],
                                merchant={"mcc": "7011"})).body["decision"] == "approve"
    assert (await api.authorize(card, 20_000, partial_allowed=True)).body[
        "approved_amount"] == 8_750
    await server.app[AUTHORIZER].drain()  # the give-back of the unapproved 11,250
    # a sliding hour counts minute buckets; a calendar day, day buckets (one packed field each)
    minute, day = now // 60, now // 86400
    assert await stored_buckets(server, card) == {"m": [(minute, 2, 10_000)],
                                                  "d": [(day, 2, 10_000)]}
    # each decision records what the windows held before it: [label, amount, count]
    history = (await api.admin("GET", f"/v1/authorizations/{first.body['id']}")).body["history"]
    assert [h["counters"] for h in history] == [[["1h", 0, 0], ["1d", 0, 0]],
                                                [["1h", 1_000, 1], ["1d", 1_000, 1]]]


async def test_a_cache_entry_in_an_earlier_format_is_replaced(api: Api, server: Server) -> None:
    """A card cached by an earlier version (a hash of one field per rule, under ``:p``) is not
    read: the first authorisation reads the card through, caches it as JSON and deletes the old
    hash, so an upgrade leaves nothing behind."""
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, {"max_amount": 500})
    cache, redis = server.app[CACHE], server.app[REDIS]
    await redis.delete(cache.policy_key(card))
    old = cache.old_policy_key(card)
    await redis.hset(old, mapping={"v": "99", "s": "active", "cur": "GBP", "pv": "1"})
    r = await api.authorize(card, 600)
    assert r.body["reason"] == "amount_limit_exceeded"  # the card's own rule, read through
    cached = await redis.get(cache.policy_key(card))
    assert cached is not None and orjson.loads(cached)["max"] == 500
    assert await redis.exists(old) == 0


async def test_a_card_gone_again_after_loading_is_decided_as_a_stand_in(
        api: Api, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-through writes the card, and it is gone before the check that follows (evicted,
    flushed, a failover: here deleted on the real Redis right after the write). The request has
    no rule verdict, so it is decided as a stand-in (flagged, under the stand-in cap, counted
    into velocity later) -- before, it was approved as if it had passed its rules."""
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, {"max_amount": 500})
    cache, redis = server.app[CACHE], server.app[REDIS]
    put = cache.put

    async def put_then_lose(snapshot: Any) -> bool:
        written = await put(snapshot)
        await redis.delete(cache.policy_key(snapshot.id))
        return written

    monkeypatch.setattr(cache, "put", put_then_lose)
    await redis.delete(cache.policy_key(card))
    r = await api.authorize(card, 600)
    assert r.body["stand_in"] is True
    assert (await api.balances(acct))["held"] == r.body["approved_amount"]


async def test_incremental_raises_the_same_hold(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    first = await api.authorize(card, 5_000, merchant={"mcc": "7011"})
    assert first.body["decision"] == "approve"
    inc = await api.authorize(card, 1_500, parent_id=first.body["id"], merchant={"mcc": "7011"})
    assert inc.body["decision"] == "approve"
    assert inc.body["authorization_id"] == first.body["id"]
    assert (await api.balances(acct))["held"] == 6_500
    r = await api.admin("GET", f"/v1/authorizations/{first.body['id']}")
    assert r.status == 200
    assert (r.body["approved_amount"], r.body["held_amount"], r.body["state"]) == (
        6_500, 6_500, "pending")
    assert [h["kind"] for h in r.body["history"]] == ["initial", "incremental"]
    # lodging holds live 30 days
    created = dt.datetime.fromisoformat(r.body["created_at"])
    expires = dt.datetime.fromisoformat(r.body["hold"]["expires_at"])
    assert (expires - created).days == 30
    # the incremental's own id finds the same authorisation
    r2 = await api.admin("GET", f"/v1/authorizations/{inc.body['id']}")
    assert r2.body["id"] == first.body["id"]


async def test_incremental_over_funds_is_declined_and_keeps_the_hold(api: Api) -> None:
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    first = await api.authorize(card, 800)
    r = await api.authorize(card, 500, parent_id=first.body["id"])
    assert r.body["reason"] == "insufficient_funds"
    assert (await api.balances(acct))["held"] == 800


async def test_incremental_without_parent_is_not_honoured(api: Api) -> None:
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    r = await api.authorize(card, 100, parent_id=uid("missing"))
    assert (r.body["reason"], r.body["code"]) == ("do_not_honor", "05")
    assert (await api.balances(acct))["held"] == 0


async def test_incremental_on_another_cards_authorisation_is_refused(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card_a, card_b = await api.card(acct), await api.card(acct)
    first = await api.authorize(card_a, 100)
    r = await api.authorize(card_b, 100, parent_id=first.body["id"])
    assert r.body["reason"] == "do_not_honor"
    assert (await api.balances(acct))["held"] == 100


async def test_retry_returns_the_identical_response_and_changes_nothing(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    raw = orjson.dumps(auth_body(card, 2_000))
    first = await api.authorize_raw(raw)
    again = await api.authorize_raw(raw)
    assert first.body == again.body
    assert (await api.balances(acct))["held"] == 2_000


async def test_a_stored_decline_is_replayed_even_after_funds_arrive(api: Api) -> None:
    acct = await api.account("GBP", funds=0)
    card = await api.card(acct)
    raw = orjson.dumps(auth_body(card, 2_000))
    first = await api.authorize_raw(raw)
    assert first.body["reason"] == "insufficient_funds"
    await api.admin("POST", f"/v1/accounts/{acct}/deposits", {"amount": 5_000},
                    headers={"Idempotency-Key": uid("k")})
    again = await api.authorize_raw(raw)
    assert again.body == first.body
    assert (await api.balances(acct))["held"] == 0


async def test_same_id_with_another_body_is_a_duplicate(api: Api) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)
    body = auth_body(card, 2_000)
    assert (await api.authorize_raw(orjson.dumps(body))).body["decision"] == "approve"
    other = await api.authorize_raw(orjson.dumps({**body, "amount": 3_000}))
    assert (other.body["decision"], other.body["reason"], other.body["code"]) == (
        "decline", "duplicate", "94")
    assert (await api.balances(acct))["held"] == 2_000
