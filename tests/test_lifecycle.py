"""After the decision: worked examples in scheme language, applied by the real consumer from the
real inbox, each ending with ``verify`` (conftest)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest

from clearing.consumer import Consumer, ConsumerConfig, requeue_quarantined
from clearing.sweep import _session, sweep
from holds.verify import verify
from tests.support import Api, FakeClock, auth_body, uid


@dataclass
class World:
    api: Api
    db: asyncpg.Pool
    consumer: Consumer
    clock: FakeClock

    async def event(self, type_: str, amount: int, authorization_id: str | None = None,
                    card_id: str | None = None, final: bool = False,
                    event_id: str | None = None, currency: str = "GBP") -> Any:
        body: dict[str, Any] = {"id": event_id or uid("evt"), "type": type_, "amount": amount,
                                "currency": currency, "final": final}
        if authorization_id:
            body["authorization_id"] = authorization_id
        if card_id:
            body["card_id"] = card_id
        raw = orjson.dumps(body)
        r = await self.api.raw("POST", "/v1/events", raw,
                               {"Holdfast-Signature": self.api.sign(raw)})
        assert r.status == 202, r.body
        return r.body

    async def consume(self) -> None:
        """Apply everything pending, including what was waiting for its authorisation."""
        await requeue_quarantined(self.db)
        while await self.consumer.run_batch():
            pass

    async def authorize(self, card: str, amount: int, **extra: Any) -> str:
        body = auth_body(card, amount, **extra)
        r = await self.api.authorize_raw(orjson.dumps(body))
        assert r.body["decision"] == "approve", r.body
        return str(r.body["id"])

    async def state(self, authorization_id: str) -> str:
        r = await self.api.admin("GET", f"/v1/authorizations/{authorization_id}")
        return str(r.body["state"])

    async def inbox_status(self, event_id: str) -> tuple[str, str | None]:
        row = await self.db.fetchrow(
            "SELECT status, quarantine_reason FROM inbox_events WHERE provider = 'native'"
            " AND provider_event_id = $1", event_id)
        assert row is not None
        return row["status"], row["quarantine_reason"]


@pytest.fixture
async def world(api: Api, db: asyncpg.Pool, clock: FakeClock) -> AsyncIterator[World]:
    consumer = Consumer(db, ConsumerConfig(batch_size=500), clock=clock)
    yield World(api, db, consumer, clock)


async def funded_card(w: World, funds: int = 10_000) -> tuple[str, str]:
    account = await w.api.account("GBP", funds=funds)
    return account, await w.api.card(account)


async def test_auth_partial_reversal_then_final_clearing(world: World) -> None:
    """auth 250, partial reversal 100, clearing 150 -> posted 150, held 0."""
    account, card = await funded_card(world)
    auth = await world.authorize(card, 250)
    await world.event("authorization.reversal", 100, auth)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 10_000, "held": 150,
                                                 "available": 9_850}
    assert await world.state(auth) == "partially_reversed"
    await world.event("authorization.clearing", 150, auth, final=True)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_850, "held": 0, "available": 9_850}
    r = await world.api.admin("GET", f"/v1/authorizations/{auth}")
    assert (r.body["state"], r.body["cleared_amount"], r.body["reversed_amount"]) == (
        "cleared", 150, 100)


async def test_restaurant_tip_clears_above_the_hold(world: World) -> None:
    """auth 50 at a restaurant, clearing 60 (tip) -> posted 60, flagged as over the hold."""
    account, card = await funded_card(world)
    auth = await world.authorize(card, 50, merchant={"mcc": "5812"})
    await world.event("authorization.clearing", 60, auth, final=True)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_940, "held": 0, "available": 9_940}
    hold = await world.db.fetchrow("SELECT posted, over_posted, state FROM holds WHERE id = $1",
                                   auth)
    assert hold is not None and tuple(hold) == (60, 10, "closed")
    forced = await world.db.fetchval(
        "SELECT t.forced FROM ledger_operations o JOIN ledger_transactions t"
        " ON t.id = o.transaction_id WHERE o.authorization_id = $1", auth)
    assert forced is True


async def test_split_shipment_two_clearings(world: World) -> None:
    """auth 100, clearings 40 then 60 (final) -> posted 100, held 0."""
    account, card = await funded_card(world)
    auth = await world.authorize(card, 100)
    await world.event("authorization.clearing", 40, auth)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_960, "held": 60, "available": 9_900}
    assert await world.state(auth) == "pending"
    await world.event("authorization.clearing", 60, auth, final=True)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_900, "held": 0, "available": 9_900}
    assert await world.state(auth) == "cleared"


async def test_final_clearing_below_the_hold_releases_the_rest(world: World) -> None:
    """auth 100 (fuel pre-auth), clearing 37 final -> posted 37, the other 63 released."""
    account, card = await funded_card(world)
    auth = await world.authorize(card, 100, merchant={"mcc": "5542"})
    await world.event("authorization.clearing", 37, auth, final=True)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_963, "held": 0, "available": 9_963}


async def test_clearing_before_its_authorisation_waits_for_it(world: World) -> None:
    account, card = await funded_card(world)
    body = auth_body(card, 300)
    clearing = await world.event("authorization.clearing", 300, body["id"], final=True)
    await world.consume()
    assert await world.inbox_status(clearing["id"]) == ("quarantined", "unknown_authorization")
    r = await world.api.authorize_raw(orjson.dumps(body))
    assert r.body["decision"] == "approve"
    await world.consume()
    assert await world.inbox_status(clearing["id"]) == ("applied", None)
    assert await world.api.balances(account) == {"posted": 9_700, "held": 0, "available": 9_700}


async def test_duplicate_clearing_posts_once(world: World) -> None:
    account, card = await funded_card(world)
    auth = await world.authorize(card, 500)
    event_id = uid("evt")
    first = await world.event("authorization.clearing", 500, auth, final=True, event_id=event_id)
    again = await world.event("authorization.clearing", 500, auth, final=True, event_id=event_id)
    assert (first["status"], again["status"]) == ("accepted", "duplicate")
    await world.consume()
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_500, "held": 0, "available": 9_500}
    assert await world.db.fetchval(
        "SELECT count(*) FROM ledger_operations WHERE authorization_id = $1", auth) == 1


async def test_hold_expires_after_seven_days_and_a_late_clearing_still_posts(
    world: World, clock: FakeClock,
) -> None:
    """auth expires after 7 days, clearing arrives on day 9 -> posted anyway, flagged."""
    account, card = await funded_card(world)
    start = dt.datetime(2027, 5, 1, 12, 0, tzinfo=dt.UTC)
    clock.set(start.timestamp())
    auth = await world.authorize(card, 800)
    lodging = await world.authorize(card, 1_000, merchant={"mcc": "7011"})
    day8 = start + dt.timedelta(days=8)
    result = await sweep(world.db, day8, batch_size=2)
    assert result.holds >= 1
    assert await world.state(auth) == "expired"
    assert await world.state(lodging) == "pending"  # lodging holds live 30 days
    assert await world.api.balances(account) == {"posted": 10_000, "held": 1_000,
                                                 "available": 9_000}
    clock.set((start + dt.timedelta(days=9)).timestamp())
    await world.event("authorization.clearing", 800, auth, final=True)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 9_200, "held": 1_000,
                                                 "available": 8_200}
    assert await world.state(auth) == "cleared"
    # sweeping again changes nothing
    again = await sweep(world.db, day8, batch_size=100)
    assert await world.api.balances(account) == {"posted": 9_200, "held": 1_000,
                                                 "available": 8_200}
    assert again.holds == 0 or await world.state(lodging) == "pending"


async def test_a_paced_sweep_releases_every_due_hold_and_a_late_reversal_changes_nothing(
    world: World, clock: FakeClock,
) -> None:
    """Three holds expire under a sweep working half the time (duty 50 %, small batches); the
    sweep records the expiry on the hold only, yet the authorisation reads 'expired' and the
    lifecycle treats it so: a reversal arriving afterwards releases nothing and moves nothing."""
    account, card = await funded_card(world)
    start = dt.datetime(2027, 6, 1, 9, 0, tzinfo=dt.UTC)
    clock.set(start.timestamp())
    auths = [await world.authorize(card, amount) for amount in (100, 200, 300)]
    stored = await world.db.fetch(
        "SELECT state FROM authorizations WHERE id = ANY($1::text[])", auths)

    result = await sweep(world.db, start + dt.timedelta(days=8), batch_size=50, duty=0.5)

    assert result.holds >= 3
    assert [await world.state(a) for a in auths] == ["expired"] * 3
    assert [r["state"] for r in await world.db.fetch(
        "SELECT state FROM authorizations WHERE id = ANY($1::text[])", auths)] == [
        r["state"] for r in stored]  # one row per hold written, not two
    assert await world.api.balances(account) == {"posted": 10_000, "held": 0,
                                                 "available": 10_000}
    await world.event("authorization.reversal", 100, auths[0])
    await world.consume()
    assert await world.state(auths[0]) == "expired"
    assert await world.api.balances(account) == {"posted": 10_000, "held": 0,
                                                 "available": 10_000}


async def test_a_sweep_batches_due_holds_by_account_across_windows(
    world: World, clock: FakeClock,
) -> None:
    """Twelve holds on three cardholders fall due in turn (A, B, C, A, B, C, ...). Read six at a
    time (two of each) and cut into batches of two grouped by account, every expiry transaction
    touches one account (taken in the order due, each would touch two); every due hold is
    released once, the lodging hold within its 30 days stays, a hold cleared before the sweep is
    left alone."""
    start = dt.datetime(2027, 7, 1, 8, 0, tzinfo=dt.UTC)
    # the session's ledger is shared: holds other tests left open and due by then are swept
    # first, so the figures below are this test's (run after some tests, 21 more were counted)
    await sweep(world.db, start + dt.timedelta(days=8))
    holders = [await funded_card(world) for _ in range(3)]
    due: dict[str, str] = {}  # authorisation -> account
    for i in range(4):
        for account, card in holders:
            clock.set((start + dt.timedelta(minutes=len(due))).timestamp())
            due[await world.authorize(card, 100 + i)] = account
    lodging = await world.authorize(holders[0][1], 5_000, merchant={"mcc": "7011"})
    cleared = await world.authorize(holders[1][1], 700)
    await world.event("authorization.clearing", 700, cleared, final=True)
    await world.consume()

    result = await sweep(world.db, start + dt.timedelta(days=8), batch_size=2, window=6)

    assert (result.holds, result.amount_minor) == (12, 3 * (100 + 101 + 102 + 103))
    assert [await world.state(a) for a in due] == ["expired"] * 12
    assert await world.state(lodging) == "pending"
    assert await world.state(cleared) == "cleared"
    assert [await world.api.balances(a) for a, _ in holders] == [
        {"posted": 10_000, "held": 5_000, "available": 5_000},
        {"posted": 9_300, "held": 0, "available": 9_300},
        {"posted": 10_000, "held": 0, "available": 10_000}]
    # holds expired by one transaction share its xmin (a hold is its authorisation's row)
    batches = await world.db.fetch(
        "SELECT xmin::text AS tx, count(*) AS holds, count(DISTINCT account_id) AS accounts"
        "  FROM authorizations WHERE id = ANY($1::text[]) GROUP BY 1", list(due))
    assert sorted((b["holds"], b["accounts"]) for b in batches) == [(2, 1)] * 6
    assert (await sweep(world.db, start + dt.timedelta(days=8))).holds == 0


async def test_expiring_a_stale_list_of_holds_changes_nothing(
    world: World, clock: FakeClock,
) -> None:
    """The sweep's window may be stale by the time a batch runs: a hold closed meanwhile, one not
    due at the batch's time, an id that does not exist are all skipped, nothing moves."""
    account, card = await funded_card(world)
    start = dt.datetime(2027, 8, 1, 8, 0, tzinfo=dt.UTC)
    clock.set(start.timestamp())
    closed = await world.authorize(card, 300)
    await world.event("authorization.reversal", 300, closed)
    await world.consume()
    live = await world.authorize(card, 400)

    row = await world.db.fetchrow("SELECT * FROM hf_expire_holds($1, $2)",
                                  start + dt.timedelta(days=1), [closed, live, "no-such-hold"])
    assert row is not None

    assert (row["holds_expired"], row["amount_released"]) == (0, 0)
    assert await world.state(closed) == "reversed"
    assert await world.state(live) == "pending"
    assert await world.api.balances(account) == {"posted": 10_000, "held": 400,
                                                 "available": 9_600}


