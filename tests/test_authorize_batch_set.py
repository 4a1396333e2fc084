"""hf_authorize_batch (migrations 0015, 0016) decides a batch's new requests in memory and writes
them with one statement per table, then its incrementals one by one; hf_authorize_batch_each
(0007's loop of hf_authorize, in arrival order) is the reference. The server sends a batch as one
array of hf_authorize_request records (0016); 0015's signature, an array per column, still answers
(for a server of the previous release) and some batches go through it. Random batches over
accounts and cards of every kind the rules distinguish, incrementals among them, go through both
against the same data (the reference's run rolled back, its batch in the order the set path
decides: new requests first); the answers and every row they write must be the same. Then: the
order an incremental is decided in, and two requests of one identity in one batch."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from holds import ledger
from holds.db import Conn
from tests.support import Api, uid

_COLUMNS_CALL = (
    "SELECT idx, status, authorization_id, decision, approved_amount, reason, stand_in, counted"
    " FROM {fn}($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb[],$13,$14,$15,$16,$17,$18,$19,"
    "$20,$21,$22,$23)")
_SET, _SET_BY_COLUMNS, _REFERENCE = (
    "hf_authorize_batch", "hf_authorize_batch (columns)", "hf_authorize_batch_each")
_CAP = 5_000
_RULE_REASONS = [None] * 8 + ["not_permitted", "amount_limit_exceeded", "count_limit_exceeded",
                              "suspected_fraud"]


async def _call(conn: Conn, fn: str, items: Sequence[ledger.AuthorizeItem]
                ) -> list[tuple[Any, ...]]:
    if fn == _SET:
        rows = await conn.fetch(ledger.AUTHORIZE_BATCH_SQL, items, _CAP)
    else:  # 0015's signature of hf_authorize_batch, or the reference
        columns: list[Any] = [list(c) for c in zip(*items, strict=True)]
        call = _COLUMNS_CALL.format(fn=fn.split(maxsplit=1)[0])
        rows = await conn.fetch(call, *columns[:21], _CAP, columns[21])
    return [tuple(r) for r in rows]


async def _rows(conn: Conn, items: Sequence[ledger.AuthorizeItem],
                accounts: Sequence[str]) -> dict[str, Any]:
    """What a call wrote: the batch's authorisations and requests (but the follow-up requests'
    generated ids, which a rolled-back run uses up; an initial request has none), and the
    accounts."""
    ids = [i.authorization_id for i in items] + [i.parent_id for i in items if i.parent_id]
    auths = await conn.fetch(
        "SELECT * FROM authorizations WHERE id = ANY($1::text[]) ORDER BY id", ids)
    requests = await conn.fetch(
        "SELECT * FROM authorization_requests WHERE (provider, provider_id, sequence) IN"
        " (SELECT * FROM unnest($1::text[], $2::text[], $3::integer[]))"
        " ORDER BY provider, provider_id, sequence",
        [i.provider for i in items], [i.provider_id for i in items],
        [i.sequence for i in items])
    accts = await conn.fetch(
        "SELECT id, posted, held, updated_at FROM accounts WHERE id = ANY($1::text[])"
        " ORDER BY id", list(accounts))
    return {
        "authorizations": [dict(r) for r in auths],
        "requests": [{k: v for k, v in dict(r).items() if k != "id"} for r in requests],
        "accounts": [dict(r) for r in accts],
    }


async def _both(conn: Conn, items: Sequence[ledger.AuthorizeItem],
                accounts: Sequence[str], via: str = _SET) -> list[tuple[Any, ...]]:
    """Run the batch through the reference (rolled back), then through hf_authorize_batch
    (committed; ``via`` one of its two signatures); assert the same answers and rows, and return
    the answers (in batch order)."""
    order = sorted(range(len(items)), key=lambda i: (items[i].parent_id is not None, i))
    tx = conn.transaction()
    await tx.start()
    reordered = await _call(conn, _REFERENCE, [items[i] for i in order])
    expected_rows = await _rows(conn, items, accounts)
    await tx.rollback()
    # the reference's answers under the batch's own positions
    expected = sorted((order[row[0] - 1] + 1, *row[1:]) for row in reordered)
    async with conn.transaction():
        got = sorted(await _call(conn, via, items))
        got_rows = await _rows(conn, items, accounts)
    assert got == expected
    assert got_rows == expected_rows
    return got


class _World:
    """Accounts and cards of every kind hf_authorize's rules tell apart."""

    def __init__(self, api: Api, conn: Conn, rng: random.Random) -> None:
        self.api, self.conn, self.rng = api, conn, rng
        self.accounts: list[str] = []
        self.cards: list[tuple[str, str]] = []  # (card id, its account's currency)
        self.recorded: list[ledger.AuthorizeItem] = []
        self.held: list[ledger.AuthorizeItem] = []  # recorded approvals: holds to raise
        self.sequences: dict[str, int] = {}  # the last sequence used on each authorisation
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    async def build(self) -> None:
        for currency, funds, overdraft in [("GBP", 3_000, 0), ("GBP", 500, 1_000),
                                           ("GBP", 0, 0), ("EUR", 10_000, 0),
                                           ("GBP", 50_000, 0)]:
            acct = await self.api.account(currency, funds=funds, overdraft=overdraft)
            self.accounts.append(acct)
            for state in ("active", "active", "frozen"):
                card = await self.api.card(acct, state=state)
                self.cards.append((card, currency))
            for change in ("state = 'terminated'", "expires = '2020-01'"):
                card = await self.api.card(acct)
                await self.conn.execute(f"UPDATE cards SET {change} WHERE id = $1", card)
                self.cards.append((card, currency))
        self.cards.append((uid("card-nobody"), "GBP"))

    def item(self, **over: Any) -> ledger.AuthorizeItem:
        rng = self.rng
        request_id = uid("set")
        card, currency = rng.choice(self.cards) if self.cards else ("", "GBP")
        stand_in = rng.random() < 0.15
        expires = self.now + (dt.timedelta(hours=6) if rng.random() < 0.2
                              else dt.timedelta(days=7))
        fields: dict[str, Any] = dict(
            provider=rng.choice(["native", "lithic"]), provider_id=request_id, sequence=0,
            authorization_id=f"native:{request_id}", parent_id=None, card_id=card,
            amount_minor=rng.choice([1, 99, 250, 700, 1_200, 4_000, 6_000]),
            currency=currency if rng.random() < 0.9 else "USD",
            partial_allowed=rng.random() < 0.5, rule_reason=rng.choice(_RULE_REASONS),
            policy_version=rng.choice([None, 1, 3]),
            counters=rng.choice([None, '{"count_1d": 2}']),
            request_hash=f"h-{request_id}", now=self.now, hold_expires=expires,
            merchant_id="m-7", merchant_name="Night Bus Kiosk", mcc="4111", country="GB",
            channel=rng.choice(["pos", "ecommerce"]), stand_in=stand_in,
            counted=rng.random() < 0.8)
        fields.update(over)
        return ledger.AuthorizeItem(**fields)

    def plain(self, card: str, amount: int, **over: Any) -> ledger.AuthorizeItem:
        """A request on a GBP card that every rule in Redis passed."""
        return self.item(card_id=card, currency="GBP", rule_reason=None, stand_in=False,
                         amount_minor=amount, **over)

    def incremental(self, parent: ledger.AuthorizeItem) -> ledger.AuthorizeItem:
        """A raise of ``parent``'s hold: Lithic's way (its id, the next sequence) or the
        native API's (a request of its own naming the parent); sometimes on another card."""
        card = parent.card_id if self.rng.random() < 0.85 else self.rng.choice(self.cards)[0]
        common = dict(card_id=card, currency=parent.currency, parent_id=parent.authorization_id,
                      amount_minor=self.rng.choice([50, 300, 900, 2_500]))
        if self.rng.random() < 0.5:
            self.sequences[parent.authorization_id] = seq = (
                self.sequences.get(parent.authorization_id, 0) + 1)
            return self.item(provider=parent.provider, provider_id=parent.provider_id,
                             sequence=seq, authorization_id=parent.authorization_id, **common)
        return self.item(provider=parent.provider, **common)

    def batch(self, size: int) -> list[ledger.AuthorizeItem]:
        items = []
        for _ in range(size):
            roll = self.rng.random()
            if self.held and roll < 0.08:  # an incremental
                items.append(self.incremental(self.rng.choice(self.held)))
            elif roll < 0.1:  # an incremental naming no authorisation
                items.append(self.item(parent_id=uid("native:nobody")))
            elif self.recorded and roll < 0.15:
                # a retry of a recorded request, maybe with Redis down where it was up (or the
                # reverse): the answer is the recorded one
                prior = self.rng.choice(self.recorded)
                if self.rng.random() < 0.5:
                    prior = prior._replace(stand_in=not prior.stand_in,
                                           counted=not prior.counted)
                items.append(prior)
            elif self.recorded and roll < 0.2:  # its identity again with another body
                prior = self.rng.choice(self.recorded)
                items.append(prior._replace(request_hash=prior.request_hash + "-changed"))
            elif self.recorded and roll < 0.25:  # a new request taking a recorded id
                prior = self.rng.choice(self.recorded)
                items.append(self.item(authorization_id=prior.authorization_id))
            else:
                items.append(self.item())
        # one identity once per batch (see test_two_requests_of_one_identity_in_a_batch...)
        seen: set[tuple[str, str, int]] = set()
        unique: list[ledger.AuthorizeItem] = []
        for i in items:
            key = (i.provider, i.provider_id, i.sequence)
            if key not in seen and i.authorization_id not in {u.authorization_id for u in unique}:
                seen.add(key)
                unique.append(i)
        return unique


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_batches_decide_and_write_as_the_loop_does(
        api: Api, db: asyncpg.Pool, seed: int) -> None:
    async with db.acquire() as conn:
        world = _World(api, conn, random.Random(seed))
        await world.build()
        reasons: set[str] = set()
        statuses: set[str] = set()
        raised: set[str] = set()  # the incrementals' answers
        for n, size in enumerate([1, 2, 3, 5, 8, 13, 21, 34] * 3):
            items = world.batch(size)
            answers = await _both(conn, items, world.accounts,
                                  via=_SET_BY_COLUMNS if n % 4 == 3 else _SET)
            reasons.update(a[5] for a in answers)
            statuses.update(a[1] for a in answers)
            raised.update(a[5] for i, a in zip(items, answers, strict=True) if i.parent_id)
            world.recorded += [i for i, a in zip(items, answers, strict=True) if a[1] == "new"]
            world.held += [i for i, a in zip(items, answers, strict=True)
                           if a[1] == "new" and a[4] > 0 and not i.parent_id]
    # the batches reached every rule and every kind of answer
    assert statuses == {"new", "replay", "conflict"}
    assert {"approved", "do_not_honor"} <= raised
    assert {"approved", "partial_approval", "insufficient_funds", "invalid_card",
            "card_restricted", "card_expired", "do_not_honor", "amount_limit_exceeded",
            "duplicate", "not_permitted"} <= reasons


