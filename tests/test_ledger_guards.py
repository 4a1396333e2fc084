"""The ledger's own guards: PostgreSQL refuses an unbalanced transaction and any change to the
journal; ``holdfast verify`` finds every kind of corruption and exits non-zero. Corruption is
made in a scratch database of its own, never in the shared test database."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import holds
from holds import ledger
from holds.migrate import migrate
from holds.verify import CHECKS, verify
from tests.conftest import PG_ADMIN_URL, RUN_ID, _db_url


@pytest.fixture
async def scratch() -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    name = f"holdfast_test_{RUN_ID}_scratch"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _db_url(name)
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await _seed(conn)
    try:
        yield url, conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _seed(conn: asyncpg.Connection) -> None:
    """One funded account, one card, one approved authorisation with its hold."""
    await ledger.create_account(conn, "acct-1", "customer", "GBP", 0)
    result = await ledger.deposit(conn, "k1", "acct-1", 10_000, None, "h")
    assert result.status == "created"
    await conn.execute("INSERT INTO cards (id, account_id, state) VALUES ('card-1', 'acct-1', "
                       "'active')")
    await conn.execute("INSERT INTO card_policies (card_id, version, policy) VALUES "
                       "('card-1', 1, '{}')")
    now = dt.datetime.now(dt.UTC)
    (auth,) = await ledger.authorize_many(conn, [ledger.AuthorizeItem(
        "native", "auth-1", 0, "auth-1", None, "card-1", 2_500, "GBP", False, None, 1, None,
        "h1", now, now + dt.timedelta(days=7), "m", "", "5812", "GB", "pos", False, False,
    )], stand_in_cap_minor=0)
    assert (auth.status, auth.approved) == ("new", True)


async def _checks_failing(conn: asyncpg.Connection) -> set[str]:
    report = await verify(conn)
    return {v.check for v in report.violations}


async def test_a_clean_ledger_verifies(scratch: tuple[str, asyncpg.Connection]) -> None:
    _, conn = scratch
    report = await verify(conn)
    assert report.ok and report.checks_run == len(CHECKS)


async def test_unbalanced_transaction_is_refused_at_commit(
    scratch: tuple[str, asyncpg.Connection],
) -> None:
    _, conn = scratch
    with pytest.raises(asyncpg.PostgresError, match="unbalanced ledger transaction"):
        async with conn.transaction():
            tx = await conn.fetchval(
                "INSERT INTO ledger_transactions (kind) VALUES ('test') RETURNING id")
            await conn.execute("INSERT INTO postings (transaction_id, account_id, currency, "
                               "amount) VALUES ($1, 'acct-1', 'GBP', 500)", tx)
    assert await _checks_failing(conn) == set()


async def test_posting_in_a_foreign_currency_is_refused(
    scratch: tuple[str, asyncpg.Connection],
) -> None:
    _, conn = scratch
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with conn.transaction():
            tx = await conn.fetchval(
                "INSERT INTO ledger_transactions (kind) VALUES ('test') RETURNING id")
            await conn.execute("INSERT INTO postings (transaction_id, account_id, currency, "
                               "amount) VALUES ($1, 'acct-1', 'EUR', 500), "
                               "($1, 'settlement-GBP', 'EUR', -500)", tx)


@pytest.mark.parametrize("statement", [
    "UPDATE postings SET amount = amount + 1",
    "DELETE FROM postings",
    "TRUNCATE postings CASCADE",
    "UPDATE ledger_transactions SET reference = 'x'",
    "DELETE FROM ledger_transactions",
])
async def test_the_journal_is_append_only(scratch: tuple[str, asyncpg.Connection],
                                          statement: str) -> None:
    _, conn = scratch
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await conn.execute(statement)


async def test_hold_parts_must_add_up(scratch: tuple[str, asyncpg.Connection]) -> None:
    _, conn = scratch
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE holds SET remaining = remaining - 1")


# Each rule the hot tables' row checks enforce (migration 0014), a write that breaks it, and
# the constraint names the refusal may carry (a write that breaks more than one rule carries
# the first the check function meets).
_ROW_RULES = [
    ("UPDATE accounts SET id = 'no spaces allowed' WHERE id = 'acct-1'",
     {"accounts_id_check"}),
    ("UPDATE accounts SET kind = 'treasury'", {"accounts_kind_check"}),
    ("UPDATE accounts SET currency = 'gbp'", {"accounts_currency_check"}),
    ("UPDATE accounts SET held = -1", {"accounts_held_check"}),
    ("UPDATE accounts SET overdraft_limit = -1", {"accounts_overdraft_limit_check"}),
    ("UPDATE authorizations SET state = 'approved'", {"authorizations_state_check"}),
    ("UPDATE authorizations SET requested_amount = -1",
     {"authorizations_requested_amount_check"}),
    ("UPDATE authorizations SET approved_amount = -1",
     {"authorizations_approved_amount_check"}),
    ("UPDATE authorizations SET hold_state = 'pending'", {"authorizations_hold_state_check"}),
    ("UPDATE authorizations SET hold_authorized = -1, hold_remaining = -1",
     {"authorizations_hold_authorized_check", "authorizations_hold_remaining_check"}),
    ("UPDATE authorizations SET hold_posted = -1, hold_over_posted = -1",
     {"authorizations_hold_posted_check", "authorizations_hold_parts"}),
    ("UPDATE authorizations SET hold_released = -1, hold_remaining = hold_remaining + 1",
     {"authorizations_hold_released_check"}),
    ("UPDATE authorizations SET hold_remaining = -1, hold_released = hold_released + 2501",
     {"authorizations_hold_remaining_check"}),
    ("UPDATE authorizations SET hold_forced = NULL", {"authorizations_hold_whole"}),
    ("UPDATE authorizations SET hold_remaining = hold_remaining - 1",
     {"authorizations_hold_parts"}),
    ("UPDATE authorization_requests SET sequence = -1",
     {"authorization_requests_sequence_check"}),
    ("UPDATE authorization_requests SET kind = 'refund'", {"authorization_requests_kind_check"}),
    ("UPDATE authorization_requests SET amount = 0",
     {"authorization_requests_amount_check", "authorization_requests_check"}),
    ("UPDATE authorization_requests SET decision = 'maybe'",
     {"authorization_requests_decision_check", "authorization_requests_check1"}),
    ("UPDATE authorization_requests SET approved_amount = amount + 1",
     {"authorization_requests_check"}),
    ("UPDATE authorization_requests SET decision = 'decline'",
     {"authorization_requests_check1"}),
    # the initial request on its authorisation's row (0017)
    ("UPDATE authorizations SET request_amount = 0", {"authorizations_request_ok"}),
    ("UPDATE authorizations SET request_approved = request_amount + 1",
     {"authorizations_request_ok"}),
    ("UPDATE authorizations SET request_hash = NULL", {"authorizations_request_ok"}),
]


@pytest.mark.parametrize(("statement", "names"), _ROW_RULES)
async def test_each_row_rule_refuses_under_its_own_name(
    scratch: tuple[str, asyncpg.Connection], statement: str, names: set[str],
) -> None:
    _, conn = scratch
    before = await conn.fetchval("SELECT count(*) FROM authorizations WHERE hold_state = 'open'")
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await conn.execute(statement)
    table = statement.split()[1]
    assert refused.value.constraint_name in names
    assert refused.value.table_name == table
    assert str(refused.value) == (f'new row for relation "{table}" violates check constraint'
                                  f' "{refused.value.constraint_name}"')
    assert await conn.fetchval(
        "SELECT count(*) FROM authorizations WHERE hold_state = 'open'") == before == 1
    assert await _checks_failing(conn) == set()


def test_every_former_constraint_has_a_rule() -> None:
    """Each CHECK constraint migration 0014 folded into a function, and each rule 0017 added
    to one, is broken by a case above."""
    folder = Path(holds.__file__).parent / "migrations"
    sql = (folder / "0014_row_checks.sql").read_text()
    dropped = set(re.findall(r"DROP CONSTRAINT (\w+)", sql))
    assert len(dropped) == 21
    raised = set(re.findall(r"hf_refuse_row\('\w+', '(\w+)'\)", sql))
    assert raised == dropped
    # 0017's check function repeats 0014's rules for authorizations and adds one
    added = set(re.findall(r"hf_refuse_row\('\w+', '(\w+)'\)",
                           (folder / "0017_request_on_the_authorization.sql").read_text())
                ) - dropped
    assert added == {"authorizations_request_ok"}
    assert set().union(*(names for _, names in _ROW_RULES)) == dropped | added


async def test_the_hot_tables_check_rows_only_through_their_functions(
    scratch: tuple[str, asyncpg.Connection],
) -> None:
    """An inline CHECK on a table the hot path writes is parsed afresh by every statement that
    writes it (0014): such a rule goes into the table's check function instead."""
    _, conn = scratch
    rows = await conn.fetch(
        "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def"
        " FROM pg_constraint WHERE contype = 'c' AND conrelid::regclass::text IN"
        " ('accounts', 'authorizations', 'followup_requests') ORDER BY 1")
    assert {(r["tbl"], r["conname"]) for r in rows} == {
        ("accounts", "accounts_row_ok"),
        ("authorizations", "authorizations_row_ok"),
        # the table of authorization_requests' rows but the initial ones (0017), its name kept
        ("followup_requests", "authorization_requests_row_ok"),
    }
    for r in rows:
        assert r["def"].startswith("CHECK (hf_"), r["def"]


