"""Crash safety: a real ``holdfast serve`` process is killed with SIGKILL while authorisations are
in flight, then restarted. Whatever the processor was told stands, retries of the unanswered
requests get answers that agree with the ledger, and the ledger still proves its invariants."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from authz.settings import Settings
from authz.signatures import sign_native
from holds.verify import verify
from tests.support import Api, ServerProcess, auth_body, free_port

pytestmark = pytest.mark.slow

CLIENTS = 8
KILL_AFTER_APPROVALS = 800  # the server dies mid-stream, once the stream is well under way


@pytest.fixture
def server_process(settings: Settings, api: Api, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(settings, api.secret, free_port(), tmp_path / "holdfast.log")
    try:
        yield proc
    finally:
        proc.kill_all()


@dataclass
class Stream:
    """What the processor side saw: every request sent, and the answers that came back."""

    sent: dict[str, bytes] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)
    approvals: int = 0


async def post_signed(session: aiohttp.ClientSession, base_url: str, secret: str, raw: bytes
                      ) -> dict[str, Any]:
    headers = {"Content-Type": "application/json",
               "Holdfast-Signature": sign_native(secret, int(time.time()), raw)}
    async with session.post(base_url + "/v1/authorize", data=raw, headers=headers) as resp:
        body = orjson.loads(await resp.read())
        assert resp.status == 200, body
        assert isinstance(body, dict)
        return body


async def card_holder(stream: Stream, session: aiohttp.ClientSession, server: ServerProcess,
                      secret: str, card: str, client: int) -> None:
    """One processor connection sending authorisations back to back until the server is gone.
    One in ten asks for more than the account holds (a decline)."""
    n = 0
    while True:
        n += 1
        amount = 2_000_000 if n % 10 == 3 else 100 + client * 10 + n % 7
        body = auth_body(card, amount)
        raw = orjson.dumps(body)
        stream.sent[body["id"]] = raw
        try:
            answer = await post_signed(session, server.base_url, secret, raw)
        except (aiohttp.ClientError, OSError):
            stream.unanswered.append(body["id"])  # the server died with this one in flight
            return
        stream.answers[body["id"]] = answer
        if answer["decision"] == "approve":
            stream.approvals += 1
            if stream.approvals == KILL_AFTER_APPROVALS:
                server.current.send_signal(signal.SIGKILL)


async def recorded(db: asyncpg.Pool, ids: list[str]) -> dict[str, tuple[str, int, str]]:
    rows = await db.fetch(
        "SELECT provider_id, decision, approved_amount, reason FROM authorization_requests"
        " WHERE provider = 'native' AND provider_id = ANY($1::text[])", ids)
    return {r["provider_id"]: (r["decision"], r["approved_amount"], r["reason"]) for r in rows}


def said(answer: dict[str, Any]) -> tuple[str, int, str]:
    return answer["decision"], answer["approved_amount"], answer["reason"]


async def test_sigkill_mid_stream_loses_no_approval_and_overspends_nothing(
        api: Api, db: asyncpg.Pool, server_process: ServerProcess) -> None:
    funds = 1_000_000
    acct = await api.account("GBP", funds=funds)
    card = await api.card(acct)
    stream = Stream()
    timeout = aiohttp.ClientTimeout(total=10)

    # 1. a stream of authorisations; the server is SIGKILLed in the middle of it
    server_process.start()
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=50)) as session:
        await server_process.wait_healthy(session)
        await asyncio.gather(*(card_holder(stream, session, server_process, api.secret, card, c)
                               for c in range(CLIENTS)))
    server_process.kill()
    assert server_process.current.returncode == -signal.SIGKILL
    assert stream.approvals >= KILL_AFTER_APPROVALS
    assert len(stream.unanswered) == CLIENTS  # every connection ends on the dead server

    # what the ledger had committed for the unanswered ones when the server died
    before = await recorded(db, stream.unanswered)

    # 2. restart; the processor retries what got no answer, and a few answered ones too
    answered_approvals = [i for i, a in stream.answers.items() if a["decision"] == "approve"]
    answered_declines = [i for i, a in stream.answers.items() if a["decision"] == "decline"]
    assert answered_declines, "the stream should have met a decline for funds"
    retried_answered = answered_approvals[-3:] + answered_declines[-2:]
    server_process.start()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await server_process.wait_healthy(session)
        retries = await asyncio.gather(*(
            post_signed(session, server_process.base_url, api.secret, stream.sent[i])
            for i in [*stream.unanswered, *retried_answered]))
    retried = dict(zip([*stream.unanswered, *retried_answered], retries, strict=True))

    # answers to retries agree with the ledger: a decision committed before the crash is
    # replayed as it was; one that never committed is made now, once
    after = await recorded(db, list(retried))
    for request_id, answer in retried.items():
        assert answer["id"] == request_id
        assert after[request_id] == said(answer), request_id
        if request_id in before:
            assert before[request_id] == said(answer), request_id
        if request_id in stream.answers:
            assert answer == stream.answers[request_id], request_id

    # 3. the ledger: verified, and every approval the processor heard of is held in full
    async with db.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report.render()

    seen = {**stream.answers, **retried}
    approved_seen = {i: a["approved_amount"] for i, a in seen.items()
                     if a["decision"] == "approve"}
    holds = {r["id"]: (r["authorized"], r["remaining"], r["state"], r["auth_state"])
             for r in await db.fetch(
                 "SELECT h.id, h.authorized, h.remaining, h.state, a.state AS auth_state"
                 " FROM holds h JOIN authorizations a ON a.id = h.id WHERE h.account_id = $1",
                 acct)}
    for request_id, amount in approved_seen.items():
        assert holds.get(request_id) == (amount, amount, "open", "pending"), request_id
    declined_seen = {i for i, a in seen.items() if a["decision"] == "decline"}
    assert not declined_seen & holds.keys()

    # holds the processor never heard of can only come from requests sent and left unanswered
    unheard = holds.keys() - approved_seen.keys()
    assert unheard <= set(stream.unanswered) - retried.keys()
    open_total = sum(remaining for _, remaining, state, _ in holds.values() if state == "open")
    row = await db.fetchrow("SELECT posted, held FROM accounts WHERE id = $1", acct)
    assert row is not None
    assert (row["posted"], row["held"]) == (funds, open_total)
    assert open_total == sum(approved_seen.values())
    assert await api.balances(acct) == {
        "posted": funds, "held": open_total, "available": funds - open_total}