async def test_many_requests_on_one_account_see_each_others_holds(
        api: Api, db: asyncpg.Pool) -> None:
    """Forty requests on one account of 3,000 (overdraft 1,000) in one batch, partials among
    them: each sees the holds of those before it, as one by one."""
    async with db.acquire() as conn:
        world = _World(api, conn, random.Random(7))
        acct = await api.account("GBP", funds=3_000, overdraft=1_000)
        card = await api.card(acct)
        items = [world.plain(card, world.rng.choice([150, 400, 900])) for _ in range(40)]
        answers = await _both(conn, items, [acct])
        approved = sum(a[4] for a in answers)
        assert approved == 4_000  # 3,000 + 1,000 overdraft, down to the last minor unit
        held = await conn.fetchval("SELECT held FROM accounts WHERE id = $1", acct)
        assert held == 4_000


async def _holding(api: Api, conn: Conn, seed: int, funds: int, hold: int
                   ) -> tuple[_World, str, str, ledger.AuthorizeItem]:
    """A world, a GBP account with ``funds`` and a card on it, and an approved ``hold`` on
    the card: (world, account, card, the hold's request)."""
    world = _World(api, conn, random.Random(seed))
    acct = await api.account("GBP", funds=funds)
    card = await api.card(acct)
    first = world.plain(card, hold)
    (answer,) = await _both(conn, [first], [acct])
    assert answer[5] == "approved"
    return world, acct, card, first


