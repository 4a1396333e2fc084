"""Structured JSON logs with a last line of defence: any Luhn-valid 13-19 digit run (a card
number) is masked before a record is written, whatever code produced it."""

from __future__ import annotations

import logging
import re
import sys
from typing import Final

import orjson

__all__ = ["luhn_valid", "mask_pans", "setup_logging"]

_PAN_RE: Final = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_pans(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return f"****{digits[-4:]}"
        return match.group(0)

    return _PAN_RE.sub(mask, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_pans(record.getMessage()),
        }
        if record.exc_info:
            out["exc"] = mask_pans(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
