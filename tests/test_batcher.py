"""Group commit (authz/batcher.py): requests that queue behind a busy ledger are decided together
in one transaction, each exactly as a call of its own would decide it; a request that breaks its
batch is decided alone and does not take its neighbours with it; a request past its deadline is
not sent; a slot keeps its connection between calls, but never one that failed, and never so
many that the pool has none left. Against the test database, through the real
``hf_authorize_batch``."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from authz.app import create_pool
from authz.batcher import LedgerBatcher
from authz.metrics import Metrics
from authz.settings import Settings
from holds import ledger
from tests.support import Api, uid
from tests.test_concurrency import account_row, open_holds


def item(card_id: str, amount: int, currency: str = "GBP", *, request_id: str | None = None,
         parent_id: str | None = None, partial: bool = False) -> ledger.AuthorizeItem:
    request_id = request_id or uid("b")
    now = dt.datetime.now(dt.UTC)
    return ledger.AuthorizeItem(
        "native", request_id, 1 if parent_id else 0, f"native:{request_id}", parent_id,
        card_id, amount, currency, partial, None, 1, None, f"hash-{request_id}-{amount}", now,
        now + dt.timedelta(days=7), "m-1", "Corner Shop", "5411", "GB", "pos", False, False)


_made: list[LedgerBatcher] = []


def batcher(db: asyncpg.Pool, metrics: Metrics, *, inflight: int, max_batch: int = 64
            ) -> LedgerBatcher:
    b = LedgerBatcher(db, metrics, stand_in_cap_minor=10_000, max_batch=max_batch,
                      max_inflight=inflight)
    _made.append(b)
    return b


@pytest.fixture(autouse=True)
async def _close_batchers() -> AsyncIterator[None]:
    """A batcher keeps pooled connections until it is closed: a test that fails before its own
    close() must not leave them taken (the shared pool would never close)."""
    yield
    while _made:
        await _made.pop().close()


def backend_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, int]]:
    """Each ledger call's connection and its backend's pid, in call order."""
    seen: list[tuple[Any, int]] = []
    real = ledger.authorize_many

    async def spy(db_: Any, items: Sequence[ledger.AuthorizeItem], **kw: Any
                  ) -> list[ledger.AuthorizeResult]:
        seen.append((db_, await db_.fetchval("SELECT pg_backend_pid()")))
        return await real(db_, items, **kw)

    monkeypatch.setattr(ledger, "authorize_many", spy)
    return seen


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def submit_all(b: LedgerBatcher, items: Sequence[ledger.AuthorizeItem], timeout_s: float = 10
                     ) -> list[ledger.AuthorizeResult | BaseException]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    futures = [b.submit(i, deadline) for i in items]
    return list(await asyncio.gather(*futures, return_exceptions=True))


async def test_requests_queued_together_are_one_transaction_decided_in_arrival_order(
        api: Api, db: asyncpg.Pool) -> None:
    """A café's account holds 1,000; twelve 100s arrive together with one ledger slot: one call
    decides them all, the first ten approved and the last two declined for funds."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    metrics = Metrics()
    b = batcher(db, metrics, inflight=1)

    results = await submit_all(b, [item(card, 100) for _ in range(12)])

    assert [r.reason for r in results if isinstance(r, ledger.AuthorizeResult)] == (
        ["approved"] * 10 + ["insufficient_funds"] * 2)
    assert sample(metrics, "holdfast_pg_batch_size_count") == 1
    assert sample(metrics, "holdfast_pg_batch_size_sum") == 12
    assert await account_row(db, acct) == (1_000, 1_000)
    assert await open_holds(db, acct) == (10, 1_000)
    await b.close()


