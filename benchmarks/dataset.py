"""The benchmark's own database and Redis key prefix: created, seeded, checked and removed.

Seeding 10,000 cardholders has to take seconds, not minutes: accounts, cards and policies go in
with ``COPY``; funds go through ``hf_deposit`` itself (pipelined with ``executemany`` in one
transaction), so the postings, the balanced-transaction trigger and ``accounts.posted`` are exactly
what production would have and ``holdfast verify`` judges them like any other ledger. The policy
cache is filled up front, as it is on a running system, so the measured phases see hits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from authz.hotpath import request_hash
from benchmarks.traffic import profile
from holds.migrate import migrate
from holds.verify import Report, verify
from policies.cache import PolicyCache
from policies.model import Policy
from policies.store import CardSnapshot

__all__ = [
    "autovacuum_on",
    "checkpoint",
    "create_database",
    "drop_database",
    "forget_keys",
    "seed",
    "vacuum_analyze",
    "verify_ledger",
    "warm_cache",
]

_EXPIRES = "2030-12"
_CACHE_BATCH = 64


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(admin_url: str, url: str, name: str, through: str | None = None
                          ) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {_quoted(name)}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, through)  # what `holdfast migrate` runs
    finally:
        await conn.close()


async def last_migration(url: str) -> str:
    """The version of the last migration applied to the database at ``url``."""
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT max(version) FROM schema_migrations"))
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
    finally:
        await admin.close()


def _policy_json(raw: dict[str, Any]) -> str:
    # the canonical stored form, as policies.store.upsert_card writes it
    return orjson.dumps(Policy.parse(raw).to_json()).decode()


async def seed(url: str, cards: int) -> None:
    profiles = [profile(i) for i in range(cards)]
    # an account's funds are its cards' together (one card each unless traffic.share_accounts)
    funds: dict[str, int] = {}
    currency_of: dict[str, str] = {}
    for p in profiles:
        funds[p.account_id] = funds.get(p.account_id, 0) + p.funds_minor
        currency_of[p.account_id] = p.currency
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "accounts", columns=["id", "kind", "currency", "overdraft_limit"],
                records=[(a, "customer", currency_of[a], 0) for a in funds],
            )
            await conn.copy_records_to_table(
                "cards", columns=["id", "account_id", "state", "expires", "last4"],
                records=[(p.card_id, p.account_id, p.state, _EXPIRES, f"{p.index % 10_000:04d}")
                         for p in profiles],
            )
            await conn.copy_records_to_table(
                "card_policies", columns=["card_id", "version", "policy"],
                records=[(p.card_id, 1, _policy_json(p.policy)) for p in profiles],
            )
            # settlement accounts first, so the deposits do not race to create them
            for currency in sorted({p.currency for p in profiles}):
                await conn.execute("SELECT hf_settlement_account($1)", currency)
            await conn.executemany(
                "SELECT hf_deposit($1, $2, $3, $4, $5)",
                [(f"deposit:{a}:bench-seed", a, amount, "benchmark seed",
                  request_hash(amount, "benchmark seed")) for a, amount in funds.items()],
            )
        await _analyze_filled(conn)
    finally:
        await conn.close()


async def _analyze_filled(conn: asyncpg.Connection[Any]) -> None:
    """Statistics for the tables the seed filled, as autovacuum would gather after a bulk load.

    The empty ones (authorizations, holds, ...) are left never-analysed on purpose: an ANALYZE of
    an empty table records "0 rows", and a pooled connection that plans a statement against that
    keeps a sequential-scan plan (hf_authorize's lookups, the foreign-key checks) while the table
    grows, until the next ANALYZE invalidates it."""
    tables = await conn.fetch(
        "SELECT format('%I', relname) AS name FROM pg_class"
        " WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
    for row in tables:
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {row['name']})"):
            await conn.execute(f"ANALYZE {row['name']}")


async def autovacuum_on(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT current_setting('autovacuum') = 'on'"))
    finally:
        await conn.close()


async def checkpoint(url: str) -> bool:
    """Flush the bulk load's dirty pages now (a superuser's CHECKPOINT), so the checkpoint its
    WAL would otherwise trigger does not run during the first measurements; False when not
    allowed (the measurements then say so in their full-page-image figures)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        return False
    finally:
        await conn.close()
    return True


async def vacuum_analyze(url: str) -> None:
    """What autovacuum would have done meanwhile (for a server that runs without it): dead row
    versions of the hot account rows removed, fresh statistics, and with them the pooled
    connections' cached plans invalidated and made again for tables of their real size."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()


async def warm_cache(redis_url: str, prefix: str, dedupe_ttl_s: int, cards: int) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True,
                                     max_connections=_CACHE_BATCH)
    cache = PolicyCache(client, prefix, dedupe_ttl_s)
    try:
        await cache.load_scripts()
        snapshots = [
            CardSnapshot(
                id=p.card_id, account_id=p.account_id, currency=p.currency, state=p.state,
                version=1, policy_version=1, policy=Policy.parse(p.policy), expires=_EXPIRES,
                last4=f"{p.index % 10_000:04d}",
            )
            for p in map(profile, range(cards))
        ]
        for start in range(0, len(snapshots), _CACHE_BATCH):
            await asyncio.gather(*(cache.put(s) for s in snapshots[start : start + _CACHE_BATCH]))
    finally:
        await client.aclose()


async def forget_keys(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (policies, velocity, dedupe, the raw stack's counter)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    deleted = 0
    try:
        batch: list[str] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=5_000):
            batch.append(key)
            if len(batch) >= 2_000:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


async def verify_ledger(url: str) -> tuple[Report, dict[str, int]]:
    """``holdfast verify`` on the benchmark's ledger, and what it holds."""
    conn = await asyncpg.connect(url)
    try:
        report = await verify(conn)
        counts = {
            "authorisation requests": await conn.fetchval(
                "SELECT count(*) FROM authorization_requests"),
            "open holds": await conn.fetchval("SELECT count(*) FROM holds WHERE state = 'open'"),
            "postings": await conn.fetchval("SELECT count(*) FROM postings"),
        }
    finally:
        await conn.close()
    return report, counts