async def test_a_batch_that_updates_fewer_holds_than_it_locked_releases_nothing(
    world: World, clock: FakeClock,
) -> None:
    """A batch locks its due holds, then updates them by their rows' addresses (migration
    0013). Should the update ever miss a locked hold, the batch counts it and aborts whole: no
    hold expires and the account's held amount does not move. The miss is forced here by a
    trigger that skips one row's update."""
    account, card = await funded_card(world)
    start = dt.datetime(2027, 8, 15, 8, 0, tzinfo=dt.UTC)
    clock.set(start.timestamp())
    kept, skipped = await world.authorize(card, 250), await world.authorize(card, 350)
    await world.db.execute("""
        CREATE FUNCTION test_skip_one_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RETURN CASE WHEN NEW.id = current_setting('test.skip_update', true)
                        THEN NULL ELSE NEW END;
        END $$;
        CREATE TRIGGER test_skip_one_update BEFORE UPDATE ON authorizations
            FOR EACH ROW EXECUTE FUNCTION test_skip_one_update();
    """)
    try:
        async with world.db.acquire() as conn:
            with pytest.raises(asyncpg.InternalServerError, match="locked 2 due holds, updated 1"):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('test.skip_update', $1, true)",
                                       skipped)
                    await conn.fetchrow("SELECT * FROM hf_expire_holds($1, $2)",
                                        start + dt.timedelta(days=8), [kept, skipped])
    finally:
        await world.db.execute("DROP TRIGGER test_skip_one_update ON authorizations;"
                               " DROP FUNCTION test_skip_one_update()")
    assert [await world.state(a) for a in (kept, skipped)] == ["pending", "pending"]
    assert await world.api.balances(account) == {"posted": 10_000, "held": 600,
                                                 "available": 9_400}
    # without the trigger the same batch expires both
    row = await world.db.fetchrow("SELECT * FROM hf_expire_holds($1, $2)",
                                  start + dt.timedelta(days=8), [kept, skipped])
    assert row is not None and tuple(row) == (2, 600)


