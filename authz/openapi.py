"""The OpenAPI 3.1 description served at ``/openapi.json``. A test checks that every route the app
serves is described here and every described route is served."""

from __future__ import annotations

from functools import cache
from typing import Any

from clearing.events import EVENT_TYPES

__all__ = ["spec"]

_ID = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}
_AMOUNT = {"type": "integer", "minimum": 1, "maximum": 10**15, "description": "minor units"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "error", **_json(_ref("Error"))} for s in statuses}


def _op(summary: str, ok: dict[str, Any], *errors: int, body: str | None = None,
        security: str = "bearer", params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if security == "bearer":  # management calls are rate limited per token (authz.ratelimit)
        errors = (*errors, 429)
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*errors)}}
    if body:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
    if security:
        op["security"] = [{security: []}]
    if params:
        op["parameters"] = params
    return op


_PATH_ID = {"name": "id", "in": "path", "required": True, "schema": _ID}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128}}


def _card_action(verb: str) -> dict[str, Any]:
    return {"post": _op(f"{verb} the card", {"200": _json(_ref("Card"))}, 401, 403, 404, 409,
                        params=[_PATH_ID])}


_MARQETA_JIT = {"type": "object", "required": ["jit_funding"], "properties": {"jit_funding": {
    "type": "object", "required": ["token", "amount"], "properties": {
        "token": {"type": "string"}, "method": {"type": "string"},
        "amount": {"type": "string", "description": "decimal, major units"},
        "decline_reason": {"type": "string"}}}}}


def _provider_op(summary: str, ok: dict[str, Any], security: str) -> dict[str, Any]:
    """A provider route: the body is the provider's own JSON, authenticated its own way."""
    op = _op(summary, ok, 400, 401, 409, 413, security=security)
    op["requestBody"] = {"required": True, **_json({"type": "object"})}
    return op


