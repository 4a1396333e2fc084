"""The ledger gauges' figures (clearing/stats.py), read against the test database."""

from __future__ import annotations

import asyncpg

from clearing.stats import read_open_holds
from tests.support import Api


async def test_open_holds_agree_with_the_accounts_held_balances(api: Api, db: asyncpg.Pool
                                                                ) -> None:
    acct = await api.account("EUR", funds=10_000)
    card = await api.card(acct)
    for amount in (1_250, 399):
        assert (await api.authorize(card, amount, "EUR")).body["decision"] == "approve"

    holds = await read_open_holds(db)

    held = {r["currency"]: int(r["held"]) for r in await db.fetch(
        "SELECT currency, sum(held) AS held FROM accounts GROUP BY currency HAVING sum(held) > 0")}
    assert {c: amount for c, (_, amount) in holds.items()} == held
    count, amount = holds["EUR"]
    assert count >= 2 and amount >= 1_649

