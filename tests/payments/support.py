"""The payments tests' world: the Holdfast API, the database, a payments worker the test drives,
the sandbox bank, and helpers that read like the flows ("pay Jane Smith 25.00 from a funded
account, let the bank settle it")."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson

from clearing.payments.worker import PaymentsWorker
from clearing.sandbox.app import Sandbox
from tests.support import Api, FakeClock, Reply, uid

BANK_SECRET: Final = "test-bank-webhook-secret"
BANK_API_KEY: Final = "test-bank-api-key-0001"
FEE: Final = 25  # GBP minor units per outbound payment (tests' HOLDFAST_PAYMENT_FEES)


def beneficiary(name: str, sort_code: str = "200000", account_number: str | None = None
                ) -> dict[str, str]:
    # account numbers from a per-test id: payees never collide across tests
    number = account_number or str(abs(hash(uid("n"))) % 10**8).zfill(8)
    return {"name": name, "sort_code": sort_code, "account_number": number}


@dataclass
class Flow:
    api: Api
    db: asyncpg.Pool
    worker: PaymentsWorker
    sandbox: Sandbox
    clock: FakeClock
    sandbox_url: str

    def payee(self, holder: str, given: dict[str, str]) -> None:
        """Tell the bank who holds the account ``given`` names."""
        key = f"GB:{given['sort_code']}/{given['account_number']}"
        self.sandbox.bank.directory[key] = holder

    async def account(self, funds: int = 10_000) -> str:
        return await self.api.account("GBP", funds=funds)

    async def pay(self, account_id: str, amount: int, to: dict[str, str],
                  reference: str = "INVOICE 1", key: str | None = None,
                  currency: str = "GBP") -> Reply:
        body = {"account_id": account_id, "amount": amount, "currency": currency,
                "beneficiary": to, "reference": reference}
        return await self.api.admin("POST", "/v1/payments", body,
                                    headers={"Idempotency-Key": key or uid("key")})

    async def payment(self, payment_id: str) -> dict[str, Any]:
        r = await self.api.admin("GET", f"/v1/payments/{payment_id}", scope="ops")
        assert r.status == 200, r.body
        assert isinstance(r.body, dict)
        return r.body

    async def status(self, payment_id: str) -> str:
        return str((await self.payment(payment_id))["status"])

    async def settle(self, rounds: int = 10) -> None:
        """Let everything in flight land: the bank's webhooks delivered, the worker's outbox
        and inbox drained, until neither has anything left."""
        for _ in range(rounds):
            await self.sandbox.idle()
            before = (self.sandbox.delivery.delivered, self.sandbox.bank.submissions_seen)
            await self.worker.drain()
            await asyncio.sleep(0)
            after = (self.sandbox.delivery.delivered, self.sandbox.bank.submissions_seen)
            if before == after and not self.sandbox.delivery._tasks:
                return

    async def balances(self, account_id: str) -> dict[str, int]:
        return await self.api.balances(account_id)

    async def entries(self, account_id: str, **query: str) -> Reply:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return await self.api.admin("GET", f"/v1/accounts/{account_id}/entries?{qs}",
                                    scope="customer")

    async def virtual_account(self, account_id: str) -> dict[str, Any]:
        r = await self.api.admin("POST", f"/v1/accounts/{account_id}/virtual-accounts")
        assert r.status in (200, 201), r.body
        assert isinstance(r.body, dict)
        return r.body

    async def credit(self, amount: int, creditor: dict[str, str] | None, reference: str | None,
                     currency: str = "GBP") -> str:
        """Money arrives at the bank (through the sandbox's control route, over HTTP)."""
        r = await self.api.session.post(
            f"{self.sandbox_url}/sandbox/bank/credits",
            json={"amount": amount, "currency": currency, "creditor": creditor,
                  "reference": reference, "payer": "Sam Payer"})
        assert r.status == 201
        transaction_id = str((await r.json())["id"])
        r.release()
        return transaction_id

    async def bank_webhook(self, body: dict[str, Any], secret: str = BANK_SECRET,
                           header: str | None = "sign") -> Reply:
        """A webhook as the bank signs it (``header=None``: unsigned)."""
        raw = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if header == "sign":
            headers["Bank-Signature"] = self.api.sign(raw, secret=secret)
        elif header is not None:
            headers["Bank-Signature"] = header
        return await self.api.raw("POST", "/providers/bank/webhooks", raw, headers)

    async def credited(self, transaction_id: str) -> asyncpg.Record:
        row = await self.db.fetchrow(
            "SELECT account_id, amount, matched_by, suspense_reason FROM inbound_credits"
            " WHERE bank_transaction_id = $1", transaction_id)
        assert row is not None, f"credit {transaction_id} not applied"
        return row
