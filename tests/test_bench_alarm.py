"""The open-loop client's alarm (benchmarks/alarm.py) and its use by the load generator: a request
is never sent before it is due, with either timer. (How *late* it is sent is a timing, measured
in the benchmark reports' "send lag" column, not asserted here.)"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import uvloop

from benchmarks import loadgen, machine
from benchmarks.alarm import Alarm, lateness, timerfd_available
from tests.support import REPO


def _fire_times(loop: asyncio.AbstractEventLoop, precise: bool, delays: list[float]
                ) -> list[tuple[float, float]]:
    """(due, fired) for each delay, one alarm set again after each firing."""
    out: list[tuple[float, float]] = []

    async def go() -> None:
        fired: asyncio.Future[float] | None = None

        def ring() -> None:
            assert fired is not None
            fired.set_result(time.perf_counter())

        alarm = Alarm(asyncio.get_running_loop(), ring, precise=precise)
        assert alarm.precise == (precise and timerfd_available())
        try:
            for delay in delays:
                fired = asyncio.get_running_loop().create_future()
                due = time.perf_counter() + delay
                alarm.set(due)
                out.append((due, await asyncio.wait_for(fired, 2)))
        finally:
            alarm.close()

    loop.run_until_complete(go())
    return out


_DELAYS = [0.0002 + 0.0001 * (k % 9) for k in range(60)] + [-0.001, 0.0]


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "loop-timer"])
@pytest.mark.parametrize("factory", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_the_alarm_never_rings_early(
        precise: bool, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    # uvloop's own timer goes off up to a millisecond early (it rounds the delay); the alarm
    # must wait for the instant it was given whatever the timer beneath it does
    loop = factory()
    try:
        times = _fire_times(loop, precise, _DELAYS)
    finally:
        loop.close()
    assert len(times) == len(_DELAYS)
    early = [(due, fired) for due, fired in times if fired < due]
    assert early == []


def test_setting_it_again_replaces_the_earlier_instant() -> None:
    loop = uvloop.new_event_loop()
    rings: list[float] = []

    async def go() -> None:
        alarm = Alarm(asyncio.get_running_loop(), lambda: rings.append(time.perf_counter()))
        try:
            now = time.perf_counter()
            alarm.set(now + 0.050)
            alarm.set(now + 0.005)
            await asyncio.sleep(0.12)
        finally:
            alarm.close()

    start = time.perf_counter()
    try:
        loop.run_until_complete(go())
    finally:
        loop.close()
    assert len(rings) == 1
    assert rings[0] - start < 0.050  # the second instant, not the first


@pytest.mark.skipif(not timerfd_available(), reason="no timerfd here")
def test_a_closed_alarm_gives_its_descriptor_back() -> None:
    loop = asyncio.new_event_loop()

    async def go() -> int:
        alarm = Alarm(asyncio.get_running_loop(), lambda: None)
        fd = alarm._fd
        alarm.close()
        assert not alarm.precise
        return fd

    try:
        fd = loop.run_until_complete(go())
    finally:
        loop.close()
    assert fd >= 0
    with pytest.raises(OSError):
        os.fstat(fd)


class _Answering(asyncio.Protocol):
    """Answers every HTTP/1.1 request with a small 200."""

    _ANSWER = b'HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{"reason":"approved"}'

    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end])
            at = head.index(b"Content-Length: ") + len(b"Content-Length: ")
            length = int(head[at:].split(b"\r\n", 1)[0])
            if len(self._buf) < end + 4 + length:
                return
            del self._buf[: end + 4 + length]
            assert self._transport is not None
            self._transport.write(self._ANSWER)


@pytest.mark.parametrize("timer", ["timerfd", "loop"])
async def test_the_open_loop_sends_nothing_before_it_is_due(timer: str) -> None:
    server = await asyncio.get_running_loop().create_server(_Answering, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = loadgen.Spec(
            host="127.0.0.1", port=port, mode="open", duration_s=0.4, lead_in_s=0.1, cards=50,
            seed=7, secret="test-secret", id_prefix=f"alarm-{timer}", connections=4,
            rate=500.0, timer=timer)  # type: ignore[arg-type]
        result = await loadgen.run(spec)
    finally:
        server.close()
        await server.wait_closed()
    assert result.errors == 0
    assert result.completed == len(result.lag_us) > 150  # ~200 due in the 0.4 s window
    assert min(result.lag_us) >= 0
    assert result.reasons == {"approved": result.completed}


@pytest.mark.skipif(not timerfd_available(), reason="no timerfd here")
async def test_the_reports_wake_up_probe_keeps_every_appointment_and_orders_its_figures() -> None:
    late, cpu_per = await lateness([0.0002, 0.0005, 0.001] * 20)
    assert len(late) == 60
    assert min(late) >= 0  # kept, never early
    assert cpu_per > 0
    line = await machine.wake_lateness()
    figures = [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) µs", line)]
    assert len(figures) == 3
    p50, p99, top = figures
    assert p50 <= p99 <= top


async def test_the_load_generator_can_run_real_time_and_still_sends_nothing_early(
        tmp_path: Path) -> None:
    """``--client-realtime``: the client's own process under SCHED_FIFO (so its sends wait for
    no core), answering as before."""
    if not (os.geteuid() == 0
            or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= 3):
        pytest.skip("this user may not use real-time priority")
    server = await asyncio.get_running_loop().create_server(_Answering, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec, out = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_bytes(orjson.dumps(dataclasses.asdict(loadgen.Spec(
        host="127.0.0.1", port=port, mode="open", duration_s=1.0, lead_in_s=0.2, cards=50,
        seed=8, secret="test-secret", id_prefix="alarm-rt", connections=4, rate=300.0,
        realtime_priority=3))))
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.loadgen", str(spec), str(out), cwd=REPO)
        await asyncio.sleep(0.6)
        policy = os.sched_getscheduler(child.pid)
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        server.close()
        await server.wait_closed()
    assert policy & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
    result = orjson.loads(out.read_bytes())
    assert result["errors"] == 0 and result["completed"] > 200
    assert min(result["lag_us"]) >= 0
