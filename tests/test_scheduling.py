"""``HOLDFAST_REALTIME_PRIORITY``: ``holdfast serve`` runs its event loop under ``SCHED_FIFO``
when asked and permitted, refuses to start when it is not permitted, and refuses real-time
workers that would leave no core to PostgreSQL and Redis (authz/scheduling.py)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from authz import cli
from authz.scheduling import SchedulingError, check_workers, current, run_realtime
from authz.settings import Settings, SettingsError
from authz.signatures import sign_native
from tests.support import REPO, Api, ServerProcess, auth_body, free_port

PRIORITY = 7
NOBODY = 65534


def may_use_realtime(priority: int) -> bool:
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= priority


def serve_env(settings: Settings, secret: str, port: int, priority: int) -> dict[str, str]:
    return ServerProcess(settings, secret, port, Path(os.devnull), extra(priority)).env


def extra(priority: int) -> dict[str, str]:
    return {"HOLDFAST_PG_POOL_SIZE": "4", "HOLDFAST_DECISION_DEADLINE_MS": "5000",
            "HOLDFAST_REDIS_TIMEOUT_MS": "2000",
            "HOLDFAST_REALTIME_PRIORITY": str(priority)}


@pytest.fixture
def realtime_server(settings: Settings, api: Api, tmp_path: Path) -> Iterator[ServerProcess]:
    if not may_use_realtime(PRIORITY):
        pytest.skip("this user may not use real-time priority (not root, RLIMIT_RTPRIO 0)")
    server = ServerProcess(settings, api.secret, free_port(), tmp_path / "serve.log",
                           extra(PRIORITY))
    try:
        yield server
    finally:
        server.kill_all()


async def test_a_server_asked_for_realtime_priority_decides_under_sched_fifo(
        api: Api, realtime_server: ServerProcess) -> None:
    acct = await api.account("GBP", funds=10_000)
    card = await api.card(acct)

    realtime_server.start()
    async with aiohttp.ClientSession() as session:
        await realtime_server.wait_healthy(session)
        async with session.get(realtime_server.base_url + "/healthz") as resp:
            pid = int((await resp.json())["pid"])
    assert pid == realtime_server.current.pid
    # the loop's thread (the process's main thread) runs under SCHED_FIFO at the priority
    # asked for, and what it would start inherits none of it
    policy = os.sched_getscheduler(pid)
    assert policy & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
    assert policy & os.SCHED_RESET_ON_FORK
    assert os.sched_getparam(pid).sched_priority == PRIORITY

    raw = orjson.dumps(auth_body(card, 2_500))
    headers = {"Content-Type": "application/json",
               "Holdfast-Signature": sign_native(api.secret, int(time.time()), raw)}
    base_url = realtime_server.base_url
    async with aiohttp.ClientSession() as session:
        async with session.post(base_url + "/v1/authorize", data=raw, headers=headers) as resp:
            assert resp.status == 200
            body = orjson.loads(await resp.read())
        async with session.get(base_url + "/metrics") as resp:
            exposition = await resp.text()
    assert body["decision"] == "approve"
    assert (await api.balances(acct))["held"] == 2_500
    assert f"holdfast_realtime_priority {float(PRIORITY)}" in exposition


def test_without_the_privilege_serve_refuses_to_start_and_says_what_it_needs(
        settings: Settings, api: Api) -> None:
    """In a child process stripped of root (or never root): ``holdfast serve`` exits 2 with a
    configuration error naming what it needs, and never listens."""
    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= 99:
        pytest.skip("this user may use real-time priority without root")
    port = free_port()
    env = serve_env(settings, api.secret, port, 99)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run the command, report through its exit status
        code = 70
        signal.alarm(30)  # were the setting ignored, the server would run: end it
        try:
            os.dup2(write_end, 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 (the child exits below)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.environ.clear()
            os.environ.update(env)
            code = cli.main(["serve"])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as err:
        stderr = err.read().decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 2, stderr
    assert "configuration error: cannot run the server at real-time priority 99" in stderr
    assert "CAP_SYS_NICE" in stderr and "HOLDFAST_REALTIME_PRIORITY" in stderr
    assert "Traceback" not in stderr
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing ever listened there


def test_realtime_workers_must_leave_a_core_for_postgresql_and_redis(
        settings: Settings, api: Api) -> None:
    cores = len(os.sched_getaffinity(0))
    env = serve_env(settings, api.secret, free_port(), PRIORITY)
    done = subprocess.run(
        [sys.executable, "-m", "authz.cli", "serve", "--workers", str(cores)], cwd=REPO,
        env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert (f"{cores} workers at real-time priority on {cores} cores would leave PostgreSQL "
            "and Redis no core").encode() in done.stderr
    # one fewer is allowed, and without real-time priority any number within MAX_WORKERS
    check_workers(cores - 1, PRIORITY)
    check_workers(cores, 0)
    with pytest.raises(SchedulingError):
        check_workers(cores + 1, 1)


def test_the_priority_setting_is_checked() -> None:
    assert Settings.from_env({}).realtime_priority == 0
    assert Settings.from_env({"HOLDFAST_REALTIME_PRIORITY": "10"}).realtime_priority == 10
    for bad in ("100", "-1", "high", "1.5"):
        with pytest.raises(SettingsError, match="HOLDFAST_REALTIME_PRIORITY"):
            Settings.from_env({"HOLDFAST_REALTIME_PRIORITY": bad})


def in_child(action: Callable[[], object]) -> bool:
    """Whether ``action`` runs without an error in a forked child (the test process keeps its
    own limits)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            action()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_user_without_privileges_may_with_an_rtprio_limit() -> None:
    """The image runs as a user without privileges: ``--ulimit rtprio=N`` is its way in. A child
    that drops root after raising its RLIMIT_RTPRIO to the priority gets SCHED_FIFO; one
    priority above the limit is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to raise RLIMIT_RTPRIO and then drop to an ordinary user")
    if not in_child(lambda: resource.setrlimit(resource.RLIMIT_RTPRIO, (PRIORITY, PRIORITY))):
        # raising the hard limit needs CAP_SYS_RESOURCE, which a container's root may lack
        pytest.skip("this root may not raise RLIMIT_RTPRIO (no CAP_SYS_RESOURCE)")
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            resource.setrlimit(resource.RLIMIT_RTPRIO, (PRIORITY, PRIORITY))
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                run_realtime(PRIORITY + 1)
                code = 71  # above the limit, yet allowed
            except SchedulingError:
                run_realtime(PRIORITY)
                code = 0 if current() == PRIORITY else 72
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