@pytest.mark.parametrize(("statement", "error"), [
    # a hold is placed on an authorisation: one that exists, holds nothing yet, and on its
    # account and currency
    ("INSERT INTO holds (id, account_id, currency, state, authorized, remaining, expires_at,"
     " created_at, updated_at) VALUES ('no-such-auth', 'acct-1', 'GBP', 'open', 5, 5, now(),"
     " now(), now())", asyncpg.ForeignKeyViolationError),
    ("INSERT INTO holds (id, account_id, currency, state, authorized, remaining, expires_at,"
     " created_at, updated_at) VALUES ('auth-1', 'acct-1', 'GBP', 'open', 5, 5, now(), now(),"
     " now())", asyncpg.UniqueViolationError),
    ("INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,"
     " state, requested_amount, approved_amount, created_at, updated_at) VALUES ('auth-2',"
     " 'native', 'auth-2', 'card-1', 'acct-1', 'GBP', 'pending', 5, 5, now(), now());"
     "INSERT INTO holds (id, account_id, currency, state, authorized, remaining, expires_at,"
     " created_at, updated_at) VALUES ('auth-2', 'acct-1', 'EUR', 'open', 5, 5, now(), now(),"
     " now())", asyncpg.CheckViolationError),
    # half a hold on an authorisation
    ("UPDATE authorizations SET hold_forced = NULL", asyncpg.CheckViolationError),
    ("UPDATE authorizations SET hold_state = 'closed'", asyncpg.CheckViolationError),
])
async def test_a_hold_belongs_whole_to_one_authorisation(
    scratch: tuple[str, asyncpg.Connection], statement: str, error: type[Exception],
) -> None:
    _, conn = scratch
    with pytest.raises(error):
        async with conn.transaction():
            await conn.execute(statement)
    assert await _checks_failing(conn) == set()


