"""Concurrency scenarios in card language, on real Redis and PostgreSQL: many authorisations at
once on one account, retry storms, incrementals racing new authorisations, one id reused with
other bodies, and velocity limits under a burst. Every test checks the HTTP answers and the
database; conftest then proves the ledger's invariants (``verify``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import orjson
import pytest

from authz.app import AUTHORIZER
from authz.batcher import LedgerBatcher
from holds import ledger
from tests.support import Api, Reply, Server, auth_body, uid


async def burst(api: Api, bodies: list[dict[str, Any]]) -> list[Reply]:
    """Send every body at once; the answers come back in the order of ``bodies``."""
    replies = await asyncio.gather(*(api.authorize_raw(orjson.dumps(b)) for b in bodies))
    for r in replies:
        assert r.status == 200, r.body
    return list(replies)


def outcomes(replies: list[Reply]) -> Counter[tuple[str, str, str]]:
    return Counter((r.body["decision"], r.body["reason"], r.body["code"]) for r in replies)


async def open_holds(db: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    """(number of open holds, their total remaining) on an account."""
    row = await db.fetchrow(
        "SELECT count(*), coalesce(sum(remaining), 0) FROM holds"
        " WHERE account_id = $1 AND state = 'open'", account_id)
    assert row is not None
    return int(row[0]), int(row[1])


async def account_row(db: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    row = await db.fetchrow("SELECT posted, held FROM accounts WHERE id = $1", account_id)
    assert row is not None
    return int(row["posted"]), int(row["held"])


@pytest.mark.parametrize("cards", [1, 8], ids=["one_card", "eight_cards"])
async def test_200_at_once_on_10000_approve_exactly_100(api: Api, db: asyncpg.Pool,
                                                        cards: int) -> None:
    """Account 10,000; 200 authorisations of 100 arrive together → 100 approved, 100 declined
    insufficient funds, nothing overspent."""
    acct = await api.account("GBP", funds=10_000)
    card_ids = [await api.card(acct) for _ in range(cards)]
    bodies = [auth_body(card_ids[i % cards], 100) for i in range(200)]

    replies = await burst(api, bodies)

    assert outcomes(replies) == {
        ("approve", "approved", "00"): 100,
        ("decline", "insufficient_funds", "51"): 100,
    }
    approved = [r for r in replies if r.body["decision"] == "approve"]
    assert all(r.body["approved_amount"] == 100 for r in approved)
    assert all(r.body["approved_amount"] == 0 for r in replies
               if r.body["decision"] == "decline")
    assert await api.balances(acct) == {"posted": 10_000, "held": 10_000, "available": 0}

    # the database holds exactly the approvals the cards were told about
    assert await account_row(db, acct) == (10_000, 10_000)
    assert await open_holds(db, acct) == (100, 10_000)
    held_ids = {r["id"] for r in await db.fetch(
        "SELECT id FROM holds WHERE account_id = $1", acct)}
    assert held_ids == {r.body["id"] for r in approved}
    states = Counter(r["state"] for r in await db.fetch(
        "SELECT state FROM authorizations WHERE account_id = $1", acct))
    assert states == {"pending": 100, "declined": 100}


@pytest.mark.parametrize(("funds", "expected"), [
    (10_000, ("approve", 2_500, "approved", "00")),
    (1_000, ("decline", 0, "insufficient_funds", "51")),
], ids=["approved", "declined"])
async def test_retry_storm_is_decided_once(api: Api, db: asyncpg.Pool, funds: int,
                                           expected: tuple[str, int, str, str]) -> None:
    """The processor times out and sends the very same signed request 50 times at once: one
    decision, one hold at most, 50 identical answers."""
    acct = await api.account("GBP", funds=funds)
    card = await api.card(acct)
    body = auth_body(card, 2_500)
    raw = orjson.dumps(body)
    signature = api.sign(raw)

    replies = await asyncio.gather(*(api.authorize_raw(raw, signature) for _ in range(50)))

    assert {r.status for r in replies} == {200}
    assert all(r.body == replies[0].body for r in replies), {orjson.dumps(r.body)
                                                             for r in replies}
    first = replies[0].body
    assert (first["decision"], first["approved_amount"], first["reason"], first["code"]) == (
        expected)
    assert first["id"] == body["id"]

    approved = expected[1]
    assert await api.balances(acct) == {
        "posted": funds, "held": approved, "available": funds - approved}
    assert await db.fetchval(
        "SELECT count(*) FROM authorization_requests WHERE provider_id = $1", body["id"]) == 1
    holds = await db.fetch("SELECT authorized, remaining FROM holds WHERE id = $1", body["id"])
    assert [(h["authorized"], h["remaining"]) for h in holds] == (
        [(approved, approved)] if approved else [])


async def test_incrementals_race_new_authorisations_without_overspending(
        api: Api, db: asyncpg.Pool) -> None:
    """Hotel check-in holds 1,000 of 10,000; then 30 incrementals of 200 on that stay race 30
    new authorisations of 200 on the same account (another card): exactly 45 fit."""
    acct = await api.account("GBP", funds=10_000)
    hotel_card, other_card = await api.card(acct), await api.card(acct)
    lodging = {"mcc": "7011"}
    stay = await api.authorize(hotel_card, 1_000, merchant=lodging)
    assert stay.body["decision"] == "approve"
    parent = stay.body["id"]

    incrementals = [auth_body(hotel_card, 200, parent_id=parent, merchant=lodging)
                    for _ in range(30)]
    fresh = [auth_body(other_card, 200) for _ in range(30)]
    bodies = [b for pair in zip(incrementals, fresh, strict=True) for b in pair]

    replies = await burst(api, bodies)

    assert outcomes(replies) == {
        ("approve", "approved", "00"): 45,
        ("decline", "insufficient_funds", "51"): 15,
    }
    inc_replies = [r for r, b in zip(replies, bodies, strict=True) if b.get("parent_id")]
    assert {r.body["authorization_id"] for r in inc_replies} == {parent}
    inc_approved = sum(r.body["approved_amount"] for r in inc_replies)
    all_approved = 1_000 + sum(r.body["approved_amount"] for r in replies)
    assert all_approved == 10_000

    assert await api.balances(acct) == {"posted": 10_000, "held": 10_000, "available": 0}
    hold = await db.fetchrow("SELECT authorized, remaining FROM holds WHERE id = $1", parent)
    assert hold is not None
    assert (hold["authorized"], hold["remaining"]) == (1_000 + inc_approved, 1_000 + inc_approved)
    auth = await db.fetchrow(
        "SELECT requested_amount, approved_amount, state FROM authorizations WHERE id = $1",
        parent)
    assert auth is not None
    assert (auth["requested_amount"], auth["approved_amount"], auth["state"]) == (
        1_000 + 30 * 200, 1_000 + inc_approved, "pending")
    assert await db.fetchval(
        "SELECT count(*) FROM authorization_requests WHERE authorization_id = $1"
        " AND kind = 'incremental'", parent) == 30
    assert await open_holds(db, acct) == (1 + (45 - inc_approved // 200), 10_000)


@pytest.mark.parametrize("spread", ["one_card", "cards_of_one_account", "cards_of_many_accounts"])
async def test_one_id_with_different_bodies_at_once_records_one(api: Api, db: asyncpg.Pool,
                                                                spread: str) -> None:
    """A broken processor reuses one authorisation id for 20 different requests at the same
    time: one is decided, every other is answered duplicate (94) and changes nothing."""
    accounts = [await api.account("GBP", funds=100_000)
                for _ in range(4 if spread == "cards_of_many_accounts" else 1)]
    cards = ([await api.card(accounts[0])] if spread == "one_card"
             else [await api.card(accounts[i % len(accounts)]) for i in range(4)])
    shared_id = uid("auth")
    bodies = [auth_body(cards[i % len(cards)], 100 * (i + 1), id=shared_id) for i in range(20)]

    replies = await burst(api, bodies)

    recorded = [(r, b) for r, b in zip(replies, bodies, strict=True)
                if r.body["reason"] != "duplicate"]
    assert len(recorded) == 1, [r.body for r in replies]
    winner_reply, winner = recorded[0]
    assert (winner_reply.body["decision"], winner_reply.body["approved_amount"]) == (
        "approve", winner["amount"])
    assert outcomes(replies)[("decline", "duplicate", "94")] == 19
    assert all(r.body["approved_amount"] == 0 for r in replies if r is not winner_reply)

    rows = await db.fetch(
        "SELECT a.card_id, r.amount, r.approved_amount FROM authorization_requests r"
        " JOIN authorizations a ON a.id = r.authorization_id WHERE r.provider_id = $1",
        shared_id)
    assert [(r["card_id"], r["amount"], r["approved_amount"]) for r in rows] == [
        (winner["card_id"], winner["amount"], winner["amount"])]
    winner_account = await db.fetchval("SELECT account_id FROM cards WHERE id = $1",
                                       winner["card_id"])
    for acct in accounts:
        held = winner["amount"] if acct == winner_account else 0
        assert await api.balances(acct) == {
            "posted": 100_000, "held": held, "available": 100_000 - held}


async def test_velocity_count_limit_holds_under_a_burst(api: Api, db: asyncpg.Pool) -> None:
    """Ten authorisations an hour, plenty of money, 40 at once → exactly 10 approved."""
    acct = await api.account("GBP", funds=1_000_000)
    card = await api.card(acct, {"velocity": [{"window": "1h", "max_count": 10}]})
    bodies = [auth_body(card, 100) for _ in range(40)]

    replies = await burst(api, bodies)

    assert outcomes(replies) == {
        ("approve", "approved", "00"): 10,
        ("decline", "count_limit_exceeded", "65"): 30,
    }
    assert await api.balances(acct) == {"posted": 1_000_000, "held": 1_000, "available": 999_000}
    assert await account_row(db, acct) == (1_000_000, 1_000)
    assert await open_holds(db, acct) == (10, 1_000)
    # the limit is spent: the 41st is declined too
    assert (await api.authorize(card, 100)).body["reason"] == "count_limit_exceeded"


async def retry_overtakes_original(api: Api, raw: bytes, monkeypatch: pytest.MonkeyPatch
                                   ) -> tuple[Reply, Reply]:
    """Send ``raw``, then its retry while the first attempt is between Redis and PostgreSQL, and
    let the retry reach the ledger first. Returns (first attempt's reply, retry's reply).

    The first attempt is held back before it reaches the ledger batcher, not inside its ledger
    call: one batcher defers a request whose card is in a call still running, so within one
    process a retry can no longer overtake a call already sent. Across server processes
    (``--workers``), or when the first attempt is slow to reach the batcher, it can."""
    real_submit = LedgerBatcher.submit
    original_counted = asyncio.Event()
    retry_recorded = asyncio.Event()
    held: set[asyncio.Task[None]] = set()

    def retry_first(self: LedgerBatcher, item: ledger.AuthorizeItem, deadline: float
                    ) -> asyncio.Future[ledger.AuthorizeResult]:
        if item.counters is None:  # the retry: a duplicate to Redis, which counted nothing
            future = real_submit(self, item, deadline)
            future.add_done_callback(lambda _: retry_recorded.set())
            return future
        # the attempt that counted (Redis hands counters only to it): hold it back until the
        # retry has been recorded, then send it on
        original_counted.set()
        outer: asyncio.Future[ledger.AuthorizeResult] = (
            asyncio.get_running_loop().create_future())

        async def later() -> None:
            try:
                async with asyncio.timeout(5):
                    await retry_recorded.wait()
                result = await real_submit(self, item, deadline)
            except Exception as exc:  # handed to the waiting request, as the batcher would
                if not outer.done():
                    outer.set_exception(exc)
                return
            if not outer.done():
                outer.set_result(result)

        task = asyncio.create_task(later())
        held.add(task)
        task.add_done_callback(held.discard)
        return outer

    monkeypatch.setattr(LedgerBatcher, "submit", retry_first)  # what the hot path calls
    try:
        original = asyncio.create_task(api.authorize_raw(raw))
        async with asyncio.timeout(5):
            await original_counted.wait()
        retry = await api.authorize_raw(raw)
        first = await original
    finally:
        monkeypatch.undo()
    assert first.body == retry.body
    return first, retry


async def test_an_approval_recorded_by_an_overtaking_retry_still_counts(
        api: Api, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """One authorisation an hour. The processor retries while the first attempt is still on
    its way to the ledger, and the retry is recorded first. The card has had its one approval
    this hour, so the next purchase must be declined."""
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct, {"velocity": [{"window": "1h", "max_count": 1}]})

    first, _ = await retry_overtakes_original(
        api, orjson.dumps(auth_body(card, 100)), monkeypatch)

    assert first.body["decision"] == "approve"
    await server.app[AUTHORIZER].drain()  # give-backs run off the response path
    assert (await api.balances(acct))["held"] == 100
    r = await api.authorize(card, 100)
    assert (r.body["decision"], r.body["reason"]) == ("decline", "count_limit_exceeded")


async def test_a_decline_recorded_by_an_overtaking_retry_is_given_back_once(
        api: Api, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two authorisations an hour, 1,000 in the account. 500 is approved (1 of 2). A 5,000
    purchase is declined for funds, its retry overtaking the first attempt: the decline gives
    its count back once, so one more purchase fits this hour and the one after does not."""
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct, {"velocity": [{"window": "1h", "max_count": 2}]})
    assert (await api.authorize(card, 500)).body["decision"] == "approve"

    first, _ = await retry_overtakes_original(
        api, orjson.dumps(auth_body(card, 5_000)), monkeypatch)

    assert first.body["reason"] == "insufficient_funds"
    await server.app[AUTHORIZER].drain()
    assert (await api.authorize(card, 100)).body["decision"] == "approve"
    r = await api.authorize(card, 100)
    assert (r.body["decision"], r.body["reason"]) == ("decline", "count_limit_exceeded")
