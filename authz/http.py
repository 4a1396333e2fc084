"""Request/response helpers shared by the routes: JSON in and out, field validation with stable
error codes, bearer-token scopes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from authz.errors import BadRequest, Forbidden, Unauthorized
from authz.settings import Settings
from holds.model import MAX_AMOUNT_MINOR, is_currency

__all__ = [
    "ID_RE",
    "json_response",
    "opt_bool",
    "opt_str",
    "parse_json_object",
    "refuse_nul",
    "req_amount",
    "req_currency",
    "req_id",
    "req_str",
    "require_scope",
]

ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_JSON: Final = "application/json"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON,
                        headers=headers)


def refuse_nul(raw: bytes) -> None:
    """PostgreSQL stores no NUL character in text or jsonb: refuse it at the door (as the JSON
    escape; a raw NUL byte is not valid JSON anyway) rather than fail when storing."""
    if b"\\u0000" in raw:
        raise BadRequest("invalid_json", "strings must not contain the NUL character")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    refuse_nul(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("invalid_body", "body must be a JSON object")
    return body


def req_str(body: Mapping[str, Any], field: str, max_len: int = 256, where: str = "") -> str:
    value = body.get(field)
    if value.__class__ is str and 0 < len(value) <= max_len:  # the usual case, first
        return value
    if value is None:
        raise BadRequest("missing_field", f"{where}{field} is required")
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise BadRequest(
            "invalid_field", f"{where}{field} must be a string of 1 to {max_len} characters")
    return value  # a str subclass within bounds


def opt_str(body: Mapping[str, Any], field: str, max_len: int = 256, where: str = ""
            ) -> str | None:
    if body.get(field) is None:
        return None
    return req_str(body, field, max_len, where)


def req_id(body: Mapping[str, Any], field: str, where: str = "") -> str:
    value = req_str(body, field, 64, where)
    if not ID_RE.match(value):
        raise BadRequest(
            "invalid_field", f"{where}{field} may contain only letters, digits and . _ : -"
        )
    return value


def opt_bool(body: Mapping[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest("invalid_field", f"{field} must be true or false")
    return value


def req_amount(body: Mapping[str, Any], field: str = "amount", *, allow_zero: bool = False) -> int:
    value = body.get(field)
    if value is None:
        raise BadRequest("missing_field", f"{field} is required")
    # bool is an int subclass and floats are never money: both are refused
    if type(value) is not int:
        raise BadRequest("invalid_amount", f"{field} must be an integer in minor units")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_AMOUNT_MINOR:
        raise BadRequest("invalid_amount", f"{field} must be from {low} to {MAX_AMOUNT_MINOR}")
    return value


def req_currency(body: Mapping[str, Any], field: str = "currency") -> str:
    value = body.get(field)
    if value is None:
        raise BadRequest("missing_field", f"{field} is required")
    if not is_currency(value):
        raise BadRequest("unknown_currency", f"{field} must be an ISO 4217 alphabetic code")
    return str(value)


def require_scope(request: web.Request, settings: Settings, *allowed: str) -> frozenset[str]:
    """Check the bearer token; ``admin`` may do everything, others only what ``allowed`` names."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing_token", "Authorization: Bearer <token> is required")
    scopes = settings.scopes_for(token.strip())
    if not scopes:
        raise Unauthorized("bad_token", "unknown token")
    if "admin" not in scopes and not scopes.intersection(allowed):
        needed = ", ".join(("admin", *allowed))
        raise Forbidden("insufficient_scope", f"this call needs one of: {needed}")
    return scopes
