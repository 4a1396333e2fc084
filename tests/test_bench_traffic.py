"""benchmarks/traffic.py: a company's cards on one funding account, for the benchmarks that ask
for it (``--cards-per-account``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.traffic import profile, share_accounts


@pytest.fixture(autouse=True)
def _one_card_per_account_after() -> Iterator[None]:
    yield
    share_accounts(1)


def test_each_card_has_its_own_account_by_default() -> None:
    accounts = {profile(i).account_id for i in range(200)}
    assert len(accounts) == 200


def test_shared_cards_draw_on_one_account_of_their_own_currency() -> None:
    share_accounts(10)
    cards = [profile(i) for i in range(200)]
    by_account: dict[str, set[str]] = {}
    for p in cards:
        by_account.setdefault(p.account_id, set()).add(p.currency)
    # one currency to an account; a group of ten cards spans at most its three currencies
    assert all(len(currencies) == 1 for currencies in by_account.values())
    assert 20 <= len(by_account) <= 60
    # the first group's GBP cards are one account, the next group's another
    first = {p.account_id for p in cards[:10] if p.currency == "GBP"}
    second = {p.account_id for p in cards[10:20] if p.currency == "GBP"}
    assert len(first) == len(second) == 1 and first != second
    with pytest.raises(ValueError):
        share_accounts(0)
