"""benchmarks/gauge_cost.py: the pagings it compares, as the command line names them."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.gauge_cost import Paging, _options, parse_paging
from clearing import stats


def test_a_paging_is_rows_and_duty_or_none() -> None:
    assert parse_paging("1000:0.25") == Paging(1_000, 0.25)
    assert parse_paging("10000") == Paging(10_000, 0.5)
    assert parse_paging("none") == Paging(0, 1.0)
    assert parse_paging("none").label == "no count"
    assert parse_paging("1000:0.25").label == "pages of 1,000, duty 0.25"


@pytest.mark.parametrize("text", ["", "x", "1000:", "0:0.5", "-5:0.5", "1000:0", "1000:1.5",
                                  "1000:abc"])
def test_a_paging_it_cannot_run_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_paging(text)


def test_without_pagings_it_compares_none_the_old_and_the_servers_own() -> None:
    assert _options([]).paging == [Paging(0, 1.0), Paging(10_000, 0.5),
                                   Paging(stats.PAGE_ROWS, stats.DUTY)]
    assert _options(["--paging", "500:0.1"]).paging == [Paging(500, 0.1)]
