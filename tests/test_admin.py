"""The management API: accounts, deposits (Idempotency-Key), cards with policy, scopes."""

from __future__ import annotations

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from authz.openapi import spec
from authz.settings import Settings
from tests.support import Api, Server, uid


async def test_account_create_is_idempotent_on_id_and_body(api: Api) -> None:
    account_id = uid("acct")
    body = {"id": account_id, "currency": "EUR", "overdraft_limit": 2_000}
    first = await api.admin("POST", "/v1/accounts", body)
    assert first.status == 201
    assert first.body == {"id": account_id, "kind": "customer", "currency": "EUR", "posted": 0,
                          "held": 0, "available": 2_000, "overdraft_limit": 2_000}
    again = await api.admin("POST", "/v1/accounts", body)
    assert (again.status, again.body) == (200, first.body)
    other = await api.admin("POST", "/v1/accounts", {**body, "currency": "USD"})
    assert (other.status, other.body["error"]["code"]) == (409, "account_exists")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"currency": "GBP"}, "missing_field"),
        ({"id": "a b", "currency": "GBP"}, "invalid_field"),
        ({"id": "ok-id", "currency": "ZZZ"}, "unknown_currency"),
        ({"id": "ok-id", "currency": "GBP", "overdraft_limit": -1}, "invalid_amount"),
        ({"id": "ok-id", "currency": "GBP", "overdraft_limit": 1.5}, "invalid_amount"),
        ({"id": "ok-id", "currency": "GBP", "kind": "bank"}, "invalid_field"),
    ],
)
async def test_account_validation(api: Api, body: dict[str, object], code: str) -> None:
    r = await api.admin("POST", "/v1/accounts", body)
    assert (r.status, r.body["error"]["code"]) == (400, code)


async def test_unknown_account_is_404(api: Api) -> None:
    r = await api.admin("GET", f"/v1/accounts/{uid('none')}")
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_account")


async def test_deposit_is_idempotent_on_its_key(api: Api) -> None:
    account = await api.account("GBP")
    key = {"Idempotency-Key": uid("key")}
    first = await api.admin("POST", f"/v1/accounts/{account}/deposits",
                            {"amount": 5_000, "reference": "payroll"}, headers=key)
    assert first.status == 201
    assert (first.body["amount"], first.body["currency"], first.body["status"]) == (
        5_000, "GBP", "posted")
    again = await api.admin("POST", f"/v1/accounts/{account}/deposits",
                            {"amount": 5_000, "reference": "payroll"}, headers=key)
    assert (again.status, again.body) == (200, first.body)
    other = await api.admin("POST", f"/v1/accounts/{account}/deposits",
                            {"amount": 6_000, "reference": "payroll"}, headers=key)
    assert (other.status, other.body["error"]["code"]) == (409, "idempotency_conflict")
    assert await api.balances(account) == {"posted": 5_000, "held": 0, "available": 5_000}


async def test_deposit_posts_both_sides(api: Api, db: asyncpg.Pool) -> None:
    account = await api.account("JPY", funds=1_200)
    rows = await db.fetch(
        "SELECT account_id, currency, amount FROM postings WHERE transaction_id ="
        " (SELECT transaction_id FROM postings WHERE account_id = $1) ORDER BY amount", account)
    assert [tuple(r) for r in rows] == [("settlement-JPY", "JPY", -1_200),
                                        (account, "JPY", 1_200)]


async def test_deposit_needs_a_key_and_a_known_account(api: Api) -> None:
    account = await api.account("GBP")
    r = await api.admin("POST", f"/v1/accounts/{account}/deposits", {"amount": 1})
    assert (r.status, r.body["error"]["code"]) == (400, "missing_idempotency_key")
    r = await api.admin("POST", f"/v1/accounts/{uid('none')}/deposits", {"amount": 1},
                        headers={"Idempotency-Key": uid("k")})
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_account")
    r = await api.admin("POST", f"/v1/accounts/{account}/deposits", {"amount": 0},
                        headers={"Idempotency-Key": uid("k")})
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_amount")


async def test_card_put_versions_its_policy(api: Api, redis: aioredis.Redis,
                                            settings: Settings) -> None:
    account = await api.account("GBP")
    card_id = uid("card")
    path = f"/v1/cards/{card_id}"
    policy = {"max_amount": 5_000, "mcc_block": ["7995", "6051"],
              "velocity": [{"window": "24h", "max_amount": 20_000, "max_count": 10}]}
    r = await api.admin("PUT", path, {"account_id": account, "policy": policy,
                                      "expires": "2029-08", "last4": "0005"})
    assert r.status == 201
    assert (r.body["state"], r.body["version"], r.body["policy_version"]) == ("active", 1, 1)
    assert r.body["policy"]["mcc_block"] == ["6051", "7995"]
    # the same card again: nothing changes
    r = await api.admin("PUT", path, {"account_id": account, "policy": policy,
                                      "expires": "2029-08", "last4": "0005"})
    assert (r.status, r.body["version"], r.body["policy_version"]) == (200, 1, 1)
    # a new policy: new policy version, written through to the cache
    r = await api.admin("PUT", path, {"account_id": account, "policy": {"max_amount": 100},
                                      "expires": "2029-08", "last4": "0005"})
    assert (r.body["version"], r.body["policy_version"]) == (2, 2)
    cached = await redis.get(f"{settings.redis_prefix}{{card:{card_id}}}:pol")
    assert cached is not None
    # the old rules are gone (absent: no rule)
    assert orjson.loads(cached) == {"v": "2", "s": "active", "cur": "GBP", "pv": "2",
                                    "exp": "202908", "max": 100}
    r = await api.admin("GET", path, scope="customer")
    assert r.status == 200 and r.body["policy"] == {"max_amount": 100}


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"max_amount": 0}, "max_amount"),
        ({"max_amount": 1.5}, "max_amount"),
        ({"mcc_block": ["12"]}, "mcc_block"),
        ({"country_allow": ["gb"]}, "country_allow"),
        ({"channels_block": ["phone"]}, "channels_block"),
        ({"velocity": [{"window": "1w", "max_count": 1}]}, "velocity[0].window"),
        ({"velocity": [{"window": "90d", "max_count": 1}]}, "velocity[0].window"),
        ({"velocity": [{"window": "1h"}]}, "velocity[0]"),
        ({"unknown_rule": True}, "unknown_rule"),
    ],
)
async def test_invalid_policy_is_refused(api: Api, policy: dict[str, object], field: str
                                         ) -> None:
    account = await api.account("GBP")
    r = await api.admin("PUT", f"/v1/cards/{uid('card')}", {"account_id": account,
                                                           "policy": policy})
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_policy")
    assert f"policy.{field}" in r.body["error"]["message"]