async def test_the_sweep_writes_back_as_it_goes_and_leaves_its_connection_as_it_was(
    database_url: str,
) -> None:
    """The sweep's session hands its writes to the disk every 2 MB (backend_flush_after),
    commits without waiting for the disk and compresses its full-page images (a superuser may)
    while it works, and a pooled connection comes back with the server's settings."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    names = ("backend_flush_after", "synchronous_commit", "wal_compression")
    try:
        defaults = [await pool.fetchval(f"SHOW {n}") for n in names]
        async with _session(pool) as conn:
            flush, sync, compression = [await conn.fetchval(f"SHOW {n}") for n in names]
        assert (flush, sync) == ("2MB", "off")
        assert compression in ({"lz4", "pglz"} if defaults[2] == "off" else {defaults[2]})
        await sweep(pool, dt.datetime.now(dt.UTC))
        assert [await pool.fetchval(f"SHOW {n}") for n in names] == defaults
    finally:
        await pool.close()


async def test_a_role_that_may_not_compress_wal_sweeps_without_it(
    database_url: str, world: World, clock: FakeClock,
) -> None:
    """Not every deployment's role may change wal_compression (a superuser's setting): the
    sweep then runs without it and still expires what is due."""
    role = uid("hf_sweeper").replace("-", "_")
    _, card = await funded_card(world)
    start = dt.datetime(2027, 9, 1, 9, 0, tzinfo=dt.UTC)
    clock.set(start.timestamp())
    auth = await world.authorize(card, 300)
    await world.db.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
    try:
        await world.db.execute(
            f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{role}"')
        base, _, rest = database_url.partition("//")
        conn = await asyncpg.connect(f"{base}//{role}@{rest.partition('@')[2]}")
        try:
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles"
                                           " WHERE rolname = current_user")
            server_default = await conn.fetchval("SHOW wal_compression")
            async with _session(conn) as same:
                assert await same.fetchval("SHOW wal_compression") == server_default
                assert await same.fetchval("SHOW synchronous_commit") == "off"
            result = await sweep(conn, start + dt.timedelta(days=8))
        finally:
            await conn.close()
    finally:
        await world.db.execute(f'DROP OWNED BY "{role}"')
        await world.db.execute(f'DROP ROLE "{role}"')
    assert result.holds >= 1
    assert await world.state(auth) == "expired"


async def _mark(db: asyncpg.Pool) -> dt.datetime:
    mark: dt.datetime = await db.fetchval("SELECT swept_to FROM hold_expiry_mark")
    return mark


async def _expiry(db: asyncpg.Pool, hold: str) -> dt.datetime:
    expires: dt.datetime = await db.fetchval("SELECT expires_at FROM holds WHERE id = $1", hold)
    return expires


async def test_a_hold_placed_already_due_expires_from_the_database_clock(
    world: World, clock: FakeClock,
) -> None:
    """A hold whose window ended before it was placed (the processor's clock, a late advice)
    expires no earlier than the database's clock when it was placed, so it is never below the
    sweep's low-water mark; the next sweep expires it."""
    account, card = await funded_card(world)
    clock.set(dt.datetime(2020, 3, 1, 12, 0, tzinfo=dt.UTC).timestamp())
    db_before = await world.db.fetchval("SELECT clock_timestamp()")
    auth = await world.authorize(card, 400)
    advice = uid("advice")
    await world.event("authorization.advice", 250, advice, card_id=card)
    await world.consume()
    for hold in (auth, advice):
        assert await _expiry(world.db, hold) >= db_before  # not 2020-03-08
        assert await _expiry(world.db, hold) >= await _mark(world.db)

    await sweep(world.db, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))

    assert [await world.state(a) for a in (auth, advice)] == ["expired", "expired"]
    assert await world.api.balances(account) == {"posted": 10_000, "held": 0,
                                                 "available": 10_000}


