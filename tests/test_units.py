"""Pure pieces: money, card states, policy parsing, hold windows, card-number masking,
signatures, settings."""

from __future__ import annotations

import datetime as dt

import pytest

from authz.errors import Unauthorized
from authz.hotpath import month_of
from authz.settings import Secret, Settings, SettingsError, hash_token, parse_admin_tokens
from authz.signatures import sign_native, verify_native
from holds.model import CURRENCY_EXPONENTS, currency_exponent, hold_window_s
from policies.model import Policy, PolicyError, Reason, VelocityWindow
from policies.pan import luhn_valid, mask_pans, scrub
from policies.states import IllegalTransition, next_state


def test_currency_exponents() -> None:
    assert (currency_exponent("JPY"), currency_exponent("GBP"), currency_exponent("BHD")) == (
        0, 2, 3)
    assert len(CURRENCY_EXPONENTS) > 150
    with pytest.raises(ValueError, match="XYZ"):
        currency_exponent("XYZ")


def test_reasons_have_stable_codes_in_precedence_order() -> None:
    ordered = [r.label for r in Reason][:9]
    assert ordered == ["invalid_card", "card_restricted", "card_expired", "do_not_honor",
                       "not_permitted", "suspected_fraud", "amount_limit_exceeded",
                       "count_limit_exceeded", "insufficient_funds"]
    assert {r.label: r.code for r in Reason}["insufficient_funds"] == "51"
    assert Reason.from_label("duplicate").code == "94"


def test_card_state_table() -> None:
    assert next_state("active", "freeze") == "frozen"
    assert next_state("frozen", "unfreeze") == "active"
    assert next_state("frozen", "terminate") == "terminated"
    with pytest.raises(IllegalTransition):
        next_state("terminated", "unfreeze")


@pytest.mark.parametrize(("label", "unit", "buckets"), [
    ("30m", "m", 30), ("1h", "m", 60), ("2h", "m", 120), ("24h", "h", 24), ("1d", "d", 1),
    ("30d", "d", 30),
])
def test_velocity_windows_pick_their_buckets(label: str, unit: str, buckets: int) -> None:
    w = VelocityWindow.parse({"window": label, "max_count": 3}, 0)
    assert (w.unit, w.buckets) == (unit, buckets)


def test_policy_round_trips_to_canonical_json() -> None:
    raw = {"max_amount": 100, "mcc_block": ["7995", "5933"], "velocity": [
        {"window": "7d", "max_amount": 5000}]}
    policy = Policy.parse(raw)
    assert policy.to_json() == {"max_amount": 100, "mcc_block": ["5933", "7995"],
                                "velocity": [{"window": "7d", "max_amount": 5000}]}
    assert Policy.parse(policy.to_json()) == policy
    with pytest.raises(PolicyError):
        Policy.parse({"velocity": [{"window": "1h", "max_count": 0}]})


@pytest.mark.parametrize(("mcc", "days"), [("5812", 7), ("7011", 30), ("3700", 30),
                                           ("7512", 30), ("3400", 30), ("4111", 7)])
def test_hold_windows(mcc: str, days: int) -> None:
    assert hold_window_s(mcc, 7 * 86400, 30 * 86400) == days * 86400


def test_the_month_a_decision_compares_expiry_with_follows_the_utc_clock() -> None:
    """Worked out once a day: across a year's end, at the day's edges, and back in time."""
    new_year = int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp())
    assert month_of(new_year - 1) == 202612
    assert month_of(new_year) == 202701
    assert month_of(new_year + 86_399) == 202701
    assert month_of(new_year - 86_400 * 40) == 202611
    assert month_of(new_year - 1) == 202612


def test_card_numbers_are_recognised_and_masked() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert mask_pans("card 4111 1111 1111 1111 declined") == "card ****1111 declined"
    assert mask_pans("order 4111111111111112") == "order 4111111111111112"
    cleaned = scrub({"card": {"pan": "4111111111111111", "cvv": "123", "last_four": "1111"},
                     "note": "pan 5555555555554444", "items": [{"cvv2": "1"}]})
    assert cleaned == {"card": {"last_four": "1111"}, "note": "pan ****4444", "items": [{}]}


def test_native_signature_rotation_and_replay_window() -> None:
    body = b'{"id":"a"}'
    header = sign_native("new", 1_000, body)
    secrets = (Secret("old"), Secret("new"))
    verify_native(header, body, secrets, 1_100, 300)
    with pytest.raises(Unauthorized) as exc:
        verify_native(header, body, secrets, 1_301, 300)
    assert exc.value.code == "stale_signature"
    with pytest.raises(Unauthorized) as exc:
        verify_native(header, body + b" ", secrets, 1_100, 300)
    assert exc.value.code == "bad_signature"


def test_secrets_never_print() -> None:
    s = Secret("hunter2-hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in f"{s}"
    settings = Settings(webhook_secrets=(s,))
    assert "hunter2" not in repr(settings)


def test_admin_tokens_are_kept_hashed_with_scopes() -> None:
    tokens = parse_admin_tokens("alpha-token-123=admin,beta-token-1234=support|customer")
    assert tokens[hash_token("beta-token-1234")] == frozenset({"support", "customer"})
    assert "alpha-token-123" not in repr(tokens)
    with pytest.raises(SettingsError):
        parse_admin_tokens("short=admin")
    with pytest.raises(SettingsError):
        parse_admin_tokens("long-enough-token=root")


def test_settings_from_env() -> None:
    s = Settings.from_env({"HOLDFAST_PORT": "9000", "HOLDFAST_WEBHOOK_SECRET": "a,b"})
    assert s.port == 9000 and len(s.webhook_secrets) == 2
    assert s.scopes_for("dev-admin-token") == frozenset({"admin"})
    with pytest.raises(SettingsError, match="HOLDFAST_PORT"):
        Settings.from_env({"HOLDFAST_PORT": "eighty"})
    with pytest.raises(SettingsError, match="HOLDFAST_WEBHOOK_SECRET"):
        Settings.from_env({"HOLDFAST_ENV": "production"})
    prod = Settings.from_env({"HOLDFAST_ENV": "production", "HOLDFAST_WEBHOOK_SECRET": "x"})
    assert prod.admin_tokens == {}  # no development tokens in production
