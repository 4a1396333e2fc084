"""The sandbox bank: the API Holdfast calls (``/bank/v1/...``: payee checks, payment
submissions deduplicated on ``Idempotency-Key``), each payment's life told back through signed
webhooks, inbound credits, a statement, and control routes (``/sandbox/bank/...``) for the demo
and the tests to steer it."""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from clearing.payments.model import name_key, new_id
from clearing.sandbox.config import SandboxConfig, sign
from clearing.sandbox.delivery import Delivery, Outgoing

__all__ = ["SandboxBank", "bank_routes", "compare_names", "statement_csv"]

_WEBHOOK_PATH: Final = "/providers/bank/webhooks"


def compare_names(given: str, actual: str) -> str:
    """The bank's Confirmation of Payee verdict for a name against the account holder's."""
    g, a = name_key(given), name_key(actual)
    if g == a:
        return "match"
    gw, aw = g.split(), a.split()
    if sorted(gw) == sorted(aw):
        return "close_match"  # the same words in another order
    if gw and aw and gw[-1] == aw[-1] and gw[0][:1] == aw[0][:1]:
        return "close_match"  # an initial for a first name, or a middle name left out
    if difflib.SequenceMatcher(None, g, a).ratio() >= 0.8:
        return "close_match"  # a typo
    return "no_match"


def _identifier(creditor: dict[str, Any]) -> str | None:
    if isinstance(creditor.get("iban"), str):
        return str(creditor["iban"]).replace(" ", "").upper()
    sort_code, number = creditor.get("sort_code"), creditor.get("account_number")
    if isinstance(sort_code, str) and isinstance(number, str):
        return f"GB:{sort_code}/{number}"
    return None


@dataclass(slots=True)
class BankPayment:
    id: str
    key: str
    digest: str
    body: dict[str, Any]
    status: str = "received"
    return_id: str | None = None