async def test_a_retry_queued_with_its_first_attempt_gets_the_same_answer_and_one_hold(
        api: Api, db: asyncpg.Pool) -> None:
    acct = await api.account("GBP", funds=5_000)
    card = await api.card(acct)
    first = item(card, 700)
    other = item(card, 300)
    metrics = Metrics()
    b = batcher(db, metrics, inflight=1)

    results = await submit_all(b, [first, first, other])

    # the retry waits for the next batch, where it finds the first one's row
    assert sample(metrics, "holdfast_pg_batch_size_count") == 2
    assert sample(metrics, "holdfast_pg_batch_size_sum") == 3
    assert sample(metrics, "holdfast_pg_batch_retries_total") == 0

    assert all(isinstance(r, ledger.AuthorizeResult) for r in results)
    a, retry, b2 = (r for r in results if isinstance(r, ledger.AuthorizeResult))
    assert (a.status, retry.status, b2.status) == ("new", "replay", "new")
    assert (retry.approved, retry.approved_amount_minor, retry.reason,
            retry.authorization_id) == (True, 700, "approved", a.authorization_id)
    assert await open_holds(db, acct) == (2, 1_000)
    await b.close()


async def test_an_incremental_after_its_parent_in_one_batch_raises_the_hold(
        api: Api, db: asyncpg.Pool) -> None:
    """A hotel: check-in 200, then +50 for the minibar, arriving together."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    b = batcher(db, Metrics(), inflight=1)
    parent = item(card, 200)
    first = await submit_all(b, [parent])
    assert isinstance(first[0], ledger.AuthorizeResult) and first[0].approved
    results = await submit_all(b, [
        item(card, 50, request_id=parent.provider_id, parent_id=parent.authorization_id),
        item(card, 100)])

    assert [(r.status, r.approved_amount_minor) for r in results
            if isinstance(r, ledger.AuthorizeResult)] == [("new", 50), ("new", 100)]
    hold = await db.fetchrow("SELECT authorized, remaining FROM holds WHERE id = $1",
                             parent.authorization_id)
    assert hold is not None and (hold["authorized"], hold["remaining"]) == (250, 250)
    assert await account_row(db, acct) == (1_000, 350)
    await b.close()


async def test_a_request_that_breaks_its_batch_does_not_take_its_neighbours_down(
        api: Api, db: asyncpg.Pool) -> None:
    """A four-letter currency gets past no entry point's validation, but if one did, the batch
    it is in fails in PostgreSQL: the batch is rolled back and its requests decided one by one,
    so only that request fails."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    metrics = Metrics()
    b = batcher(db, metrics, inflight=1)
    bad = item(card, 100, "GBPX")

    results = await submit_all(b, [item(card, 100), bad, item(card, 200)])

    assert isinstance(results[1], asyncpg.PostgresError)
    assert [(r.status, r.approved_amount_minor) for r in (results[0], results[2])
            if isinstance(r, ledger.AuthorizeResult)] == [("new", 100), ("new", 200)]
    assert sample(metrics, "holdfast_pg_batch_retries_total") == 1
    assert await db.fetchval("SELECT count(*) FROM authorizations WHERE id = $1",
                             bad.authorization_id) == 0
    assert await open_holds(db, acct) == (2, 300)
    await b.close()


async def test_a_request_past_its_deadline_is_not_sent(api: Api, db: asyncpg.Pool) -> None:
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    b = batcher(db, Metrics(), inflight=1)
    late = item(card, 100)
    on_time = item(card, 100)
    loop = asyncio.get_running_loop()

    late_future = b.submit(late, loop.time() - 0.001)
    on_time_future = b.submit(on_time, loop.time() + 10)

    with pytest.raises(TimeoutError):
        await late_future
    assert (await on_time_future).approved
    assert await db.fetchval("SELECT count(*) FROM authorization_requests WHERE provider_id = $1",
                             late.provider_id) == 0
    assert await open_holds(db, acct) == (1, 100)
    await b.close()