async def test_the_mark_stays_below_a_due_hold_another_writer_has_and_rises_once_it_is_gone(
    world: World, clock: FakeClock, database_url: str,
) -> None:
    """The sweep reads from its low-water mark; a due hold it cannot take (another transaction
    holds its row) stays open, and the mark the pass leaves is not past it, so the next sweep
    reads it again and expires it. A pass cut short by max_batches leaves the mark alone."""
    _, card = await funded_card(world)
    # the session's ledger is shared: what other tests left due is swept first
    await sweep(world.db, dt.datetime.now(dt.UTC))
    clock.set(dt.datetime(2020, 4, 1, 12, 0, tzinfo=dt.UTC).timestamp())
    first, held, other, third = [await world.authorize(card, amount)
                                 for amount in (50, 100, 200, 300)]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    before = await _mark(world.db)

    partial = await sweep(world.db, soon, batch_size=1, max_batches=1)
    assert (partial.batches, await world.state(first)) == (1, "expired")  # due first
    assert await _mark(world.db) == before

    locker = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM authorizations WHERE id = $1 FOR UPDATE", held)
            await sweep(world.db, soon, batch_size=1)
        assert await world.state(held) == "pending"
        assert [await world.state(a) for a in (other, third)] == ["expired", "expired"]
        assert before <= await _mark(world.db) <= await _expiry(world.db, held)
    finally:
        await locker.close()

    await sweep(world.db, soon)

    assert await world.state(held) == "expired"
    assert await _mark(world.db) > await _expiry(world.db, held)


