"""Crash safety of the consumers: two real ``holdfast consumers`` processes apply a stream of
native clearings and reversals while they are SIGKILLed at random points and restarted. Every
event the API acknowledged is applied exactly once: its inbox row is ``applied``, it has one
ledger operation, the balances are the sums the events call for, and ``verify`` is clean."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
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
from holds.verify import verify
from tests.support import Api, free_port, kill_all, uid

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONSUMERS = 2
CARDS = 4
AUTHORIZATIONS = 150  # two events each: a clearing and a reversal
BURST = 30
FUNDS = 1_000_000
MIN_KILLS = 4
STARTUP_S = 20.0
APPLY_DEADLINE_S = 45.0


class Consumers:
    """``python -m authz.cli consumers`` processes, each on a metrics port of its own, output
    appended to one log file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.current: list[subprocess.Popen[bytes]] = []
        self.all: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.kills: list[int] = []  # events of the test still pending at each kill

    def _env(self, metrics_port: int) -> dict[str, str]:
        return {
            **os.environ,
            "HOLDFAST_DATABASE_URL": self.settings.database_url,
            "HOLDFAST_REDIS_URL": self.settings.redis_url,
            "HOLDFAST_REDIS_PREFIX": self.settings.redis_prefix,
            "HOLDFAST_HOST": "127.0.0.1",
            "HOLDFAST_CONSUMER_METRICS_PORT": str(metrics_port),
            # the payments worker inside must reach no bank: a port nothing listens on
            "HOLDFAST_BANK_URL": f"http://127.0.0.1:{free_port()}/bank",
            "HOLDFAST_SWEEP_INTERVAL_S": "3600",
            "HOLDFAST_LOG_LEVEL": "INFO",
        }

    def _spawn(self) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "authz.cli", "consumers"], cwd=REPO,
                                    env=self._env(port), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.all.append(proc)
        return proc, port

    def start(self) -> None:
        for _ in range(CONSUMERS):
            proc, port = self._spawn()
            self.current.append(proc)
            self.ports.append(port)

    def kill_and_restart(self, index: int, pending: int) -> None:
        proc = self.current[index]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL
            self.kills.append(pending)
        self.current[index], self.ports[index] = self._spawn()

    async def wait_running(self) -> None:
        """Every current process serves its metrics (it is past start-up)."""
        deadline = time.monotonic() + STARTUP_S
        async with aiohttp.ClientSession() as session:
            for proc, port in zip(self.current, self.ports, strict=True):
                while True:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"consumer did not start (exit {proc.poll()}):\n"
                                    f"{self.log_path.read_text(errors='replace')[-2000:]}")
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.05)  # bounded by the deadline

    def stop(self) -> None:
        for proc in self.current:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.current:
            proc.wait(timeout=20)
            assert proc.returncode == 0, self.log_path.read_text(errors="replace")[-2000:]

    def kill_all(self) -> None:
        kill_all(self.all)


@pytest.fixture
def consumers(settings: Settings, tmp_path: Path) -> Iterator[Consumers]:
    c = Consumers(settings, tmp_path / "consumers.log")
    try:
        yield c
    finally:
        c.kill_all()


@dataclass
class Plan:
    """What the processor will send, and what the ledger must show once it is all applied."""

    events: list[dict[str, Any]] = field(default_factory=list)
    expected: dict[str, tuple[int, int]] = field(default_factory=dict)  # account: posted, held


async def _plan(api: Api, rng: random.Random) -> Plan:
    plan = Plan()
    cards = []
    for _ in range(CARDS):
        account = await api.account("GBP", funds=FUNDS)
        cards.append((account, await api.card(account)))
    posted = {a: FUNDS for a, _ in cards}
    held = {a: 0 for a, _ in cards}
    for i in range(AUTHORIZATIONS):
        account, card = cards[i % CARDS]
        amount = rng.randint(1_000, 5_000)
        r = await api.authorize(card, amount)
        assert (r.status, r.body["decision"]) == (200, "approve"), r.body
        cleared = rng.randint(1, amount // 2)
        reversed_ = rng.randint(1, amount - cleared)
        for type_, value in (("authorization.clearing", cleared),
                             ("authorization.reversal", reversed_)):
            plan.events.append({"id": uid("evt"), "type": type_, "authorization_id": r.body["id"],
                                "amount": value, "currency": "GBP"})
        posted[account] -= cleared
        held[account] += amount - cleared - reversed_
    rng.shuffle(plan.events)
    plan.expected = {a: (posted[a], held[a]) for a in posted}
    return plan


async def _post(api: Api, event: dict[str, Any]) -> str:
    raw = orjson.dumps(event)
    r = await api.raw("POST", "/v1/events", raw, {"Content-Type": "application/json",
                                                  "Holdfast-Signature": api.sign(raw)})
    assert r.status == 202, r.body
    return str(r.body["status"])


async def _pending(db: asyncpg.Pool, ids: list[str]) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM inbox_events WHERE provider = 'native' AND status = 'pending'"
        " AND provider_event_id = ANY($1::text[])", ids))


