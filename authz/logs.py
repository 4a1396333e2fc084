"""Structured JSON logs, filtered by data class before anything is written (DESIGN §6,
THREAT_MODEL.md "Data classes"), whatever code produced the record:

- **restricted** (card number, CVV/CVC, PIN and PIN block, track data): never written. A card
  number becomes ``****<last4>`` (the truncation PCI DSS allows); the rest becomes
  ``[restricted]`` or ``[track data]``, or is dropped with its key.
- **sensitive** (names, account numbers, IBANs, sort codes, e-mail, phone, address, date of
  birth): masked, e.g. ``J*** S***``, ``****5678``, ``GB82****5432``, ``**-**-56``.
- **operational** (ids, amounts, currencies, codes, reasons, timings, counts): as is.

Recognised **in text** (the message with its arguments, exception and stack text, every string
value): Luhn-valid card numbers as written (``policies.pan``), track 1 and 2 data, ``key=value``
and ``"key": "value"`` pairs naming a restricted or sensitive key, IBANs (mod-97 valid) and sort
codes written ``12-34-56``. Recognised **by key** (``extra=`` fields, nested dicts and lists):
restricted keys are dropped, sensitive keys masked. A person's name is only recognisable by its
key: code must never put one in a message's text.

``DataClassFilter`` rewrites each record in place on the process's handler (so any formatter
downstream sees clean data); ``JsonFormatter`` applies the same step to a copy on its own, as the
last line of defence when it is used without the filter.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from typing import Any, Final

import orjson

from policies.pan import RESTRICTED_KEYS, luhn_valid, mask_pans

__all__ = [
    "SENSITIVE_KEYS",
    "DataClassFilter",
    "JsonFormatter",
    "extra_fields",
    "iban_valid",
    "luhn_valid",
    "mask_pans",
    "redact_record",
    "redact_text",
    "redact_value",
    "setup_logging",
]

# keys whose values are personal data: masked wherever they appear as a key
SENSITIVE_KEYS: Final = frozenset({
    "name", "first_name", "last_name", "full_name", "cardholder_name", "holder_name",
    "account_holder", "account_holder_name", "account_name", "beneficiary_name", "payee_name",
    "account_number", "iban", "sort_code", "email", "phone", "phone_number", "address",
    "date_of_birth", "dob",
})
_MAX_DEPTH: Final = 8
_REDACTED_MARK: Final = "_holdfast_redacted"
_DROP: Final = object()
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName",
                                                               _REDACTED_MARK}

# track 1 (%B<pan>^NAME^YYMM...?) and track 2 (;<pan>=YYMM...?), sentinels optional
_TRACK_RE: Final = re.compile(
    r"%?B[0-9]{13,19}\^[^^\n]{0,26}\^[^?\n]{0,79}\??"
    r"|;?[0-9]{13,19}=[0-9]{4}[0-9A-Za-z]{0,37}\??"
)
# `key=value`, `key: value`, `"key": "value"`, `'key': 'value'` for the keys of both classes;
# in text, "number" and "cid" are too common as plain words to be treated as keys
_TEXT_KEYS: Final = sorted((RESTRICTED_KEYS | SENSITIVE_KEYS) - {"number", "cid"},
                           key=len, reverse=True)
_PAIR_RE: Final = re.compile(
    r"""(?i)(?<![A-Za-z0-9_])(["']?)(""" + "|".join(_TEXT_KEYS) + r""")\1(\s*[:=]\s*)"""
    r"""("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[^\s,;&}\])]+)"""
)
_IBAN_RE: Final = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_SORT_CODE_RE: Final = re.compile(r"(?<![0-9-])[0-9]{2}-[0-9]{2}-[0-9]{2}(?![0-9-])")


def _norm(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    digits = "".join(str(int(ch, 36)) for ch in moved)
    return int(digits) % 97 == 1


def _mask_iban(value: str) -> str:
    compact = value.replace(" ", "")
    return f"{compact[:4]}****{compact[-4:]}" if len(compact) > 8 else "****"


def _mask_last4(value: str) -> str:
    digits = re.sub(r"[^0-9A-Za-z]", "", value)
    return f"****{digits[-4:]}" if len(digits) >= 8 else "****"


def _mask_name(value: str) -> str:
    return " ".join(f"{word[0]}***" for word in value.split()) or "***"


def _mask_email(value: str) -> str:
    local, at, domain = value.partition("@")
    return f"{local[:1]}***@{domain}" if at else "***"


def mask_sensitive(key: str, value: str) -> str:
    """The masked form of a sensitive value, chosen by its key."""
    key = _norm(key)
    if "name" in key or key == "account_holder":
        return _mask_name(value)
    if key == "iban":
        return _mask_iban(value)
    if key == "sort_code":
        digits = re.sub(r"[^0-9]", "", value)
        return f"**-**-{digits[-2:]}" if len(digits) == 6 else "**-**-**"
    if key == "email":
        return _mask_email(value)
    if key in ("account_number", "phone", "phone_number"):
        return _mask_last4(value)
    return "[masked]"  # address, date of birth


def _pair(match: re.Match[str]) -> str:
    quote, key, sep, value = match.group(1), match.group(2), match.group(3), match.group(4)
    vquote = value[0] if value[:1] in ("'", '"') else ""
    inner = value[1:-1] if vquote else value
    masked = "[restricted]" if _norm(key) in RESTRICTED_KEYS else mask_sensitive(key, inner)
    return f"{quote}{key}{quote}{sep}{vquote}{masked}{vquote}"


def _iban(match: re.Match[str]) -> str:
    text = match.group(0)
    return _mask_iban(text) if iban_valid(text) else text


def redact_text(text: str) -> str:
    """Remove restricted and mask sensitive data recognisable in free text."""
    text = _TRACK_RE.sub("[track data]", text)
    text = _PAIR_RE.sub(_pair, text)
    text = mask_pans(text)
    text = _IBAN_RE.sub(_iban, text)
    return _SORT_CODE_RE.sub(lambda m: f"**-**-{m.group(0)[-2:]}", text)


def redact_value(key: str | None, value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of ``value`` by data class; ``_DROP`` when the key is restricted."""
    if key is not None:
        name = _norm(key)
        if name in RESTRICTED_KEYS:
            return _DROP
        if name in SENSITIVE_KEYS:
            if isinstance(value, str | int):
                return mask_sensitive(name, str(value))
            return None if value is None else "[masked]"
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            cleaned = redact_value(str(k), v, depth + 1)
            if cleaned is not _DROP:
                out[redact_text(str(k))] = cleaned
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(None, v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        # a card number passed as an integer is still a card number
        return value if redact_text(str(value)) == str(value) else redact_text(str(value))
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode(errors="replace"))
    return redact_text(str(value))


_EXC_FORMATTER: Final = logging.Formatter()


def redact_record(record: logging.LogRecord, *, in_place: bool = False) -> logging.LogRecord:
    """The record with every field cleaned by data class: a copy unless ``in_place``. A record
    already cleaned is returned as it is."""
    if getattr(record, _REDACTED_MARK, False):
        return record
    out = record if in_place else copy.copy(record)
    try:
        message = record.getMessage()
    except Exception as exc:  # a malformed call must not raise at its call site
        message = f"[message not rendered: {type(exc).__name__}] {record.msg}"
    out.msg = redact_text(message)
    out.args = None
    if record.exc_info and not record.exc_text:
        out.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
    if out.exc_text:
        out.exc_text = redact_text(out.exc_text)
    if record.stack_info:
        out.stack_info = redact_text(record.stack_info)
    for key in [k for k in vars(record) if k not in _STANDARD_ATTRS]:
        cleaned = redact_value(key, vars(record)[key])
        if cleaned is _DROP:
            delattr(out, key)
        else:
            setattr(out, key, cleaned)
    setattr(out, _REDACTED_MARK, True)
    return out


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (anything that is not a standard attribute)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class DataClassFilter(logging.Filter):
    """Cleans every record passing through the handler it is attached to (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, in_place=True)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        clean = redact_record(record)
        out: dict[str, Any] = {
            "ts": self.formatTime(clean, "%Y-%m-%dT%H:%M:%S"),
            "level": clean.levelname,
            "logger": clean.name,
            "msg": clean.getMessage(),
        }
        for key, value in extra_fields(clean).items():
            out[key if key not in out else f"extra.{key}"] = value
        if clean.exc_text:
            out["exc"] = clean.exc_text
        if clean.stack_info:
            out["stack"] = clean.stack_info
        return orjson.dumps(out, default=_fallback).decode()


def _fallback(value: object) -> str:
    return redact_text(str(value))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(DataClassFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