@dataclass(slots=True)
class SandboxBank:
    config: SandboxConfig
    delivery: Delivery
    rng: random.Random
    # identifier ('GB:<sort code>/<account number>' or IBAN) -> account holder's name
    directory: dict[str, str] = field(default_factory=dict)
    payments: dict[str, BankPayment] = field(default_factory=dict)  # by idempotency key
    # what the next submissions do: ok | error | timeout | refuse; then their life:
    # settle | reject | hold (no webhooks until told)
    next_submissions: deque[str] = field(default_factory=deque)
    next_lives: deque[str] = field(default_factory=deque)
    statement: list[dict[str, Any]] = field(default_factory=list)
    submissions_seen: int = 0
    payee_checks_seen: int = 0
    # the bank's business date (None: today), so a run can be reconciled on a day of its own
    business_date: dt.date | None = None

    def today(self) -> str:
        return (self.business_date or dt.date.today()).isoformat()

    # -- outgoing --------------------------------------------------------------------------
    def _webhook(self, event_type: str, data: dict[str, Any]) -> None:
        event = {"id": new_id("evt"), "type": event_type,
                 "created_at": dt.datetime.now(dt.UTC).isoformat(), "data": data}
        secret = self.config.bank_webhook_secret
        self.delivery.send(Outgoing(
            self.config.holdfast_url + _WEBHOOK_PATH, orjson.dumps(event), "Bank-Signature",
            lambda ts, body: sign(secret, ts, body)))

    def _payment_data(self, p: BankPayment, **extra: Any) -> dict[str, Any]:
        return {"id": p.id, "end_to_end_id": p.body["end_to_end_id"], "amount": p.body["amount"],
                "currency": p.body["currency"], **extra}

    def fact(self, payment: BankPayment, status: str, reason: str | None = None) -> None:
        """Move a payment on and tell Holdfast (tests drive 'hold' payments with this)."""
        today = self.today()
        payment.status = status
        extra: dict[str, Any] = {"reason": reason} if reason else {}
        if status in ("settled", "returned"):
            extra["value_date"] = today
        if status == "settled":
            self._record(payment.id, -int(payment.body["amount"]), payment)
        if status == "returned":
            payment.return_id = new_id("rtn", 20)
            extra["return_id"] = payment.return_id
            self._record(payment.return_id, int(payment.body["amount"]), payment)
        self._webhook(f"payment.{status}", self._payment_data(payment, **extra))

    def _record(self, provider_id: str, amount: int, p: BankPayment) -> None:
        self.statement.append({"provider_id": provider_id, "date": self.today(),
                               "amount": amount, "currency": p.body["currency"],
                               "reference": p.body.get("reference")})

    def _live(self, payment: BankPayment) -> None:
        life = self.next_lives.popleft() if self.next_lives else (
            "reject" if self.rng.random() < self.config.reject_rate else "settle")
        if life == "hold":
            return
        self.fact(payment, "accepted")
        if life == "reject":
            self.fact(payment, "rejected", "beneficiary_account_closed")
        else:
            self.fact(payment, "settled")

    def credit(self, amount: int, currency: str, creditor: dict[str, str] | None,
               reference: str | None, payer: str = "A Payer") -> str:
        """Money arrives for Holdfast's customers: record it and send ``credit.received``."""
        transaction_id = new_id("btx", 24)
        self.statement.append({"provider_id": transaction_id, "date": self.today(),
                               "amount": amount,
                               "currency": currency, "reference": reference})
        self._webhook("credit.received", {
            "id": transaction_id, "amount": amount, "currency": currency, "creditor": creditor,
            "debtor": {"name": payer}, "reference": reference,
            "value_date": self.today()})
        return transaction_id

    def by_end_to_end(self, payment_id: str) -> list[BankPayment]:
        return [p for p in self.payments.values() if p.body.get("end_to_end_id") == payment_id]

    # -- the API Holdfast calls ------------------------------------------------------------
    def _authorised(self, request: web.Request) -> None:
        key = self.config.bank_api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            raise web.HTTPUnauthorized(text='{"error":{"code":"unauthorized"}}',
                                       content_type="application/json")

    def _fails(self) -> bool:
        return self.rng.random() < self.config.failure_rate

    async def payee_check(self, request: web.Request) -> web.Response:
        self._authorised(request)
        self.payee_checks_seen += 1
        if self._fails():
            return _error(503, "unavailable")
        body = orjson.loads(await request.read())
        identifier = _identifier(body)
        holder = self.directory.get(identifier or "")
        if holder is None:
            return web.json_response({"result": "no_match", "reason": "account_not_found"})
        result = compare_names(str(body.get("name", "")), holder)
        answer: dict[str, Any] = {"result": result}
        if result == "close_match":
            answer["name"] = holder
        return web.json_response(answer)

    async def submit(self, request: web.Request) -> web.Response:
        self._authorised(request)
        self.submissions_seen += 1
        key = request.headers.get("Idempotency-Key")
        if not key:
            return _error(400, "missing_idempotency_key")
        raw = await request.read()
        behaviour = self.next_submissions.popleft() if self.next_submissions else (
            "error" if self._fails() else
            "timeout" if self.rng.random() < self.config.timeout_rate else "ok")
        if behaviour == "error":
            return _error(503, "unavailable")
        if behaviour == "refuse":
            return _error(422, "invalid_account")
        digest = hashlib.sha256(raw).hexdigest()
        known = self.payments.get(key)
        if known is not None:
            if known.digest != digest:
                return _error(409, "idempotency_conflict")
            return web.json_response({"id": known.id, "status": known.status}, status=200)
        payment = BankPayment(new_id("bp", 24), key, digest, orjson.loads(raw))
        self.payments[key] = payment
        self._live(payment)
        if behaviour == "timeout":  # made, but the answer comes too late for the caller
            await asyncio.sleep(self.config.hang_s)
        return web.json_response({"id": payment.id, "status": "received"}, status=201)

    # -- control routes --------------------------------------------------------------------
    async def control_credit(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        tx = self.credit(int(body["amount"]), str(body.get("currency", "GBP")),
                         body.get("creditor"), body.get("reference"),
                         str(body.get("payer", "A Payer")))
        return web.json_response({"id": tx}, status=201)

    async def control_return(self, request: web.Request) -> web.Response:
        bank_id = request.match_info["id"]
        for payment in self.payments.values():
            if payment.id == bank_id and payment.status == "settled":
                self.fact(payment, "returned", "beneficiary_returned")
                return web.json_response({"id": bank_id, "return_id": payment.return_id})
        return _error(404, "no_settled_payment")

    async def control_statement(self, request: web.Request) -> web.Response:
        if request.query.get("format") == "jsonl":
            text = "".join(orjson.dumps(r).decode() + "\n" for r in self.statement)
            return web.Response(text=text, content_type="application/x-ndjson")
        return web.Response(text=statement_csv(self.statement), content_type="text/csv")

def bank_routes(find: Callable[[web.Request], SandboxBank]) -> list[web.RouteDef]:
    """The bank's routes; ``find`` gives the bank of the app serving a request."""

    def route(method: str, path: str, name: str) -> web.RouteDef:
        async def handler(request: web.Request) -> web.StreamResponse:
            answer: web.StreamResponse = await getattr(find(request), name)(request)
            return answer

        return web.route(method, path, handler)

    return [
        route("POST", "/bank/v1/payee-checks", "payee_check"),
        route("POST", "/bank/v1/payments", "submit"),
        route("POST", "/sandbox/bank/credits", "control_credit"),
        route("POST", "/sandbox/bank/payments/{id}/return", "control_return"),
        route("GET", "/sandbox/bank/statement", "control_statement"),
    ]


def statement_csv(records: list[dict[str, Any]]) -> str:
    lines = ["provider_id,date,amount,currency,reference"]
    for r in records:
        reference = str(r.get("reference") or "").replace('"', '""')
        lines.append(f'{r["provider_id"]},{r["date"]},{r["amount"]},{r["currency"]},'
                     f'"{reference}"')
    return "\n".join(lines) + "\n"


def _error(status: int, code: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": code}}, status=status)