def _payments() -> tuple[dict[str, Any], dict[str, Any]]:
    """Schemas and paths of payments, accounts extras and the bank's webhooks."""
    text = {"type": "string"}
    digits6 = {"type": "string", "pattern": "^[0-9]{6}$"}
    digits8 = {"type": "string", "pattern": "^[0-9]{8}$"}
    nullable = {"type": ["string", "null"]}
    beneficiary = {"oneOf": [
        {"type": "object", "required": ["name", "sort_code", "account_number"],
         "properties": {"name": {"type": "string", "maxLength": 140},
                        "sort_code": {"type": "string",
                                      "pattern": "^[0-9]{2}-?[0-9]{2}-?[0-9]{2}$"},
                        "account_number": digits8}},
        {"type": "object", "required": ["name", "iban"],
         "properties": {"name": {"type": "string", "maxLength": 140},
                        "iban": {"type": "string", "maxLength": 42}}}]}
    states = ["checking_payee", "pending_confirmation", "queued", "submitted", "accepted",
              "settled", "returned", "rejected", "blocked", "cancelled"]
    schemas: dict[str, Any] = {
        "PaymentCreate": {"type": "object",
                          "required": ["account_id", "amount", "currency", "beneficiary",
                                       "reference"],
                          "properties": {"account_id": _ID, "amount": _AMOUNT,
                                         "currency": _CURRENCY, "beneficiary": beneficiary,
                                         "reference": {"type": "string", "maxLength": 35}}},
        "Payment": {"type": "object", "required": ["id", "status"], "properties": {
            "id": text, "status": {"enum": states}, "account_id": _ID,
            "amount": {"type": "integer"}, "currency": _CURRENCY, "fee": {"type": "integer"},
            "beneficiary": {"type": "object"}, "reference": text,
            "payee_check": {"type": ["object", "null"]}, "held": {"type": "integer"},
            "bank_payment_id": nullable, "reason": nullable, "settled_on": nullable,
            "returned_on": nullable, "created_at": text, "updated_at": text,
            "history": {"type": "array", "items": {"type": "object"}}}},
        "Entries": {"type": "object", "properties": {
            "account_id": _ID, "order": {"const": "newest_first"},
            "entries": {"type": "array", "items": {"type": "object", "properties": {
                "id": text, "transaction_id": text, "kind": text,
                "amount": {"type": "integer"}, "currency": _CURRENCY, "reference": nullable,
                "forced": {"type": "boolean"}, "created_at": text}}},
            "next_cursor": nullable}},
        "VirtualAccount": {"type": "object", "properties": {
            "id": text, "account_id": _ID, "sort_code": digits6, "account_number": digits8,
            "iban": text,
            "reference_code": text, "status": {"enum": ["active", "retired"]},
            "created_at": text, "retired_at": nullable}},
        "Reconciliation": {"type": "object", "properties": {
            "id": text, "source": text, "format": {"enum": ["csv", "jsonl"]},
            "period": {"type": "object"}, "summary": {"type": "object"},
            "ok": {"type": "boolean"}, "breaks": {"type": "array", "items": {"type": "object"}}}},
    }
    payment = {"200": _json(_ref("Payment"))}
    cursor = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                          "maximum": 200}},
              {"name": "cursor", "in": "query", "schema": text}]
    paths: dict[str, Any] = {
        "/v1/payments": {"post": _op(
            "Create a payment: stored and held before it is sent (same key and body: 200)",
            {"201": _json(_ref("Payment")), **payment}, 400, 401, 403, 404, 409, 422,
            body="PaymentCreate", params=[_IDEMPOTENCY])},
        "/v1/payments/{id}": {"get": _op("A payment, its state and history", payment,
                                         401, 403, 404, params=[_PATH_ID])},
        "/v1/payments/{id}/confirm": {"post": _op(
            "Pay a close-matched payee all the same", payment, 401, 403, 404, 409,
            params=[_PATH_ID])},
        "/v1/payments/{id}/cancel": {"post": _op(
            "Cancel a payment waiting for confirmation (releases its hold)", payment,
            401, 403, 404, 409, params=[_PATH_ID])},
        "/v1/accounts/{id}/entries": {"get": _op(
            "The account's postings, newest first, paged by cursor",
            {"200": _json(_ref("Entries"))}, 400, 401, 403, 404, params=[_PATH_ID, *cursor])},
        "/v1/accounts/{id}/virtual-accounts": {
            "post": _op("Allocate the account's virtual account (or return the active one)",
                        {"201": _json(_ref("VirtualAccount")),
                         "200": _json(_ref("VirtualAccount"))}, 401, 403, 404, 409,
                        params=[_PATH_ID]),
            "get": _op("The account's virtual accounts, retired ones included",
                       {"200": _json({"type": "object"})}, 401, 403, 404, params=[_PATH_ID])},
        "/v1/accounts/{id}/close": {"post": _op(
            "Close an empty account without live cards; retires its virtual accounts",
            {"200": _json({"type": "object"})}, 401, 403, 404, 409, params=[_PATH_ID])},
        "/v1/reconciliations/{id}": {"get": _op(
            "A reconciliation run and its breaks", {"200": _json(_ref("Reconciliation"))},
            401, 403, 404, params=[_PATH_ID])},
        "/providers/bank/webhooks": {"post": _provider_op(
            "The bank's payment facts and inbound credits (stored, then applied)",
            {"200": _json(_ref("EventAck"))}, "bankSignature")},
    }
    return schemas, paths