async def test_the_mark_rises_after_each_window_the_sweep_finishes(
    world: World, clock: FakeClock,
) -> None:
    """Four holds fall due in turn; read two at a time and cut short in the second window, the
    pass leaves the mark at the first window's last hold (everything before it is expired), not
    where it began and not past the hold it did not reach. The next sweep finishes the job."""
    _, card = await funded_card(world)
    await sweep(world.db, dt.datetime.now(dt.UTC))  # what other tests left due
    holds = []
    for minute in range(4):
        clock.set(dt.datetime(2020, 5, 1, 12, minute, tzinfo=dt.UTC).timestamp())
        holds.append(await world.authorize(card, 100 + minute))
    expiries = [await _expiry(world.db, h) for h in holds]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    before = await _mark(world.db)
    assert before <= expiries[0]

    cut = await sweep(world.db, soon, batch_size=1, window=2, max_batches=3)

    assert cut.batches == 3
    assert [await world.state(h) for h in holds] == ["expired"] * 3 + ["pending"]
    assert await _mark(world.db) == expiries[1]
    async with world.db.acquire() as conn:
        assert (await verify(conn)).ok
    await sweep(world.db, soon)
    assert await world.state(holds[3]) == "expired"
    assert await _mark(world.db) > expiries[3]


async def test_a_pass_begins_after_the_writers_placing_soon_due_holds(
    world: World, database_url: str,
) -> None:
    """A writer placing a hold due within a day gets an expiry no earlier than its clock and
    holds a share lock on the mark's row until it commits; a sweep's pass begins only then, so
    it reads that hold."""
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            floored = await writer.fetchval(
                "SELECT hf_hold_expiry_floor_at(now() - interval '1 hour')")
            assert floored >= await writer.fetchval("SELECT now()")
            pending = asyncio.ensure_future(sweep(world.db, dt.datetime.now(dt.UTC)))
            await asyncio.sleep(0.3)
            assert not pending.done()  # waiting on the writer
        await asyncio.wait_for(pending, 10)
    finally:
        await writer.close()


