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