@cache
def spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "AuthorizeRequest": {
            "type": "object", "required": ["id", "card_id", "amount", "currency", "merchant",
                                           "channel"],
            "properties": {
                "id": _ID, "card_id": _ID, "amount": _AMOUNT, "currency": _CURRENCY,
                "merchant": {"type": "object", "required": ["id", "mcc", "country"],
                             "properties": {"id": {"type": "string", "maxLength": 64},
                                            "name": {"type": "string", "maxLength": 128},
                                            "mcc": {"type": "string", "pattern": "^[0-9]{4}$"},
                                            "country": {"type": "string",
                                                        "pattern": "^[A-Z]{2}$"}}},
                "channel": {"enum": ["pos", "ecommerce", "atm", "contactless", "moto"]},
                "partial_allowed": {"type": "boolean"},
                "parent_id": _ID,
            }},
        "AuthorizeResponse": {
            "type": "object",
            "required": ["id", "decision", "approved_amount", "reason", "code", "stand_in"],
            "properties": {
                "id": _ID, "decision": {"enum": ["approve", "decline"]},
                "approved_amount": {"type": "integer"}, "reason": {"type": "string"},
                "code": {"type": "string", "pattern": "^[0-9]{2}$"},
                "stand_in": {"type": "boolean"}, "authorization_id": _ID}},
        "Event": {
            "type": "object", "required": ["id", "type", "amount", "currency"],
            "properties": {
                "id": _ID,
                "type": {"enum": sorted(EVENT_TYPES)},
                "authorization_id": _ID, "card_id": _ID,
                "amount": {"type": "integer", "minimum": 0, "maximum": 10**15},
                "currency": _CURRENCY, "final": {"type": "boolean"}}},
        "EventAck": {"type": "object", "required": ["id", "status"], "properties": {
            "id": _ID, "status": {"enum": ["accepted", "duplicate"]}}},
        "AccountCreate": {
            "type": "object", "required": ["id", "currency"],
            "properties": {"id": _ID, "currency": _CURRENCY,
                           "overdraft_limit": {"type": "integer", "minimum": 0},
                           "kind": {"enum": ["customer", "settlement", "fees", "suspense"]}}},
        "Account": {
            "type": "object",
            "properties": {"id": _ID, "kind": {"type": "string"}, "currency": _CURRENCY,
                           "posted": {"type": "integer"}, "held": {"type": "integer"},
                           "available": {"type": "integer"},
                           "overdraft_limit": {"type": "integer"}}},
        "DepositCreate": {
            "type": "object", "required": ["amount"],
            "properties": {"amount": _AMOUNT, "reference": {"type": "string",
                                                            "maxLength": 140}}},
        "Deposit": {"type": "object", "properties": {
            "id": {"type": "string"}, "account_id": _ID, "amount": {"type": "integer"},
            "currency": _CURRENCY, "reference": {"type": ["string", "null"]},
            "status": {"type": "string"}, "created_at": {"type": "string"}}},
        "Policy": {"type": "object", "properties": {
            "max_amount": _AMOUNT,
            "currencies": {"type": "array", "items": _CURRENCY},
            "mcc_allow": {"type": "array", "items": {"type": "string"}},
            "mcc_block": {"type": "array", "items": {"type": "string"}},
            "country_allow": {"type": "array", "items": {"type": "string"}},
            "country_block": {"type": "array", "items": {"type": "string"}},
            "channels_block": {"type": "array", "items": {"type": "string"}},
            "merchant_lock": {"type": "array", "items": {"type": "string"}},
            "utc_offset_minutes": {"type": "integer", "minimum": -840, "maximum": 840},
            "velocity": {"type": "array", "maxItems": 8, "items": {
                "type": "object", "required": ["window"],
                "properties": {"window": {"type": "string", "pattern": "^[1-9][0-9]*[mhd]$"},
                               "max_amount": _AMOUNT,
                               "max_count": {"type": "integer", "minimum": 1}}}}}},
        "CardPut": {"type": "object", "required": ["account_id"], "properties": {
            "account_id": _ID, "state": {"enum": ["active", "frozen", "terminated"]},
            "policy": _ref("Policy"),
            "expires": {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"},
            "last4": {"type": "string", "pattern": "^[0-9]{4}$"}}},
        "Card": {"type": "object", "properties": {
            "id": _ID, "account_id": _ID, "currency": _CURRENCY, "state": {"type": "string"},
            "version": {"type": "integer"}, "policy_version": {"type": "integer"},
            "policy": _ref("Policy"), "expires": {"type": ["string", "null"]},
            "last4": {"type": ["string", "null"]}}},
        "Authorization": {"type": "object", "properties": {
            "id": _ID, "state": {"type": "string"}, "requested_amount": {"type": "integer"},
            "approved_amount": {"type": "integer"}, "held_amount": {"type": "integer"},
            "cleared_amount": {"type": "integer"}, "reversed_amount": {"type": "integer"},
            "history": {"type": "array", "items": {"type": "object"}}}},
    }
    paths: dict[str, Any] = {
        "/v1/authorize": {"post": _op(
            "Decide a card authorisation and place its hold",
            {"200": _json(_ref("AuthorizeResponse"))}, 400, 401, 413,
            body="AuthorizeRequest", security="holdfastSignature")},
        "/v1/events": {"post": _op(
            "Record a lifecycle event (stored, then applied by the consumers)",
            {"202": _json(_ref("EventAck"))}, 400, 401, 409, 413,
            body="Event", security="holdfastSignature")},
        "/v1/accounts": {"post": _op(
            "Create an account (same id and body again: 200)",
            {"201": _json(_ref("Account")), "200": _json(_ref("Account"))}, 400, 401, 403, 409,
            body="AccountCreate")},
        "/v1/accounts/{id}": {"get": _op(
            "Read an account's balances", {"200": _json(_ref("Account"))}, 401, 403, 404,
            params=[_PATH_ID])},
        "/v1/accounts/{id}/deposits": {"post": _op(
            "Fund an account from the settlement account",
            {"201": _json(_ref("Deposit")), "200": _json(_ref("Deposit"))}, 400, 401, 403, 404,
            409, body="DepositCreate", params=[_PATH_ID, _IDEMPOTENCY])},
        "/v1/cards/{id}": {
            "put": _op("Create or update a card and its policy",
                       {"201": _json(_ref("Card")), "200": _json(_ref("Card"))}, 400, 401, 403,
                       404, 409, 503, body="CardPut", params=[_PATH_ID]),
            "get": _op("Read a card", {"200": _json(_ref("Card"))}, 401, 403, 404,
                       params=[_PATH_ID])},
        "/v1/cards/{id}/freeze": _card_action("Freeze"),
        "/v1/cards/{id}/unfreeze": _card_action("Unfreeze"),
        "/v1/cards/{id}/terminate": _card_action("Terminate"),
        "/v1/authorizations/{id}": {"get": _op(
            "An authorisation with its hold and decision history",
            {"200": _json(_ref("Authorization"))}, 401, 403, 404, params=[_PATH_ID])},
        "/providers/lithic/asa": {"post": _provider_op(
            "Lithic Auth Stream Access decision (Lithic's own format)",
            {"200": _json({"type": "object", "required": ["token", "result"], "properties": {
                "token": {"type": "string"}, "result": {"type": "string"},
                "approved_amount": {"type": "integer"}}})}, "lithicSignature")},
        "/providers/lithic/events": {"post": _provider_op(
            "Lithic transaction and other event webhooks (stored, then applied)",
            {"200": _json(_ref("EventAck"))}, "lithicSignature")},
        "/providers/marqeta/jit": {"post": _provider_op(
            "Marqeta Gateway JIT Funding request: 200 approves, 402 declines",
            {"200": _json(_MARQETA_JIT), "402": _json(_MARQETA_JIT)}, "marqetaBasic")},
        "/providers/marqeta/events": {"post": _provider_op(
            "Marqeta transaction webhooks (stored, then applied)",
            {"200": {"description": "stored"}}, "marqetaBasic")},
        "/providers/stripe/webhooks": {"post": _provider_op(
            "Stripe Issuing webhooks; issuing_authorization.request is answered synchronously",
            {"200": _json({"type": "object", "properties": {
                "approved": {"type": "boolean"}, "amount": {"type": "integer"},
                "metadata": {"type": "object"}, "id": {"type": "string"},
                "status": {"type": "string"}}})}, "stripeSignature")},
        "/v1/events/quarantined": {"get": _op(
            "Quarantined events, 100 a page (scopes ops, support)",
            {"200": {"description": "events and next_after cursor"}}, 400, 401, 403,
            params=[{"name": "after", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}}])},
        "/v1/events/{inbox_id}/retry": {"post": _op(
            "Retry a quarantined event (scope ops)", {"202": {"description": "queued"}},
            401, 403, 404,
            params=[{"name": "inbox_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}}])},
        "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "text"}},
                                security="")},
        "/healthz": {"get": _op("Alive", {"200": {"description": "ok"}}, security="")},
        "/readyz": {"get": _op("Ready: PostgreSQL reachable, migrations current",
                               {"200": {"description": "ready"}}, 503, security="")},
        "/openapi.json": {"get": _op("This document", {"200": {"description": "OpenAPI"}},
                                     security="")},
    }
    payment_schemas, payment_paths = _payments()
    schemas.update(payment_schemas)
    paths.update(payment_paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Holdfast", "version": "0.1.0",
                 "description": "Card authorisation decisions with a double-entry ledger"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "holdfastSignature": {
                    "type": "apiKey", "in": "header", "name": "Holdfast-Signature",
                    "description": "t=<unix>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>"},
                "lithicSignature": {
                    "type": "apiKey", "in": "header", "name": "webhook-signature",
                    "description": "Standard Webhooks: webhook-id, webhook-timestamp, "
                                   "webhook-signature v1,<base64 HMAC-SHA256>"},
                "marqetaBasic": {"type": "http", "scheme": "basic",
                                 "description": "plus X-Marqeta-Signature when configured"},
                "stripeSignature": {
                    "type": "apiKey", "in": "header", "name": "Stripe-Signature",
                    "description": "t=<unix>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>"},
                "bankSignature": {
                    "type": "apiKey", "in": "header", "name": "Bank-Signature",
                    "description": "t=<unix>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>"},
            },
        },
    }