async def test_overlapping_batches_across_accounts_never_deadlock(
        api: Api, db: asyncpg.Pool) -> None:
    """Four slots, small batches, three cards on each of six accounts in random order,
    incrementals mixed in: batches that share accounts (through different cards: the batcher
    keeps one card out of two running calls) run at the same time. Every account locks in one
    order, so no batch waits on another in a cycle (a deadlock would show as a failed batch,
    retried)."""
    accounts = [await api.account("GBP", funds=10_000) for _ in range(6)]
    cards = [await api.card(a) for a in accounts for _ in range(3)]
    metrics = Metrics()
    b = batcher(db, metrics, inflight=4, max_batch=8)
    rng = random.Random(7)
    parents = [item(c, 100) for c in cards[::3]]
    assert all(isinstance(r, ledger.AuthorizeResult) and r.approved
               for r in await submit_all(b, parents))

    wave: list[ledger.AuthorizeItem] = []
    for _ in range(300):
        if rng.random() < 0.1:
            p = rng.choice(parents)
            wave.append(item(p.card_id, 10, request_id=p.provider_id + f"-{len(wave)}",
                             parent_id=p.authorization_id))
        else:
            wave.append(item(rng.choice(cards), rng.randint(1, 60)))
    deadline = asyncio.get_running_loop().time() + 20
    futures = []
    for i, it in enumerate(wave):
        futures.append(b.submit(it, deadline))
        if i % 5 == 4:
            await asyncio.sleep(0)  # let batches start while others queue
    results = await asyncio.gather(*futures, return_exceptions=True)

    failures = [r for r in results if not isinstance(r, ledger.AuthorizeResult)]
    assert failures == []
    assert sample(metrics, "holdfast_pg_batch_retries_total") == 0
    assert sample(metrics, "holdfast_pg_batch_size_count") > 4
    for acct in accounts:
        posted, held = await account_row(db, acct)
        count, remaining = await open_holds(db, acct)
        assert count > 1
        assert (posted, held) == (10_000, remaining)
    await b.close()


