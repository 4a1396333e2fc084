"""The ledger gauges' figures (clearing/stats.py), read against the test database."""

from __future__ import annotations

import asyncpg

from clearing.stats import read_open_holds
from tests.support import Api


async def test_open_holds_count_and_amount_follow_approvals_and_reversals(
        api: Api, db: asyncpg.Pool) -> None:
    acct = await api.account("NOK", funds=100_000)
    card = await api.card(acct)
    before = (await read_open_holds(db)).get("NOK", (0, 0))

    for amount in (1_250, 399):
        assert (await api.authorize(card, amount, "NOK")).body["decision"] == "approve"
    declined = await api.authorize(card, 500_000, "NOK")
    assert declined.body["decision"] == "decline"

    count, amount = (await read_open_holds(db))["NOK"]
    assert (count - before[0], amount - before[1]) == (2, 1_649)


async def test_open_holds_read_a_page_at_a_time_add_up_to_one_count(
        api: Api, db: asyncpg.Pool) -> None:
    """Pages of two holds (closed ones among them: the reversed one) give the figures one
    statement over every open hold from the sweep's mark gives."""
    for currency in ("SEK", "DKK"):
        acct = await api.account(currency, funds=100_000)
        card = await api.card(acct)
        ids = [(await api.authorize(card, amount, currency)).body["id"]
               for amount in (100, 250, 400)]
        await db.fetchrow("SELECT * FROM hf_release($1, $2, NULL, $3, now())",
                          f"native:test-rev-{ids[1]}", ids[1], currency)
        assert await db.fetchval("SELECT state FROM holds WHERE id = $1", ids[1]) != "open"
    whole = {r["currency"]: (int(r["n"]), int(r["total"])) for r in await db.fetch(
        "SELECT currency, count(*) AS n, sum(remaining)::bigint AS total FROM holds"
        " WHERE state = 'open' AND expires_at >= (SELECT swept_to FROM hold_expiry_mark)"
        " GROUP BY currency")}

    paged = await read_open_holds(db, page_rows=2, duty=1.0)

    assert paged == whole
    assert all(paged[c][0] >= 2 and paged[c][1] >= 500 for c in ("SEK", "DKK"))