async def test_verify_finds_an_open_hold_below_the_sweeps_mark(world: World) -> None:
    """The mark is an invariant: an open hold expiring before it would never be swept."""
    _, card = await funded_card(world)
    auth = await world.authorize(card, 100)
    before = await _mark(world.db)
    await world.db.execute("UPDATE hold_expiry_mark SET swept_to = $1",
                           await _expiry(world.db, auth) + dt.timedelta(seconds=1))
    try:
        async with world.db.acquire() as conn:
            report = await verify(conn)
    finally:
        await world.db.execute("UPDATE hold_expiry_mark SET swept_to = $1", before)
    assert not report.ok
    assert any(auth in line for line in report.render().splitlines() if "expiry_mark" in line)


async def test_expiring_a_hold_is_a_heap_only_update(world: World, clock: FakeClock) -> None:
    """No index names a hold's state (the sweep reads every hold's expiry from its mark), so
    expiring one writes no index entry: PostgreSQL counts the update as heap-only."""
    _, card = await funded_card(world)
    start = dt.datetime(2027, 10, 1, 9, 0, tzinfo=dt.UTC)
    clock.set(start.timestamp())
    auth = await world.authorize(card, 100)
    updates = ("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
               " WHERE relname = 'authorizations'")
    async with world.db.acquire() as conn, conn.transaction():
        # this backend's counts not yet reported are in the view too: count the difference
        before = await conn.fetchrow(updates)
        row = await conn.fetchrow("SELECT * FROM hf_expire_holds($1, $2)",
                                  start + dt.timedelta(days=8), [auth])
        after = await conn.fetchrow(updates)
    assert row is not None and row["holds_expired"] == 1
    assert before is not None and after is not None
    assert (after["n_tup_upd"] - before["n_tup_upd"],
            after["n_tup_hot_upd"] - before["n_tup_hot_upd"]) == (1, 1)