async def test_a_card_in_a_running_call_waits_for_the_next_one(
        api: Api, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coffee on card X is in a ledger call when a second coffee on X and a bus fare on card Y
    arrive, with a second slot free. The fare goes out at once; the second coffee does not join
    it, where it would wait for the first call's lock on X's account and hold the fare up with
    it: it goes in the next call, after the first has committed."""
    x_acct = await api.account("GBP", funds=1_000)
    x = await api.card(x_acct)
    y = await api.card(await api.account("GBP", funds=1_000))
    calls: list[list[str]] = []
    first_sent = asyncio.Event()
    release_first = asyncio.Event()
    real = ledger.authorize_many

    async def spy(db_: Any, items: Sequence[ledger.AuthorizeItem], **kw: Any
                  ) -> list[ledger.AuthorizeResult]:
        calls.append([i.provider_id for i in items])
        if len(calls) == 1:  # the first coffee's call: keep it running for a moment
            first_sent.set()
            await release_first.wait()
        return await real(db_, items, **kw)

    monkeypatch.setattr(ledger, "authorize_many", spy)
    metrics = Metrics()
    b = batcher(db, metrics, inflight=2)
    deadline = asyncio.get_running_loop().time() + 10
    coffee = item(x, 300, request_id=uid("coffee"))
    first = b.submit(coffee, deadline)
    await asyncio.wait_for(first_sent.wait(), 5)
    again, fare = item(x, 300, request_id=uid("coffee")), item(y, 250, request_id=uid("fare"))
    second, third = b.submit(again, deadline), b.submit(fare, deadline)
    assert (await asyncio.wait_for(third, 5)).approved  # the fare did not wait for the coffee
    assert not second.done()
    release_first.set()
    results = await asyncio.gather(first, second)

    assert calls == [[coffee.provider_id], [fare.provider_id], [again.provider_id]]
    assert [r.approved for r in results] == [True, True]
    assert sample(metrics, "holdfast_pg_batch_card_waits_total") == 1
    assert await account_row(db, x_acct) == (1_000, 600)
    await b.close()


async def test_a_pooled_connection_outlives_asyncpgs_query_limit(settings: Settings) -> None:
    """asyncpg would swap a pooled connection for a new, cold one after 50,000 queries (and close
    one idle for 300 s); the server's pool keeps its connections warm."""
    pool = await create_pool(settings, size=1)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            for _ in range(50_001):
                await conn.execute("SELECT 1")
        assert await pool.fetchval("SELECT pg_backend_pid()") == backend
    finally:
        await pool.close()


def _open(conn: Any) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # asyncpg gave the lost connection back to the pool
        return False


async def test_a_slot_keeps_its_connection_between_calls_and_gives_it_back_on_close(
        api: Api, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three coffees one after another: one connection carries all three calls (taking one from
    the pool and giving it back cost a call more than its own round trip); closing the batcher
    gives it back."""
    card = await api.card(await api.account("GBP", funds=1_000))
    seen = backend_spy(monkeypatch)
    b = batcher(db, Metrics(), inflight=1)
    idle_before = db.get_idle_size()
    for _ in range(3):
        (result,) = await submit_all(b, [item(card, 100)])
        assert isinstance(result, ledger.AuthorizeResult) and result.approved
    assert len({pid for _, pid in seen}) == 1
    assert db.get_idle_size() == idle_before - 1
    await b.close()
    assert db.get_idle_size() == idle_before


async def test_a_connection_lost_between_calls_is_replaced(
        api: Api, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept connection's backend is terminated (a failover, an operator) while no call is
    running: the next request goes out on a new connection and is approved."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    seen = backend_spy(monkeypatch)
    b = batcher(db, Metrics(), inflight=1)
    await submit_all(b, [item(card, 100)])
    kept, pid = seen[0]
    assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
    for _ in range(500):  # the client sees the socket close on its next read
        if not _open(kept):
            break
        await asyncio.sleep(0.01)
    assert not _open(kept)

    (result,) = await submit_all(b, [item(card, 100)])
    assert isinstance(result, ledger.AuthorizeResult) and result.approved
    assert seen[1][1] != pid
    assert await open_holds(db, acct) == (2, 200)


async def test_after_a_call_timed_out_the_next_is_decided_cleanly(
        api: Api, db: asyncpg.Pool, settings: Settings) -> None:
    """An account locked elsewhere (a slow settlement job) holds a call past its deadline: the
    call is cancelled in PostgreSQL (its connection goes back to the pool, which waits for the
    cancellation), and the next call, once the lock is gone, is decided as if the first had
    never been sent."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    b = batcher(db, Metrics(), inflight=1)
    first = item(card, 100)
    locker = await asyncpg.connect(settings.database_url)
    try:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", acct)
            (timed_out,) = await submit_all(b, [first], timeout_s=0.3)
            assert isinstance(timed_out, TimeoutError)
    finally:
        await locker.close()

    (result,) = await submit_all(b, [item(card, 250)])
    assert isinstance(result, ledger.AuthorizeResult) and result.approved
    assert await db.fetchval("SELECT count(*) FROM authorization_requests WHERE provider_id = $1",
                             first.provider_id) == 0
    assert await open_holds(db, acct) == (1, 250)


async def test_a_small_pool_keeps_connections_for_its_other_users(
        api: Api, settings: Settings) -> None:
    """Four ledger slots on a pool of four, eight cardholders at once (so all four slots run):
    after the burst the batcher keeps two idle at most, so a cache miss's read-through or a
    management route still finds one at once."""
    cards = [await api.card(await api.account("GBP", funds=100_000)) for _ in range(8)]
    pool = await create_pool(settings, size=4)
    metrics = Metrics()
    b = batcher(pool, metrics, inflight=4, max_batch=2)
    try:
        results = await submit_all(b, [item(cards[i % 8], 10) for i in range(40)])
        assert sample(metrics, "holdfast_pg_batch_size_count") >= 8  # batches, not one queue
        assert all(isinstance(r, ledger.AuthorizeResult) and r.approved for r in results)
        async with asyncio.timeout(1):
            async with pool.acquire() as c1, pool.acquire() as c2:
                assert await c1.fetchval("SELECT 1") == await c2.fetchval("SELECT 1") == 1
    finally:
        await b.close()  # before the pool: it waits for every connection to come back
        await pool.close()
