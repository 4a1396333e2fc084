"""The log filter by data class (authz/logs.py): restricted data (card number, CVV, PIN, track
data) is never written, sensitive data (names, account numbers, IBANs, sort codes) is masked,
operational data is written as it is — in messages, their arguments, exceptions, stack text and
``extra=`` fields, nested or not."""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.logs import DataClassFilter, JsonFormatter, redact_text, setup_logging
from policies.pan import luhn_valid, mask_pans

PAN = "4111111111111111"
AMEX = "378282246310005"
TRACK2 = f";{PAN}=25121010000012300000?"
TRACK1 = f"%B{PAN}^SMITH/JANE^25121010000000000000000123000000?"
IBAN = "GB82WEST12345698765432"
RESTRICTED_VALUES = (PAN, AMEX, "4111-1111-1111-1111", "123", "4321", "ABCDEF0123456789")


_LOGGERS = itertools.count()


class Written:
    """A logger whose output goes through the production handler set-up into memory."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.addFilter(DataClassFilter())
        self.handler.setFormatter(JsonFormatter())
        # a fresh logger per test (its name free of long digit runs: it is not masked)
        self.log = logging.getLogger(f"holdfast.test_log_classes.w{next(_LOGGERS)}")
        self.log.addHandler(self.handler)
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.buffer.getvalue().splitlines()]

    def text(self) -> str:
        return self.buffer.getvalue()

    def close(self) -> None:
        self.log.removeHandler(self.handler)
        self.handler.close()


@pytest.fixture
def written() -> Iterator[Written]:
    w = Written()
    yield w
    w.close()


def assert_no_restricted(text: str) -> None:
    assert mask_pans(text) == text, text  # no card number as written, by policies.pan
    for digits in (PAN, AMEX, "4111 1111 1111 1111", "4111-1111-1111-1111"):
        assert digits not in text
    assert "SMITH/JANE" not in text
    assert "=2512101" not in text


def test_restricted_data_is_never_written(written: Written) -> None:
    log = written.log
    log.info("card %s declined, cvv=123 pin: 4321", PAN)
    log.info("amex %s and grouped 4111-1111-1111-1111", AMEX)
    log.info("swiped %s / %s", TRACK2, TRACK1)
    log.info("payload %s", {"pan": PAN, "cvv": "123", "pin_block": "ABCDEF0123456789",
                            "merchant": "Corner Cafe"})
    log.info("json payload %s", orjson.dumps({"card_number": PAN, "cvc2": "999"}).decode())
    log.info("extras", extra={"pan": PAN, "cvv2": "123", "track2": TRACK2,
                              "card": {"number": PAN, "security_code": "123", "last4": "1111"},
                              "pans": [int(PAN), AMEX]})
    try:
        raise ValueError(f"processor echoed {PAN} with cvv=123")
    except ValueError:
        log.exception("failed for %s", AMEX)
    log.info("stack", stack_info=True, extra={"note": f"number {PAN}"})
    text = written.text()
    assert_no_restricted(text)
    assert "cvv=123" not in text and "pin: 4321" not in text and "999" not in text
    lines = written.lines()
    assert lines[0]["msg"] == "card ****1111 declined, cvv=[restricted] pin: [restricted]"
    assert "[track data]" in lines[2]["msg"]
    assert lines[3]["msg"] == ("payload {'pan': '[restricted]', 'cvv': '[restricted]', "
                               "'pin_block': '[restricted]', 'merchant': 'Corner Cafe'}")
    extras = lines[5]
    # restricted keys are dropped with their values, whatever they hold
    assert not {"pan", "cvv2", "track2"} & extras.keys()
    assert extras["card"] == {"last4": "1111"}
    assert extras["pans"] == ["****1111", "****0005"]
    assert "ValueError: processor echoed ****1111 with cvv=[restricted]" in lines[6]["exc"]
    assert lines[6]["msg"] == "failed for ****0005"
    assert lines[7]["note"] == "number ****1111" and "stack" in lines[7]


def test_sensitive_data_is_masked(written: Written) -> None:
    log = written.log
    log.info("payee", extra={"beneficiary_name": "Jane Q Smith", "account_number": "12345678",
                             "sort_code": "12-34-56", "iban": IBAN, "email": "jane@example.com",
                             "phone": "+44 7700 900123", "address": "1 High St, Leeds"})
    log.info("paying %s at %s, %s", IBAN, "20-00-00", "GB82 WEST 1234 5698 7654 32")
    log.info("body %s", orjson.dumps({"name": "Jane Smith", "account_number": "12345678",
                                      "sort_code": "200000"}).decode())
    log.info("nested", extra={"payment": {"beneficiary": {"name": "Jane Smith",
                                                          "iban": IBAN}, "amount": 2500}})
    text = written.text()
    for value in ("Jane", "Smith", "12345678", "12-34-56", IBAN, "jane@", "900123", "High St",
                  "20-00-00", "WEST 1234"):
        assert value not in text, value
    first, second, third, fourth = written.lines()
    assert (first["beneficiary_name"], first["account_number"], first["sort_code"],
            first["iban"], first["email"], first["phone"], first["address"]) == (
        "J*** Q*** S***", "****5678", "**-**-56", "GB82****5432", "j***@example.com",
        "****0123", "[masked]")
    assert second["msg"] == "paying GB82****5432 at **-**-00, GB82****5432"
    assert third["msg"] == ('body {"name":"J*** S***","account_number":"****5678",'
                            '"sort_code":"**-**-00"}')
    assert fourth["payment"] == {"beneficiary": {"name": "J*** S***", "iban": "GB82****5432"},
                                 "amount": 2500}


def test_operational_data_is_written_as_it_is(written: Written) -> None:
    ids = {"authorization_id": "auth-0b6c1f6e-1c1e-4f35-9d1b-33f2b9d6a8f1",
           "event": "123e4567-e89b-12d3-a456-426614174000", "card_id": "card-7f3a9c",
           "amount": 1500, "currency": "GBP", "reason": "insufficient_funds", "code": "51",
           "latency_ms": 1.25, "stand_in": False, "mcc": "5812", "reference": "INV 2024-01-15"}
    written.log.warning("declined %s: %s %s (%s)", ids["authorization_id"], ids["amount"],
                        ids["currency"], ids["reason"], extra=ids)
    (line,) = written.lines()
    assert line["msg"] == ("declined auth-0b6c1f6e-1c1e-4f35-9d1b-33f2b9d6a8f1: 1500 GBP "
                           "(insufficient_funds)")
    assert {k: line[k] for k in ids} == ids
    assert (line["level"], line["logger"]) == ("WARNING", written.log.name)


def test_a_malformed_call_is_written_not_raised(written: Written) -> None:
    # one argument missing: logging must not raise at the call site
    written.log.info("two args %s %s", PAN)  # noqa: PLE1206
    (line,) = written.lines()
    assert line["msg"].startswith("[message not rendered: TypeError]")
    assert_no_restricted(written.text())


def test_the_filter_cleans_the_record_for_every_handler_after_it(written: Written) -> None:
    plain = io.StringIO()
    second = logging.StreamHandler(plain)
    second.setFormatter(logging.Formatter("%(message)s %(pan_free)s"))
    written.log.addHandler(second)
    try:
        written.log.info("card %s", PAN, extra={"pan_free": f"ref {PAN}", "cvv": "123"})
    finally:
        written.log.removeHandler(second)
        second.close()
    assert plain.getvalue() == "card ****1111 ref ****1111\n"


def test_the_formatter_alone_does_not_change_the_record() -> None:
    record = logging.LogRecord("holdfast.x", logging.INFO, __file__, 1, "card %s", (PAN,), None)
    record.__dict__["iban"] = IBAN  # as extra= sets it
    out = orjson.loads(JsonFormatter().format(record))
    assert (out["msg"], out["iban"]) == ("card ****1111", "GB82****5432")
    # other handlers (e.g. a test's log capture) still see the record as it was made
    assert (record.getMessage(), record.__dict__["iban"]) == (f"card {PAN}", IBAN)


def test_setup_logging_installs_the_filter_on_the_process_handler() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        (handler,) = root.handlers
        assert any(isinstance(f, DataClassFilter) for f in handler.filters)
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


_pans = st.builds(_luhn_complete, st.text("0123456789", min_size=12, max_size=18).filter(
    lambda d: d[0] != "0"))
_words = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(pan=_pans, before=_words, after=_words,
       form=st.sampled_from(["run", "spaces", "dashes"]))
def test_no_card_number_survives_in_any_text(pan: str, before: str, after: str, form: str
                                             ) -> None:
    if form != "run" and len(pan) == 16:
        sep = " " if form == "spaces" else "-"
        pan = sep.join(pan[i:i + 4] for i in range(0, 16, 4))
    # a separator next to a digit would make a longer number: keep the card number apart
    text = f"{before} {pan} {after}"
    out = redact_text(text)
    assert mask_pans(out) == out
    assert pan not in out