async def test_a_sweep_must_work_some_of_the_time(db: asyncpg.Pool) -> None:
    for duty in (0, 1.5):
        with pytest.raises(ValueError, match="duty"):
            await sweep(db, dt.datetime.now(dt.UTC), duty=duty)


async def test_refund_after_clearing(world: World) -> None:
    account, card = await funded_card(world)
    auth = await world.authorize(card, 2_000)
    await world.event("authorization.clearing", 2_000, auth, final=True)
    await world.event("refund", 500, auth)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 8_500, "held": 0, "available": 8_500}
    assert await world.state(auth) == "cleared"


async def test_refund_without_authorisation_credits_the_card(world: World) -> None:
    account, card = await funded_card(world)
    await world.event("refund", 700, card_id=card)
    await world.consume()
    assert (await world.api.balances(account))["posted"] == 10_700


async def test_chargeback_won_keeps_the_provisional_credit(world: World) -> None:
    account, card = await funded_card(world)
    auth = await world.authorize(card, 1_200)
    await world.event("authorization.clearing", 1_200, auth, final=True)
    await world.event("chargeback", 1_200, auth)
    await world.consume()
    assert (await world.api.balances(account))["posted"] == 10_000
    dispute = await world.db.fetchval("SELECT state FROM disputes WHERE authorization_id = $1",
                                      auth)
    assert dispute == "provisional_credit"
    await world.event("chargeback.won", 1_200, auth)
    await world.consume()
    assert (await world.api.balances(account))["posted"] == 10_000
    assert await world.db.fetchval(
        "SELECT state FROM disputes WHERE authorization_id = $1", auth) == "won"


async def test_chargeback_lost_takes_the_credit_back(world: World) -> None:
    account, card = await funded_card(world)
    auth = await world.authorize(card, 1_200)
    await world.event("authorization.clearing", 1_200, auth, final=True)
    await world.event("chargeback", 1_200, auth)
    await world.consume()
    await world.event("chargeback.reversal", 1_200, auth)
    await world.consume()
    assert (await world.api.balances(account))["posted"] == 8_800
    assert await world.db.fetchval(
        "SELECT state FROM disputes WHERE authorization_id = $1", auth) == "lost"


async def test_dispute_events_out_of_order_are_quarantined(world: World) -> None:
    _, card = await funded_card(world)
    auth = await world.authorize(card, 100)
    won = await world.event("chargeback.won", 100, auth)
    await world.consume()
    status, reason = await world.inbox_status(won["id"])
    assert status == "quarantined" and reason and "cannot take chargeback.won" in reason


async def test_full_reversal_releases_everything(world: World) -> None:
    account, card = await funded_card(world)
    auth = await world.authorize(card, 900)
    await world.event("authorization.reversal", 900, auth)
    await world.event("authorization.reversal", 50, auth)  # nothing left: recorded, no effect
    await world.consume()
    assert await world.api.balances(account) == {"posted": 10_000, "held": 0,
                                                 "available": 10_000}
    assert await world.state(auth) == "reversed"


async def test_force_post_without_authorisation(world: World) -> None:
    account, card = await funded_card(world, funds=100)
    await world.event("authorization.clearing", 400, card_id=card, final=True)
    await world.consume()
    # a force post is a network fact: posted even beyond the balance, and flagged
    assert await world.api.balances(account) == {"posted": -300, "held": 0, "available": -300}


async def test_advice_holds_even_beyond_funds(world: World) -> None:
    account, card = await funded_card(world, funds=100)
    auth_id = uid("advice")
    await world.event("authorization.advice", 250, auth_id, card_id=card)
    await world.consume()
    assert await world.api.balances(account) == {"posted": 100, "held": 250, "available": -150}
    await world.event("authorization.clearing", 250, auth_id, final=True)
    await world.consume()
    assert await world.api.balances(account) == {"posted": -150, "held": 0, "available": -150}