async def _kill_soon(consumers: Consumers, db: asyncpg.Pool, ids: list[str],
                     rng: random.Random) -> None:
    """SIGKILL one consumer a random few milliseconds from now, once events of the burst are
    stored and waiting (on a slow machine the first moment may find none yet), then start a
    new one."""
    await asyncio.sleep(rng.uniform(0.0, 0.05))
    pending = await _pending(db, ids)
    waited_until = time.monotonic() + 0.5
    while pending == 0 and time.monotonic() < waited_until:
        await asyncio.sleep(0.005)  # bounded by waited_until
        pending = await _pending(db, ids)
    # the kill-and-wait blocks for a few milliseconds: off the event loop
    await asyncio.to_thread(consumers.kill_and_restart, rng.randrange(CONSUMERS), pending)


async def _flow(api: Api, db: asyncpg.Pool, plan: Plan, consumers: Consumers,
                rng: random.Random, acknowledged: set[str]) -> None:
    """The processor's side: events in bursts, a little apart; during most bursts a consumer is
    SIGKILLed at a random moment (while the events are being stored and applied)."""
    ids = [e["id"] for e in plan.events]
    bursts = [plan.events[i:i + BURST] for i in range(0, len(plan.events), BURST)]
    for n, burst in enumerate(bursts):
        posts = asyncio.gather(*(_post(api, e) for e in burst))
        if n % 3 != 2:  # two bursts in three
            await _kill_soon(consumers, db, ids, rng)
        statuses = await posts
        assert set(statuses) == {"accepted"}
        acknowledged.update(e["id"] for e in burst)
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def _states(db: asyncpg.Pool, ids: list[str]) -> dict[str, list[str]]:
    rows = await db.fetch(
        "SELECT provider_event_id, status FROM inbox_events"
        " WHERE provider = 'native' AND provider_event_id = ANY($1::text[])", ids)
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["provider_event_id"], []).append(r["status"])
    return out


async def _wait_all_applied(db: asyncpg.Pool, ids: list[str], consumers: Consumers) -> None:
    deadline = time.monotonic() + APPLY_DEADLINE_S
    while time.monotonic() < deadline:
        states = await _states(db, ids)
        if len(states) == len(ids) and all(s == ["applied"] for s in states.values()):
            return
        await asyncio.sleep(0.2)  # bounded by the deadline
    waiting = {i: s for i, s in (await _states(db, ids)).items() if s != ["applied"]}
    pytest.fail(f"{len(waiting)} acknowledged event(s) not applied: {list(waiting.items())[:5]}"
                f"\n{consumers.log_path.read_text(errors='replace')[-2000:]}")


async def test_sigkilled_consumers_apply_every_acknowledged_event_exactly_once(
        api: Api, db: asyncpg.Pool, consumers: Consumers) -> None:
    rng = random.Random(20_240_607)
    plan = await _plan(api, rng)
    consumers.start()
    await consumers.wait_running()

    acknowledged: set[str] = set()
    await _flow(api, db, plan, consumers, rng, acknowledged)
    # consumers died with events of the stream waiting to be applied
    assert len([p for p in consumers.kills if p > 0]) >= MIN_KILLS, consumers.kills

    # the processor delivers some events again (its own retries): acknowledged, not reapplied
    again = rng.sample(plan.events, 20)
    assert {await _post(api, e) for e in again} == {"duplicate"}

    await consumers.wait_running()
    ids = sorted(acknowledged)
    assert len(ids) == len(plan.events)
    await _wait_all_applied(db, ids, consumers)
    consumers.stop()

    # exactly once: one inbox row, applied, and one ledger operation per acknowledged event
    states = await _states(db, ids)
    assert all(s == ["applied"] for s in states.values())
    ops = await db.fetch(
        "SELECT op_id, count(*) AS n FROM ledger_operations WHERE op_id = ANY($1::text[])"
        " GROUP BY op_id", [f"native:{i}" for i in ids])
    assert {r["op_id"]: r["n"] for r in ops} == {f"native:{i}": 1 for i in ids}
    for account, (posted, held) in plan.expected.items():
        assert await api.balances(account) == {
            "posted": posted, "held": held, "available": posted - held}, account
    async with db.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report.render()
