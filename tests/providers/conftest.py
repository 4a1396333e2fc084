"""Every provider test runs with log capture on and ends by checking that nothing it logged
contains a card number."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.providers.support import Providers, card_numbers
from tests.support import Api


@pytest.fixture
def providers(api: Api) -> Providers:
    return Providers(api)


@pytest.fixture(autouse=True)
def _no_card_number_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="holdfast")
    caplog.set_level(logging.INFO)
    yield
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert not card_numbers(text), f"{record.name} logged a card number"