async def test_a_hold_placed_on_an_authorisation_reads_back_through_holds(
    scratch: tuple[str, asyncpg.Connection],
) -> None:
    """What hf_advice does for an authorisation that held nothing: INSERT INTO holds places
    the hold on the authorisation's row, with the view's defaults for what it does not name."""
    _, conn = scratch
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO authorizations (id, provider, provider_id, card_id, account_id,"
            " currency, state, requested_amount, approved_amount, created_at, updated_at)"
            " VALUES ('auth-3', 'native', 'auth-3', 'card-1', 'acct-1', 'GBP', 'pending', 40,"
            " 40, now(), now())")
        placed = await conn.fetchrow(
            "INSERT INTO holds (id, account_id, currency, state, authorized, remaining,"
            " expires_at, created_at, updated_at) VALUES ('auth-3', 'acct-1', 'GBP', 'open',"
            " 40, 40, now(), now(), now()) RETURNING *")
        await conn.execute("UPDATE accounts SET held = held + 40 WHERE id = 'acct-1'")
        await conn.execute(
            "INSERT INTO authorization_requests (provider, provider_id, sequence,"
            " authorization_id, kind, amount, currency, partial_allowed, decision,"
            " approved_amount, reason, stand_in, request_hash, decided_at) VALUES ('native',"
            " 'auth-3', 0, 'auth-3', 'initial', 40, 'GBP', false, 'approve', 40, 'approved',"
            " false, 'h3', now())")
    row = await conn.fetchrow("SELECT hold_state, hold_authorized, hold_posted, hold_released,"
                              " hold_forced FROM authorizations WHERE id = 'auth-3'")
    assert row is not None and placed is not None
    assert tuple(row) == ("open", 40, 0, 0, False)
    assert (placed["posted"], placed["over_posted"], placed["forced"]) == (0, 0, False)
    assert await conn.fetchval("SELECT count(*) FROM holds") == 2
    assert await _checks_failing(conn) == set()


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("UPDATE accounts SET posted = posted + 1 WHERE id = 'acct-1'", {"posted"}),
        ("UPDATE accounts SET held = held + 7 WHERE id = 'acct-1'", {"held"}),
        ("UPDATE accounts SET held = held + 20000 WHERE id = 'acct-1'", {"held", "overdraft"}),
        ("UPDATE holds SET authorized = authorized + 5, remaining = remaining + 5",
         {"held", "hold_matches_approvals"}),
        ("UPDATE authorizations SET approved_amount = 1", {"hold_matches_approvals"}),
        ("UPDATE authorizations SET state = 'declined'", {"declined_without_hold"}),
        ("INSERT INTO accounts (id, kind, currency) VALUES ('acct-2', 'customer', 'GBP');"
         "UPDATE holds SET account_id = 'acct-2'", {"held"}),
        ("INSERT INTO accounts (id, kind, currency) VALUES ('acct-3', 'customer', 'EUR');"
         "UPDATE authorizations SET account_id = 'acct-3'", {"held", "hold_currency"}),
        ("ALTER TABLE postings DISABLE TRIGGER postings_append_only", {"journal_guards"}),
        # a second initial decision for auth-1 under another identity (a decline: the hold
        # still matches its approvals), recorded through the view among the follow-ups
        ("INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id,"
         " kind, amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,"
         " request_hash, decided_at) VALUES ('native', 'auth-1-again', 0, 'auth-1', 'initial',"
         " 5, 'GBP', false, 'decline', 0, 'insufficient_funds', false, 'h', now())",
         {"one_initial_request"}),
    ],
)
async def test_verify_finds_each_kind_of_corruption(
    scratch: tuple[str, asyncpg.Connection], tamper: str, expected: set[str],
) -> None:
    _, conn = scratch
    await conn.execute(tamper)
    assert await _checks_failing(conn) == expected


