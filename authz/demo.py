"""Demo data for ``make run``: two funded accounts and three cards, seeded idempotently, and the
curl commands that exercise them."""

from __future__ import annotations

from typing import Any

import asyncpg

from authz.app import redis_client
from authz.hotpath import request_hash
from authz.settings import DEV_WEBHOOK_SECRET, Settings
from holds import ledger
from policies.cache import PolicyCache
from policies.model import Policy
from policies.store import upsert_card

__all__ = ["seed"]

ACCOUNTS = (("acct-alice", "GBP", 250_00, 0), ("acct-bob", "USD", 40_00, 10_00))
CARDS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("card-alice", "acct-alice", "active", {
        "max_amount": 500_00, "mcc_block": ["7995"],
        "velocity": [{"window": "1h", "max_count": 20}, {"window": "1d", "max_amount": 1000_00}],
    }),
    ("card-bob", "acct-bob", "active", {"country_allow": ["US", "CA"]}),
    ("card-frozen", "acct-bob", "frozen", {}),
)


async def seed(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    client = redis_client(settings)  # a single Redis or a cluster, as the server uses
    cache = PolicyCache(client, settings.redis_prefix, settings.dedupe_ttl_s)
    try:
        for account_id, currency, funds, overdraft in ACCOUNTS:
            await ledger.create_account(conn, account_id, "customer", currency, overdraft)
            await ledger.deposit(conn, f"deposit:{account_id}:demo-seed", account_id, funds,
                                 "demo seed", request_hash(funds, "demo seed"))
        for card_id, account_id, state, policy in CARDS:
            card, _ = await upsert_card(conn, card_id, account_id, state, Policy.parse(policy),
                                        "2030-12", "4242")
            await cache.put(card)
    finally:
        await client.aclose()
        await conn.close()
    _print_howto(settings)


def _print_howto(settings: Settings) -> None:
    secret = (settings.webhook_secrets[0].reveal() if settings.webhook_secrets
              else DEV_WEBHOOK_SECRET)
    base = f"http://127.0.0.1:{settings.port}"
    body = ('{"id":"demo-\'$RANDOM\'","card_id":"card-alice","amount":1250,"currency":"GBP",'
            '"merchant":{"id":"m-1","name":"Corner Cafe","mcc":"5812","country":"GB"},'
            '"channel":"contactless"}')
    print("demo data ready: accounts acct-alice (GBP 250.00), acct-bob (USD 40.00 + 10.00 "
          "overdraft); cards card-alice, card-bob, card-frozen\n")
    print("Try it (in another shell, once the server is up):\n")
    print(f"  BODY='{body}'; TS=$(date +%s); "
          f"SIG=$(printf '%s.%s' \"$TS\" \"$BODY\" | openssl dgst -sha256 -hmac '{secret}' "
          "| sed 's/^.* //')")
    print(f"  curl -s {base}/v1/authorize -H \"Holdfast-Signature: t=$TS,v1=$SIG\" "
          "-d \"$BODY\"; echo")
    print(f"  curl -s {base}/v1/accounts/acct-alice -H 'Authorization: Bearer dev-admin-token'"
          "; echo")
    print(f"  curl -s -X POST {base}/v1/cards/card-alice/freeze "
          "-H 'Authorization: Bearer dev-customer-token'; echo")
    print(f"  curl -s {base}/metrics | grep holdfast_decisions_total\n")
