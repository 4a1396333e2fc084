"""Gentle demo traffic for ``make run``: every couple of seconds one thing a newcomer can watch
flow through Holdfast: a card authorisation followed (later, through the network) by its
clearing or reversal, now and then a Stripe-format authorisation, an outbound payment (payee
check, hold, outbox, bank, webhooks) or an inbound credit (virtual account, messy reference or
suspense). Uses the demo data ``holdfast demo`` seeds."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from typing import Any, Final

import aiohttp
import orjson

from clearing.payments.model import mask_name, new_id
from clearing.sandbox.app import DEMO_DIRECTORY, Sandbox

__all__ = ["run_demo"]

log = logging.getLogger("holdfast.sandbox.demo")

_CARDS: Final = (("card-alice", "GBP"), ("card-bob", "USD"))
_ACCOUNT: Final = "acct-alice"
_INTERVAL_S: Final = 2.0


async def _admin(s: Sandbox, method: str, path: str, body: Any = None,
                 key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {s.config.admin_token}"}
    if key:
        headers["Idempotency-Key"] = key
    data = None if body is None else orjson.dumps(body)
    async with s.session.request(method, s.config.holdfast_url + path, data=data,
                                 headers=headers) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else None


async def _wait_for_holdfast(s: Sandbox) -> None:
    for _ in range(120):
        try:
            async with s.session.get(s.config.holdfast_url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(1)


async def _card(s: Sandbox, rng: random.Random) -> str:
    card, currency = rng.choice(_CARDS)
    amount = rng.randrange(150, 2_500)
    # the demo's USD card only works in North America (its policy's country_allow)
    answer = await s.processor.authorize(card, amount, currency,
                                         country="US" if currency == "USD" else "GB")
    if answer.get("decision") == "approve":
        approved = int(answer["approved_amount"])
        if rng.random() < 0.7:
            s.processor.event("authorization.clearing", answer["id"], approved, currency, True)
            then = "clearing follows"
        else:
            s.processor.event("authorization.reversal", answer["id"], approved, currency)
            then = "reversal follows"
        return f"card {card}: {currency} {amount} approved, {then}"
    return f"card {card}: {currency} {amount} declined ({answer.get('reason')})"


async def _payment(s: Sandbox, rng: random.Random) -> str:
    identifier, holder = rng.choice(sorted(DEMO_DIRECTORY.items()))
    # now and then a typo: a close match the customer would have to confirm
    name = holder if rng.random() < 0.8 else holder.replace("a", "e", 1)
    body = {"account_id": _ACCOUNT, "amount": rng.randrange(100, 1_500), "currency": "GBP",
            "beneficiary": {"name": name, "sort_code": identifier[3:9],
                            "account_number": identifier[10:]},
            "reference": f"DEMO {rng.randrange(1000, 9999)}"}
    status, answer = await _admin(s, "POST", "/v1/payments", body, key=new_id("demo"))
    state = answer.get("status") if isinstance(answer, dict) else answer
    return f"payment to {mask_name(name)}: HTTP {status}, {state}"


async def _credit(s: Sandbox, rng: random.Random, va: dict[str, Any] | None) -> str:
    amount = rng.randrange(500, 5_000)
    choice = rng.random()
    if va is not None and choice < 0.5:
        s.bank.credit(amount, "GBP", {"sort_code": va["sort_code"],
                                      "account_number": va["account_number"]}, "salary")
        return f"credit GBP {amount} to acct-alice's virtual account"
    if va is not None and choice < 0.8:
        code = va["reference_code"]
        messy = f"inv 42 / {code[:2].lower()}-{code[2:5]} {code[5:]}."
        s.bank.credit(amount, "GBP", None, messy)
        return f"credit GBP {amount} with messy reference {messy!r}"
    s.bank.credit(amount, "GBP", None, "no idea who this is for")
    return f"credit GBP {amount} nobody can be matched to (suspense)"


async def run_demo(s: Sandbox, stop: asyncio.Event) -> None:
    rng = random.Random(s.config.seed)  # noqa: S311 (a simulation, not a secret)
    await _wait_for_holdfast(s)
    va = None
    if s.config.admin_token:
        status, answer = await _admin(s, "POST", f"/v1/accounts/{_ACCOUNT}/virtual-accounts")
        va = answer if status in (200, 201) else None
    for tick in itertools.count():
        try:
            if tick % 7 == 3 and s.config.admin_token:
                line = await _payment(s, rng)
            elif tick % 9 == 5:
                line = await _credit(s, rng, va)
            elif tick % 5 == 2 and s.config.stripe_secret:
                answer = await s.processor.stripe_authorize("card-alice", 320, "GBP")
                line = f"stripe authorization for card-alice: approved={answer.get('approved')}"
            else:
                line = await _card(s, rng)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            line = f"holdfast not answering ({type(exc).__name__}); retrying"
        print(f"sandbox: {line}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=_INTERVAL_S)
            return
        except TimeoutError:
            continue
