"""``holdfast serve --workers 2``: two server processes share the port (SO_REUSEPORT), each with
its own metrics port; the parent forwards SIGTERM and exits when they have, and stops the rest
when one dies (it restarts none)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz.settings import Settings
from authz.signatures import sign_native
from tests.support import Api, auth_body, server_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
STARTUP_S = 30.0
STOP_S = 20.0
BATCH = 40


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (bounded tries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def ppid_of(pid: int) -> int | None:
    """The parent pid from /proc, or None once the process is gone (reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    # the command name (field 2) may hold spaces: fields after its closing parenthesis
    return int(stat.rpartition(")")[2].split()[1])


class Workers:
    """``python -m authz.cli serve --workers 2`` in a session of its own, so that teardown can
    kill the parent and every worker it started at once."""

    def __init__(self, settings: Settings, secret: str, log_path: Path) -> None:
        self.metrics_port = free_ports(WORKERS)
        self.port = next(port for port in (free_ports(1) for _ in range(50))
                         if not self.metrics_port <= port < self.metrics_port + WORKERS)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = server_env(settings, secret, self.port, {
            "HOLDFAST_WORKER_METRICS_PORT": str(self.metrics_port),
            "HOLDFAST_PG_POOL_SIZE": "4",
            # correctness, not time, on a shared machine (tests/test_resilience.py does time)
            "HOLDFAST_DECISION_DEADLINE_MS": "5000",
            "HOLDFAST_REDIS_TIMEOUT_MS": "2000",
        })
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "authz.cli", "serve", "--workers", str(WORKERS)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self.proc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def worker_pids(self) -> set[int]:
        """Poll /healthz on fresh connections until both workers have answered: the kernel
        spreads new connections over the processes sharing the port."""
        assert self.proc is not None
        seen: set[int] = set()
        deadline = time.monotonic() + STARTUP_S
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            seen.add(int((await resp.json())["pid"]))
                if len(seen) == WORKERS and await self.metrics_up(session):
                    return seen
                await asyncio.sleep(0.02)  # bounded by the deadline
        pytest.fail(f"workers did not all answer (saw {seen}, exit {self.proc.poll()}):\n"
                    f"{self.log()}")

    async def metrics_up(self, session: aiohttp.ClientSession) -> bool:
        try:
            await self.worker_metrics(session)
        except (aiohttp.ClientError, OSError):
            return False
        return True

    async def worker_metrics(self, session: aiohttp.ClientSession) -> list[str]:
        out = []
        for i in range(WORKERS):
            async with session.get(f"http://127.0.0.1:{self.metrics_port + i}/metrics") as resp:
                assert resp.status == 200
                out.append(await resp.text())
        return out

    def wait_exit(self) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit within {STOP_S} s:\n{self.log()}")

    def kill_all(self) -> None:
        # the session started with the parent holds the workers too: nothing outlives the test
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@pytest.fixture
def workers(settings: Settings, api: Api, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, api.secret, tmp_path / "workers.log")
    try:
        yield w
    finally:
        w.kill_all()


def decisions_counted(exposition: str) -> float:
    return sum(sample.value
               for family in text_string_to_metric_families(exposition)
               if family.name == "holdfast_decisions"
               for sample in family.samples if sample.name == "holdfast_decisions_total")


async def authorize_on_new_connections(base_url: str, secret: str, card: str, count: int
                                       ) -> list[dict[str, object]]:
    connector = aiohttp.TCPConnector(force_close=True, limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> dict[str, object]:
            raw = orjson.dumps(auth_body(card, 100))
            headers = {"Content-Type": "application/json",
                       "Holdfast-Signature": sign_native(secret, int(time.time()), raw)}
            async with session.post(base_url + "/v1/authorize", data=raw,
                                    headers=headers) as resp:
                assert resp.status == 200
                body = orjson.loads(await resp.read())
                assert isinstance(body, dict)
                return body

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_two_workers_share_the_port_and_stop_together(api: Api, workers: Workers) -> None:
    acct = await api.account("GBP", funds=100_000)
    card = await api.card(acct)
    parent = workers.start()

    pids = await workers.worker_pids()
    assert len(pids) == WORKERS
    assert all(ppid_of(pid) == parent.pid for pid in pids)  # the supervisor's own children

    answers = await authorize_on_new_connections(workers.base_url, api.secret, card, BATCH)
    assert {a["decision"] for a in answers} == {"approve"}
    assert (await api.balances(acct))["held"] == BATCH * 100

    # each worker decided some of them, and the per-worker metrics add up to the batch
    async with aiohttp.ClientSession() as session:
        per_worker = [decisions_counted(text) for text in await workers.worker_metrics(session)]
    assert all(n > 0 for n in per_worker), per_worker
    assert sum(per_worker) == BATCH

    parent.send_signal(signal.SIGTERM)
    assert workers.wait_exit() == 0, workers.log()
    assert all(ppid_of(pid) is None for pid in pids)  # stopped and reaped


async def test_a_dead_worker_stops_the_set(api: Api, workers: Workers) -> None:
    """No restart: one worker killed, the other is stopped and the parent reports the death,
    so the process manager above restarts the whole set."""
    parent = workers.start()
    pids = await workers.worker_pids()
    victim, survivor = sorted(pids)
    os.kill(victim, signal.SIGKILL)
    assert workers.wait_exit() == 128 + signal.SIGKILL, workers.log()
    assert ppid_of(survivor) is None
    assert parent.returncode == 128 + signal.SIGKILL


STUBBORN = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).touch()
time.sleep(60)
"""


def test_workers_that_ignore_sigterm_are_killed_at_the_stop_timeout(tmp_path: Path) -> None:
    """The supervisor bounds a stop: workers still alive after the timeout are killed. (Run in
    a process of its own: the supervisor reaps any child of the process it runs in.)"""
    supervisor = (
        "import sys\n"
        "from authz.workers import supervise\n"
        f"stubborn = {STUBBORN!r}\n"
        f"ready = {str(tmp_path)!r}\n"
        "sys.exit(supervise(2, lambda i: [sys.executable, '-c', stubborn, f'{ready}/ready-{i}'],"
        " stop_timeout_s=1))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", supervisor], cwd=REPO,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # bounded by the deadline
        assert len(list(tmp_path.glob("ready-*"))) == 2
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_S) == 128 + signal.SIGKILL
        assert time.monotonic() - started < STOP_S
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