async def test_an_incremental_in_a_batch_raises_its_hold(api: Api, db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        world, acct, card, first = await _holding(api, conn, 11, funds=5_000, hold=1_000)
        incremental = world.plain(
            card, 500, provider=first.provider, provider_id=first.provider_id, sequence=1,
            parent_id=first.authorization_id, authorization_id=first.authorization_id)
        others = [world.plain(card, 800) for _ in range(3)]
        answers = await _both(conn, [others[0], incremental, *others[1:]], [acct])
        assert [a[5] for a in answers] == ["approved"] * 4
        row = await conn.fetchrow(
            "SELECT authorized, remaining FROM holds WHERE id = $1", first.authorization_id)
        assert row is not None and tuple(row) == (1_500, 1_500)
        assert await conn.fetchval("SELECT held FROM accounts WHERE id = $1", acct) == 3_900


async def test_a_batchs_incrementals_are_decided_after_its_new_requests(
        api: Api, db: asyncpg.Pool) -> None:
    """A hotel raises a 300 hold by 600 while the guest buys a 500 dinner on the same account
    of 1,000; both requests are in flight at once. Either order is a valid one; the batch
    decides new requests first: the dinner is approved and the raise declined."""
    async with db.acquire() as conn:
        world, acct, card, stay = await _holding(api, conn, 12, funds=1_000, hold=300)
        raise_ = world.plain(card, 600, parent_id=stay.authorization_id)
        dinner = world.plain(card, 500)

        answers = await _both(conn, [raise_, dinner], [acct])

        assert [(a[0], a[5]) for a in answers] == [(1, "insufficient_funds"), (2, "approved")]
        assert await conn.fetchval("SELECT held FROM accounts WHERE id = $1", acct) == 800


async def test_two_requests_of_one_identity_in_a_batch_fail_it_and_write_nothing(
        api: Api, db: asyncpg.Pool) -> None:
    """The set path cannot see a request that is not yet written: the batch fails whole (the
    batcher then decides its requests one at a time, tests/test_batcher.py)."""
    async with db.acquire() as conn:
        world = _World(api, conn, random.Random(13))
        acct = await api.account("GBP", funds=5_000)
        card = await api.card(acct)
        one = world.plain(card, 700)
        other = world.plain(card, 300)
        same_id = world.plain(card, 200, authorization_id=other.authorization_id)
        for batch in ([one, other, one], [one, other, same_id]):
            with pytest.raises(asyncpg.UniqueViolationError):
                await _call(conn, _SET, batch)
            assert await conn.fetchval("SELECT held FROM accounts WHERE id = $1", acct) == 0
            assert await conn.fetchval(
                "SELECT count(*) FROM authorizations WHERE card_id = $1", card) == 0


async def test_the_columns_signature_refuses_arrays_of_different_lengths(
        api: Api, db: asyncpg.Pool) -> None:
    """0015's signature, kept for a server of the previous release: its arrays become records
    row by row, so one array shorter than the others must fail the call, not pad it with NULL."""
    async with db.acquire() as conn:
        world = _World(api, conn, random.Random(14))
        acct = await api.account("GBP", funds=5_000)
        card = await api.card(acct)
        items = [world.plain(card, 700), world.plain(card, 300)]
        columns: list[Any] = [list(c) for c in zip(*items, strict=True)]
        columns[16] = columns[16][:1]  # one merchant name for two requests
        with pytest.raises(asyncpg.InvalidParameterValueError, match="different lengths"):
            await conn.fetch(_COLUMNS_CALL.format(fn="hf_authorize_batch"), *columns[:21],
                             _CAP, columns[21])
        assert await conn.fetchval("SELECT held FROM accounts WHERE id = $1", acct) == 0