async def test_clearing_of_a_declined_authorisation_is_a_force_post(world: World) -> None:
    account, card = await funded_card(world, funds=100)
    body = auth_body(card, 500)
    r = await world.api.authorize_raw(orjson.dumps(body))
    assert r.body["reason"] == "insufficient_funds"
    await world.event("authorization.clearing", 500, body["id"], final=True)
    await world.consume()
    assert (await world.api.balances(account))["posted"] == -400
    assert await world.state(body["id"]) == "declined"


async def test_wrong_currency_is_quarantined_and_changes_nothing(world: World) -> None:
    account, card = await funded_card(world)
    auth = await world.authorize(card, 100)
    ev = await world.event("authorization.clearing", 100, auth, final=True, currency="EUR")
    await world.consume()
    assert await world.inbox_status(ev["id"]) == ("quarantined", "currency_mismatch")
    assert await world.api.balances(account) == {"posted": 10_000, "held": 100,
                                                 "available": 9_900}


async def test_two_consumers_apply_each_event_exactly_once(world: World) -> None:
    account, card = await funded_card(world, funds=1_000_000)
    auths = [await world.authorize(card, 1_000) for _ in range(20)]
    for auth in auths:
        await world.event("authorization.clearing", 400, auth)
        await world.event("authorization.reversal", 100, auth)
        await world.event("authorization.clearing", 500, auth, final=True)
    other = Consumer(world.db, ConsumerConfig(batch_size=500), clock=world.clock)

    async def drain(c: Consumer) -> int:
        total = 0
        while n := await c.run_batch():
            total += n
        return total

    done = await asyncio.gather(drain(world.consumer), drain(other))
    assert sum(done) >= 60
    assert await world.db.fetchval(
        "SELECT count(*) FROM ledger_operations WHERE authorization_id = ANY($1)", auths) == 60
    assert await world.api.balances(account) == {"posted": 1_000_000 - 20 * 900, "held": 0,
                                                 "available": 1_000_000 - 20 * 900}


async def test_authorisation_shows_its_whole_history(world: World) -> None:
    _, card = await funded_card(world)
    auth = await world.authorize(card, 400)
    await world.authorize(card, 100, parent_id=auth)
    await world.event("authorization.clearing", 450, auth, final=True)
    await world.consume()
    r = await world.api.admin("GET", f"/v1/authorizations/{auth}")
    assert [h["kind"] for h in r.body["history"]] == ["initial", "incremental"]
    assert [e["kind"] for e in r.body["events"]] == ["post"]
    assert (r.body["approved_amount"], r.body["cleared_amount"], r.body["reversed_amount"],
            r.body["held_amount"], r.body["state"]) == (500, 450, 50, 0, "cleared")


async def test_operators_list_and_retry_quarantined_events(world: World) -> None:
    _, card = await funded_card(world)
    body = auth_body(card, 300)
    ev = await world.event("authorization.clearing", 300, body["id"], final=True)
    await world.consume()
    r = await world.api.admin("GET", "/v1/events/quarantined", scope="ops")
    assert r.status == 200
    listed = {e["event_id"]: e for e in r.body["events"]}
    while r.body["next_after"]:
        r = await world.api.admin("GET", f"/v1/events/quarantined?after={r.body['next_after']}",
                                  scope="ops")
        listed |= {e["event_id"]: e for e in r.body["events"]}
    entry = listed[ev["id"]]
    assert entry["reason"] == "unknown_authorization"
    path = f"/v1/events/{entry['inbox_id']}/retry"
    assert (await world.api.admin("GET", "/v1/events/quarantined", scope="customer")).status == 403
    assert (await world.api.admin("POST", path, scope="support")).status == 403
    r = await world.api.admin("POST", path, scope="ops")
    assert (r.status, r.body["status"]) == (202, "pending")
    r = await world.api.admin("POST", path, scope="ops")
    assert (r.status, r.body["error"]["code"]) == (404, "not_quarantined")
    assert await world.inbox_status(ev["id"]) == ("pending", "unknown_authorization")
