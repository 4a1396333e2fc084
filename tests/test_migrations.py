"""Upgrading a ledger that has data: every migration applies on top of the previous ones with
their rows in place, and the ledger reads the same afterwards. Each test has a scratch database
of its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from holds import ledger
from holds.migrate import available, migrate
from holds.verify import verify
from tests.conftest import PG_ADMIN_URL, RUN_ID, _db_url

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def scratch() -> AsyncIterator[asyncpg.Connection]:
    name = f"holdfast_test_{RUN_ID}_migrations"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(_db_url(name))
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _migrate_through(conn: asyncpg.Connection, last: str) -> None:
    """Apply the migrations up to ``last`` exactly as ``migrate`` records them."""
    await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, name text NOT"
                       " NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL"
                       " DEFAULT now())")
    for m in available():
        if m.version > last:
            break
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name, checksum)"
                               " VALUES ($1, $2, $3)", m.version, m.name, m.checksum)


def _item(request_id: str, amount: int, parent: str | None = None,
          currency: str = "GBP") -> ledger.AuthorizeItem:
    return ledger.AuthorizeItem(
        "native", request_id, 0, request_id, parent, "card-1", amount, currency, False, None, 1,
        None, f"h-{request_id}", NOW, NOW + dt.timedelta(days=7), "m", "Shop", "5812", "GB",
        "pos", False, False)


# the ledger call of a server before migration 0016 (an array per column): the history below is
# what an earlier release wrote, through the schema it had
_BATCH_BY_COLUMNS = (
    "SELECT idx, status FROM hf_authorize_batch($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,"
    "$12::jsonb[],$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23)")


async def _authorize_as_before(conn: asyncpg.Connection,
                               items: list[ledger.AuthorizeItem]) -> None:
    columns: list[Any] = [list(c) for c in zip(*items, strict=True)]
    rows = await conn.fetch(_BATCH_BY_COLUMNS, *columns[:21], 0, columns[21])
    assert [r["status"] for r in rows] == ["new"] * len(items)


async def _history(conn: asyncpg.Connection) -> None:
    """An account with what a ledger accumulates: open, raised, reversed, cleared-to-nothing,
    expired and declined authorisations."""
    await ledger.create_account(conn, "acct-1", "customer", "GBP", 0)
    assert (await ledger.deposit(conn, "k1", "acct-1", 10_000, None, "h")).status == "created"
    await conn.execute("INSERT INTO cards (id, account_id, state) VALUES ('card-1', 'acct-1',"
                       " 'active')")
    items = [_item("open", 1_000), _item("raised", 500), _item("reversed", 700),
             _item("expired", 300), _item("declined", 50_000), _item("foreign", 100, None, "EUR")]
    await _authorize_as_before(conn, items)
    await _authorize_as_before(conn, [_item("raised-inc", 250, parent="raised")])
    await conn.fetchrow("SELECT * FROM hf_release('native:rev-1', 'reversed', 200, 'GBP', $1)",
                        NOW)
    await conn.fetchrow("SELECT * FROM hf_expire_holds($1, ARRAY['expired'])",
                        NOW + dt.timedelta(days=8))


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    holds = await conn.fetch("SELECT * FROM holds ORDER BY id")
    auths = await conn.fetch("SELECT id, state, requested_amount, approved_amount, account_id,"
                             " currency FROM authorizations ORDER BY id")
    accounts = await conn.fetch("SELECT id, posted, held FROM accounts ORDER BY id")
    return {"holds": [dict(r) for r in holds], "authorizations": [dict(r) for r in auths],
            "accounts": [dict(r) for r in accounts]}


async def test_folding_the_hold_into_its_authorisation_keeps_every_hold(
    scratch: asyncpg.Connection,
) -> None:
    await _migrate_through(scratch, "0010")
    await _history(scratch)
    before = await _snapshot(scratch)
    assert {h["id"]: h["state"] for h in before["holds"]} == {
        "open": "open", "raised": "open", "reversed": "open", "expired": "expired"}

    applied = await migrate(scratch)

    # (holdfast verify checks today's schema, 0012's expiry mark included: it runs after)
    assert [m.version for m in applied] == ["0011", "0012", "0013", "0014", "0015", "0016",
                                          "0017"]
    assert await _snapshot(scratch) == before
    # the sweep's mark starts at the soonest open expiry or the clock, whichever is first
    # (here the clock: the history is dated ahead)
    mark = await scratch.fetchval("SELECT swept_to FROM hold_expiry_mark")
    assert mark <= min(h["expires_at"] for h in before["holds"] if h["state"] == "open")
    assert mark <= await scratch.fetchval("SELECT now()")
    assert await scratch.fetchval("SELECT to_regclass('holds')::text IS NOT NULL AND NOT EXISTS"
                                  " (SELECT 1 FROM pg_tables WHERE tablename = 'holds')")
    declined = await scratch.fetchrow("SELECT state, hold_state, hold_remaining FROM"
                                      " authorizations WHERE id = 'declined'")
    assert declined is not None
    assert tuple(declined) == ("declined", None, None)
    report = await verify(scratch)
    assert report.ok, report.render()
    # the upgraded ledger goes on working: an incremental on a folded hold, then a release
    await ledger.authorize_many(scratch, [_item("open-inc", 100, parent="open")],
                                stand_in_cap_minor=0)
    await scratch.fetchrow("SELECT * FROM hf_release('native:rev-2', 'open', NULL, 'GBP', $1)",
                           NOW)
    assert await scratch.fetchval("SELECT held FROM accounts WHERE id = 'acct-1'") == 750 + 500
    # and the sweep expires a folded hold (0013's hf_expire_holds): 'raised' holds 750
    expired = await scratch.fetchrow("SELECT * FROM hf_expire_holds($1, ARRAY['raised'])",
                                     NOW + dt.timedelta(days=8))
    assert expired is not None and tuple(expired) == (1, 750)
    assert await scratch.fetchval("SELECT held FROM accounts WHERE id = 'acct-1'") == 500
    assert (await verify(scratch)).ok


async def test_a_hold_on_another_account_stops_the_fold_and_changes_nothing(
    scratch: asyncpg.Connection,
) -> None:
    await _migrate_through(scratch, "0010")
    await _history(scratch)
    await ledger.create_account(scratch, "acct-2", "customer", "GBP", 0)
    await scratch.execute("UPDATE holds SET account_id = 'acct-2' WHERE id = 'open'")

    with pytest.raises(asyncpg.RaiseError, match="another account"):
        await migrate(scratch)

    assert await scratch.fetchval("SELECT count(*) FROM schema_migrations"
                                  " WHERE version = '0011'") == 0
    assert await scratch.fetchval("SELECT count(*) FROM pg_tables"
                                  " WHERE tablename = 'holds'") == 1


async def _requests(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM authorization_requests"
                            " ORDER BY provider, provider_id, sequence")
    return [{k: v for k, v in dict(r).items() if k != "id"} for r in rows]


async def test_folding_the_initial_request_into_its_authorisation_keeps_every_decision(
    scratch: asyncpg.Connection,
) -> None:
    await _migrate_through(scratch, "0016")
    await _history(scratch)
    # an advice (a request no one here decided) and a stand-in approval not yet counted
    await scratch.fetchrow("SELECT * FROM hf_advice('native:adv-1', 'native', 'advised',"
                           " 'card-1', 60, 'GBP', $1, $2)", NOW, NOW + dt.timedelta(days=7))
    stood_in = _item("stood-in", 40)._replace(stand_in=True)
    await ledger.authorize_many(scratch, [stood_in], stand_in_cap_minor=1_000)
    before, ledger_before = await _requests(scratch), await _snapshot(scratch)
    assert {r["kind"] for r in before} == {"initial", "incremental", "advice"}

    applied = await migrate(scratch)

    assert [m.version for m in applied] == ["0017"]
    assert await _requests(scratch) == before
    assert await _snapshot(scratch) == ledger_before
    # the initial requests moved onto their authorisations; the others stayed, as follow-ups
    kinds = await scratch.fetch("SELECT kind, count(*) FROM followup_requests GROUP BY kind"
                                " ORDER BY kind")
    assert [tuple(r) for r in kinds] == [("advice", 1), ("incremental", 1)]
    assert await scratch.fetchval("SELECT count(*) FROM authorizations"
                                  " WHERE request_sequence IS NOT NULL") == 7
    report = await verify(scratch)
    assert report.ok, report.render()
    # a replay of a request decided before the upgrade gets its decision, and a new request
    # with its identity is a duplicate
    (again,) = await ledger.authorize_many(scratch, [_item("open", 1_000)],
                                           stand_in_cap_minor=0)
    assert (again.status, again.approved) == ("replay", True)
    (clash,) = await ledger.authorize_many(
        scratch, [_item("open", 999)._replace(request_hash="another")], stand_in_cap_minor=0)
    assert (clash.status, clash.reason) == ("conflict", "duplicate")
    # the stand-in approval is still to be counted, now from its authorisation's row
    assert await scratch.fetchval("SELECT count(*) FROM authorizations WHERE request_stand_in"
                                  " AND request_approved > 0 AND NOT request_counted") == 1


async def test_two_initial_requests_on_one_authorisation_stop_the_fold_and_change_nothing(
    scratch: asyncpg.Connection,
) -> None:
    await _migrate_through(scratch, "0016")
    await _history(scratch)
    await scratch.execute(
        "INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id,"
        " kind, amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,"
        " request_hash, decided_at) VALUES ('native', 'open-again', 0, 'open', 'initial', 5,"
        " 'GBP', false, 'approve', 5, 'approved', false, 'h', now())")
    before = await _requests(scratch)

    with pytest.raises(asyncpg.RaiseError, match="more than one initial request"):
        await migrate(scratch)

    assert await scratch.fetchval("SELECT count(*) FROM schema_migrations"
                                  " WHERE version = '0017'") == 0
    assert await scratch.fetchval("SELECT count(*) FROM pg_tables"
                                  " WHERE tablename = 'authorization_requests'") == 1
    assert await _requests(scratch) == before
