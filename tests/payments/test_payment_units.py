"""Pure parts of payments: IBANs, normalisation and masking, the bank's name matching, the state
table, reconciliation matching and statement parsing, cursors, settings."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from authz.settings import SettingsError, parse_fees
from clearing.payments.credits import reference_candidates
from clearing.payments.iban import gb_iban, iban_check_digits, is_valid_iban, normalise_iban
from clearing.payments.model import (
    InvalidPayment,
    mask_account,
    mask_name,
    name_key,
    new_id,
    normalise_reference,
    parse_beneficiary,
)
from clearing.payments.outbox import OutboxConfig, backoff_s
from clearing.payments.statements import InvalidCursor, decode_cursor, encode_cursor
from clearing.payments.states import (
    BANK_FACTS,
    PAYMENT_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalPaymentTransition,
    could_apply_later,
    next_transition,
)
from clearing.reconcile import LedgerEntry, StatementError, StatementLine, match, parse_statement
from clearing.sandbox.bank import compare_names
from policies.pan import mask_pans

VALID_IBANS = ("GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
               "NL91ABNA0417164300", "BE68539007547034")


@pytest.mark.parametrize("iban", VALID_IBANS)
def test_known_ibans_are_valid(iban: str) -> None:
    assert is_valid_iban(iban)
    assert iban_check_digits(iban[:2], iban[4:]) == iban[2:4]


def test_iban_refusals() -> None:
    assert not is_valid_iban("GB83WEST12345698765432")  # check digits
    assert not is_valid_iban("GB82WEST1234569876543")  # length
    assert not is_valid_iban("gb82west12345698765432")  # not normalised
    assert normalise_iban("gb82 west 1234 5698 7654 32") == "GB82WEST12345698765432"
    assert gb_iban("WEST", "123456", "98765432") == "GB82WEST12345698765432"
    with pytest.raises(ValueError, match="bank code"):
        gb_iban("west", "123456", "98765432")


async def test_the_sql_twin_agrees(db: asyncpg.Pool) -> None:
    samples = [*VALID_IBANS, "GB83WEST12345698765432", "DE88370400440532013000", "XX"]
    rows = await db.fetch("SELECT s, hf_iban_valid(s) AS ok FROM unnest($1::text[]) s", samples)
    assert {r["s"]: r["ok"] for r in rows} == {s: is_valid_iban(s) for s in samples}


def test_normalising_and_masking() -> None:
    assert normalise_reference(" hf-k7m2 qx. ") == "HFK7M2QX"
    assert normalise_reference("\uff28\uff26\uff11\uff12") == "HF12"  # full-width forms fold
    assert name_key("  Zoë  O'Brien-Smith ") == "zoe o brien smith"
    assert mask_name("Jane Smith") == "J*** S****"
    assert mask_account("12345678") == "****5678"
    assert reference_candidates("pay HF-ABC 234 and hfzzz") == ["HFABC234"]
    for _ in range(200):
        value = new_id("x")
        assert mask_pans(value) == value and len(value) == 34


def test_beneficiary_forms() -> None:
    b = parse_beneficiary({"name": " Jane Smith ", "sort_code": "20-00-00",
                           "account_number": "12345678"})
    assert (b.name, b.sort_code, b.identifier) == ("Jane Smith", "200000", "GB:200000/12345678")
    i = parse_beneficiary({"name": "Jan", "iban": "de89 3704 0044 0532 0130 00"})
    assert i.identifier == "DE89370400440532013000" and not i.domestic
    with pytest.raises(InvalidPayment) as exc:
        parse_beneficiary({"name": "Jan", "iban": "DE00370400440532013000"})
    assert exc.value.code == "invalid_iban"


@pytest.mark.parametrize(("given", "holder", "verdict"), [
    ("Jane Smith", "Jane Smith", "match"),
    ("JANE  smith.", "Jane Smith", "match"),
    ("Smith Jane", "Jane Smith", "close_match"),
    ("J Smith", "Jane Smith", "close_match"),
    ("Jane Smyth", "Jane Smith", "close_match"),
    ("Alice Cooper", "Robert Jones", "no_match"),
])
def test_the_sandbox_banks_name_matching(given: str, holder: str, verdict: str) -> None:
    assert compare_names(given, holder) == verdict


def test_the_state_table_is_closed_and_terminal_states_stay() -> None:
    for (state, _), (target, _) in TRANSITIONS.items():
        assert state in PAYMENT_STATES and target in PAYMENT_STATES
    for (state, event), (target, effect) in TRANSITIONS.items():
        if state in TERMINAL_STATES:
            assert target == state and effect is None, (state, event)
    # nothing the bank says can move a payment it was never sent
    for state in ("checking_payee", "pending_confirmation", "blocked", "cancelled"):
        for fact in BANK_FACTS:
            assert (state, fact) not in TRANSITIONS
    with pytest.raises(IllegalPaymentTransition):
        next_transition("rejected", "settled")


@pytest.mark.parametrize(("state", "fact", "later"), [
    ("queued", "returned", True),  # the settlement has not arrived yet
    ("submitted", "returned", True),
    ("rejected", "settled", False),  # contradicts the history
    ("settled", "rejected", False),
    ("checking_payee", "settled", False),  # never sent
    ("pending_confirmation", "accepted", False),
])
def test_which_illegal_facts_may_become_legal(state: str, fact: str, later: bool) -> None:
    assert could_apply_later(state, fact) is later


def test_backoff_grows_and_is_capped() -> None:
    config = OutboxConfig(backoff_base_s=1, backoff_max_s=10)
    assert [backoff_s(config, n) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 8, 10, 10]


def test_cursors_round_trip_and_refuse_forgeries() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    for bad in ("", "abc", encode_cursor(1)[:-1] + "!", "ZTE6LTE", "ZTE6wrI"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


def test_fees_setting() -> None:
    assert parse_fees("GBP:25, EUR:0") == {"GBP": 25, "EUR": 0}
    for bad in ("GBP:2.5", "XXX:1", "GBP", "GBP:-1"):
        with pytest.raises(SettingsError):
            parse_fees(bad)


DAY = dt.date(2030, 5, 6)


def _s(pid: str | None, amount: int, ref: str | None = None) -> StatementLine:
    return StatementLine(pid, DAY, amount, "GBP", ref)


def _l(pid: str | None, amount: int, ref: str | None = None) -> LedgerEntry:
    return LedgerEntry(pid, DAY, amount, "GBP", ref, f"ledger-{pid}")


def test_matching_by_id_then_by_terms() -> None:
    items = match(
        [_s("a", -100), _s("b", -200), _s(None, 300, "Gift HF2"), _s("x", 5), _s("d", 7)],
        [_l("a", -100), _l("b", -250), _l("c", 300, "gift-hf2"), _l("e", 9), _l("d", 7)])
    got = sorted((i.kind, i.matched_by, i.provider_id) for i in items)
    assert got == [("amount_break", "provider_id", "b"),
                   ("matched", "amount_date_reference", None),
                   ("matched", "provider_id", "a"), ("matched", "provider_id", "d"),
                   ("missing_in_ledger", None, "x"), ("missing_in_statement", None, "e")]


@pytest.mark.parametrize(("text", "fmt", "line"), [
    ("provider_id,date,amount,currency\nx,2030-01-01,12.50,GBP\n", "csv", 2),
    ("provider_id,date,amount,currency\nx,2030-13-01,12,GBP\n", "csv", 2),
    ("provider_id,amount,currency\nx,12,GBP\n", "csv", 1),
    ('{"date":"2030-01-01","amount":1,"currency":"GBP"}\n[1]\n', "jsonl", 2),
    ('{"date":"2030-01-01","amount":1.0,"currency":"GBP"}\n', "jsonl", 1),
    ('{"date":"2030-01-01","amount":0,"currency":"GBP"}\n', "jsonl", 1),
])
def test_a_bad_statement_names_its_first_bad_line(text: str, fmt: str, line: int) -> None:
    with pytest.raises(StatementError) as exc:
        parse_statement(text, "csv" if fmt == "csv" else "jsonl")
    assert exc.value.line == line