async def test_verify_finds_an_unbalanced_journal_written_around_the_guard(
    scratch: tuple[str, asyncpg.Connection],
) -> None:
    _, conn = scratch
    await conn.execute("ALTER TABLE postings DISABLE TRIGGER postings_balanced")
    tx = await conn.fetchval("INSERT INTO ledger_transactions (kind) VALUES ('x') RETURNING id")
    await conn.execute("INSERT INTO postings (transaction_id, account_id, currency, amount) "
                       "VALUES ($1, 'acct-1', 'GBP', 1)", tx)
    await conn.execute("UPDATE accounts SET posted = posted + 1 WHERE id = 'acct-1'")
    assert await _checks_failing(conn) == {"balanced", "journal_guards"}


async def _cli_verify(url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authz.cli", "verify",
        env={**os.environ, "HOLDFAST_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_verify_exit_codes(scratch: tuple[str, asyncpg.Connection]) -> None:
    url, conn = scratch
    code, out = await _cli_verify(url)
    assert code == 0, out
    assert "invariants hold" in out
    await conn.execute("UPDATE accounts SET held = held + 1 WHERE id = 'acct-1'")
    code, out = await _cli_verify(url)
    assert code == 1
    assert "[held] account acct-1: held 2501 but open holds total 2500" in out
