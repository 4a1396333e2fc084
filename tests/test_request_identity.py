"""A request identity (provider, provider_id, sequence) has one decision, though since migration
0017 an initial request's decision is on its authorisation's row and the others' in
followup_requests: every writer locks the identity before it looks for a recorded decision."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from holds import ledger
from tests.support import uid

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


async def _card(db: asyncpg.Pool) -> str:
    account, card = uid("acct"), uid("card")
    async with db.acquire() as conn:
        await ledger.create_account(conn, account, "customer", "GBP", 0)
        assert (await ledger.deposit(conn, uid("k"), account, 100_000, None, "h")).status == \
            "created"
        await conn.execute("INSERT INTO cards (id, account_id, state) VALUES ($1, $2, 'active')",
                           card, account)
    return card


def _item(request_id: str, card: str, amount: int, parent: str | None = None,
          ) -> ledger.AuthorizeItem:
    return ledger.AuthorizeItem(
        "native", request_id, 0, request_id, parent, card, amount, "GBP", False, None, 1, None,
        f"h-{request_id}-{parent}", NOW, NOW + dt.timedelta(days=7), "m", "Shop", "5812", "GB",
        "pos", False, False)


async def _decisions(db: asyncpg.Pool, request_id: str) -> list[tuple[str, str, int]]:
    rows = await db.fetch("SELECT kind, authorization_id, approved_amount FROM"
                          " authorization_requests WHERE provider = 'native'"
                          " AND provider_id = $1", request_id)
    return [tuple(r) for r in rows]


async def _waits_for_a_lock(db: asyncpg.Pool, pid: int) -> bool:
    for _ in range(200):
        if await db.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                             pid):
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.parametrize("batch", [False, True], ids=["alone", "in-a-batch"])
@pytest.mark.parametrize("first", ["initial", "incremental"])
async def test_an_initial_and_an_incremental_under_one_identity_at_once_record_one_decision(
    db: asyncpg.Pool, first: str, batch: bool,
) -> None:
    """The second waits for the first's transaction on the identity's lock (their accounts
    differ, so nothing else orders them), then finds its decision: a duplicate."""
    card_a, card_b, card_c = await _card(db), await _card(db), await _card(db)
    parent = uid("parent")
    async with db.acquire() as conn:
        (placed,) = await ledger.authorize_many(conn, [_item(parent, card_b, 1_000)],
                                                stand_in_cap_minor=0)
    assert placed.status == "new"
    shared = uid("req")
    initial, incremental = _item(shared, card_a, 500), _item(shared, card_b, 200, parent)
    one, other = (initial, incremental) if first == "initial" else (incremental, initial)
    async with db.acquire() as c1, db.acquire() as c2:
        tx = c1.transaction()
        await tx.start()
        (got1,) = await ledger.authorize_many(c1, [one], stand_in_cap_minor=0)
        assert (got1.status, got1.approved) == ("new", True)
        items = [other, _item(uid("bystander"), card_c, 10)] if batch else [other]
        second = asyncio.create_task(ledger.authorize_many(c2, items, stand_in_cap_minor=0))
        assert await _waits_for_a_lock(db, c2.get_server_pid())
        assert not second.done()
        await tx.commit()
        got2 = (await asyncio.wait_for(second, 10))[0]
    assert (got2.status, got2.approved, got2.reason) == ("conflict", False, "duplicate")
    assert len(await _decisions(db, shared)) == 1


async def test_a_follow_up_request_with_an_initial_requests_identity_is_refused(
    db: asyncpg.Pool,
) -> None:
    card = await _card(db)
    request_id = uid("req")
    async with db.acquire() as conn:
        await ledger.authorize_many(conn, [_item(request_id, card, 300)], stand_in_cap_minor=0)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO authorization_requests (provider, provider_id, sequence,"
                " authorization_id, kind, amount, currency, partial_allowed, decision,"
                " approved_amount, reason, stand_in, request_hash, decided_at) VALUES ('native',"
                " $1, 0, $1, 'advice', 300, 'GBP', false, 'approve', 300, 'approved', true, 'x',"
                " now())", request_id)
    assert await _decisions(db, request_id) == [("initial", request_id, 300)]


async def test_an_initial_request_reads_back_through_the_view_and_lives_on_its_authorisation(
    db: asyncpg.Pool,
) -> None:
    card = await _card(db)
    first, raised = uid("req"), uid("inc")
    async with db.acquire() as conn:
        await ledger.authorize_many(conn, [_item(first, card, 700)], stand_in_cap_minor=0)
        await ledger.authorize_many(conn, [_item(raised, card, 50, first)], stand_in_cap_minor=0)
    row = await db.fetchrow("SELECT request_sequence, request_amount, request_approved,"
                            " request_reason, request_counted FROM authorizations WHERE id = $1",
                            first)
    assert row is not None and tuple(row) == (0, 700, 700, "approved", False)
    assert await db.fetchval("SELECT count(*) FROM followup_requests WHERE authorization_id = $1",
                             first) == 1
    history = await db.fetch("SELECT id, kind, amount, decision, approved_amount, decided_at"
                             " FROM authorization_requests WHERE authorization_id = $1"
                             " ORDER BY id NULLS FIRST", first)
    assert [(r["id"] is None, r["kind"], r["amount"], r["decision"]) for r in history] == [
        (True, "initial", 700, "approve"), (False, "incremental", 50, "approve")]
    assert history[0]["decided_at"] == NOW
    # its authorisation's requested amount grew with the incremental; the request's did not
    assert await db.fetchval("SELECT requested_amount FROM authorizations WHERE id = $1",
                             first) == 750
    # an initial request's identity and authorisation are its authorisation's
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
        await db.execute("UPDATE authorization_requests SET provider_id = 'other'"
                         " WHERE authorization_id = $1 AND kind = 'initial'", first)
