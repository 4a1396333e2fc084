"""Structured JSON logs with a last line of defence: any Luhn-valid 13-19 digit run (a card
number) is masked before a record is written, whatever code produced it."""

from __future__ import annotations

import logging
import sys

import orjson

from policies.pan import luhn_valid, mask_pans

__all__ = ["JsonFormatter", "luhn_valid", "mask_pans", "setup_logging"]



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