async def test_card_rules(api: Api) -> None:
    account = await api.account("GBP")
    other = await api.account("GBP")
    card = await api.card(account)
    r = await api.admin("PUT", f"/v1/cards/{card}", {"account_id": other})
    assert (r.status, r.body["error"]["code"]) == (409, "card_conflict")
    r = await api.admin("PUT", f"/v1/cards/{uid('card')}", {"account_id": uid("nobody")})
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_account")
    assert (await api.admin("POST", f"/v1/cards/{card}/terminate")).status == 200
    r = await api.admin("POST", f"/v1/cards/{card}/unfreeze")
    assert (r.status, r.body["error"]["code"]) == (409, "card_conflict")
    r = await api.admin("PUT", f"/v1/cards/{card}", {"account_id": account, "state": "active"})
    assert (r.status, r.body["error"]["code"]) == (409, "card_conflict")
    r = await api.admin("POST", f"/v1/cards/{uid('none')}/freeze")
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_card")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/cards/{card}/freeze", {"admin", "support", "customer"}),
        ("POST", "/v1/cards/{card}/unfreeze", {"admin", "support", "customer"}),
        ("POST", "/v1/cards/{card}/terminate", {"admin", "support"}),
        ("GET", "/v1/cards/{card}", {"admin", "support", "customer", "ops"}),
        ("GET", "/v1/accounts/{account}", {"admin", "support", "ops"}),
        ("PUT", "/v1/cards/{card}", {"admin"}),
        ("POST", "/v1/accounts/{account}/deposits", {"admin"}),
    ],
)
async def test_scopes_route_by_route(api: Api, method: str, path: str, allowed: set[str]
                                     ) -> None:
    account = await api.account("GBP")
    card = await api.card(account)
    url = path.format(card=card, account=account)
    body = {"account_id": account} if method == "PUT" else {"amount": 1}
    for scope in ("ops", "customer", "support", "admin"):  # terminate last
        r = await api.admin(method, url, body, scope=scope,
                            headers={"Idempotency-Key": uid("k")})
        if scope in allowed:
            assert r.status in (200, 201), (scope, r.body)
        else:
            assert (r.status, r.body["error"]["code"]) == (403, "insufficient_scope"), scope


async def test_missing_or_unknown_token_is_401(api: Api) -> None:
    r = await api.raw("GET", "/v1/accounts/x")
    assert (r.status, r.body["error"]["code"]) == (401, "missing_token")
    r = await api.raw("GET", "/v1/accounts/x", headers={"Authorization": "Bearer nope-nope-nope"})
    assert (r.status, r.body["error"]["code"]) == (401, "bad_token")


async def test_unknown_authorization_is_404(api: Api) -> None:
    r = await api.admin("GET", f"/v1/authorizations/{uid('none')}", scope="ops")
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_authorization")


async def test_openapi_describes_exactly_the_served_routes(api: Api, server: Server) -> None:
    served = {
        (route.method, route.resource.canonical)
        for route in server.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    r = await api.raw("GET", "/openapi.json")
    assert r.status == 200 and r.body == spec()
    described = {(m.upper(), p) for p, ops in r.body["paths"].items() for m in ops}
    assert described == served


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.raw("GET", "/healthz")).status == 200
    r = await api.raw("GET", "/readyz")
    assert r.status == 200
    assert r.body["postgres"] == {"ok": True, "pending_migrations": []}
    assert r.body["redis"] == {"ok": True}


async def test_metrics_expose_decisions_and_call_latency(api: Api) -> None:
    account = await api.account("GBP", funds=1_000)
    card = await api.card(account)
    await api.authorize(card, 100)
    await api.authorize(card, 10_000)
    r = await api.raw("GET", "/metrics")
    text = r.body if isinstance(r.body, str) else ""
    for name in ('holdfast_decisions_total{provider="native",reason="approved"}',
                 'holdfast_decisions_total{provider="native",reason="insufficient_funds"}',
                 'holdfast_decision_seconds_bucket{decision="approve"',
                 'holdfast_redis_call_seconds_count{op="decide"}',
                 'holdfast_postgres_call_seconds_count{op="authorize"}',
                 "holdfast_inbox_pending ", "holdfast_inbox_oldest_pending_age_seconds ",
                 "holdfast_events_quarantined ", "holdfast_sweep_lag_seconds "):
        assert name in text, name
