"""The load generator, run as its own process so the server's single process is measured alone:

    python -m benchmarks.loadgen SPEC.json RESULT.json

Open loop (``mode="open"``): request *i* is due at a time fixed in advance (Poisson or evenly
spaced arrivals at ``rate``), whatever happened to the requests before it. It goes out on an idle
keep-alive connection when one is free, or waits in a client-side queue when all are busy, and its
latency is counted from the time it was *due*, not the time it was sent: a server that stalls is
charged for every request that piled up behind the stall (no coordinated omission).

Closed loop (``mode="closed"``): ``connections`` workers each send the next request as soon as the
previous one is answered; this finds the saturation throughput. Latency there is from send.

Every request is built, serialised, signed and framed as raw HTTP/1.1 bytes before the clock
starts; during the run the client only writes pre-built bytes and reads a status line and a
Content-Length, a few microseconds of CPU per request, so it takes little from the cores it
shares with the server. The first ``lead_in_s`` of every run are sent but not measured (the pool,
caches and TCP windows settle).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, cast

import orjson

from benchmarks import procstat
from benchmarks.alarm import Alarm
from benchmarks.traffic import build_bodies, frame_requests

__all__ = ["Result", "Spec", "main", "run"]

_DRAIN_S: Final = 5.0  # after the last send, how long in-flight requests may take to finish
_UNSENT: Final = -1.0


@dataclass(frozen=True, slots=True)
class Spec:
    host: str
    port: int
    mode: Literal["open", "closed"]
    duration_s: float
    lead_in_s: float
    cards: int
    seed: int
    secret: str
    id_prefix: str
    connections: int
    rate: float = 0.0  # open loop: requests per second
    arrivals: Literal["poisson", "fixed"] = "poisson"
    max_rate: float = 8_000.0  # closed loop: requests pre-built per second of run
    server_pid: int | None = None
    postgres_pids: list[int] | None = None  # None: every postgres process on the machine
    # open loop: also return each answered request's due time (Result.due_ms), so a caller can
    # split one run into windows (e.g. before, during and after a background job)
    keep_due: bool = False
    # request ids start with a scrambled number (as random as a processor's UUIDs), so new rows
    # land all over the primary-key indexes instead of at one end (traffic.build_bodies)
    scatter_ids: bool = False
    # open loop: what wakes the client when a request is due: "timerfd" (benchmarks/alarm.py,
    # to tens of microseconds) or "loop" (the event loop's own millisecond timer, as before
    # session 18: figures measured with it carry up to ~0.5 ms of the client's own lag)
    timer: Literal["timerfd", "loop"] = "timerfd"
    # open loop: the client's loop under SCHED_FIFO at this priority (0: the normal class):
    # woken, it sends at once instead of waiting for a core behind the servers
    # (authz/scheduling.py). A closed loop's pace is the server's: it stays in the normal class
    realtime_priority: int = 0


@dataclass(slots=True)
class Result:
    mode: str
    target_rate: float
    duration_s: float  # the measured window
    completed: int  # answered within the measured window (closed) / scheduled in it (open)
    errors: int  # broken connections, timeouts
    throughput: float  # completed per second of the measured window
    latencies_us: list[int]  # open: from due time; closed: from send
    service_us: list[int]  # from send, both modes
    lag_us: list[int]  # open: send time - due time (client queue + timer granularity)
    statuses: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    max_backlog: int = 0
    exhausted: bool = False  # closed loop ran out of pre-built requests before the end
    build_s: float = 0.0
    # with Spec.keep_due (open loop): the wall-clock (Unix) time of the measured window's start,
    # each answered request's due time from it in ms (in the order of latencies_us), and the due
    # times of the requests in the window that were never answered
    window_start_unix: float = 0.0
    due_ms: list[float] = field(default_factory=list)
    lost_due_ms: list[float] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, on_answer: Callable[[_Connection, int, bytes], None],
                 on_lost: Callable[[_Connection], None]) -> None:
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._buf = bytearray()
        self._need = -1  # total bytes of the current response, once its head is read
        self._head_end = 0
        self.transport: asyncio.Transport | None = None
        self.index = -1  # request in flight, -1 when idle
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast("asyncio.Transport", transport)
        self.ready.set_result(None)

    def send(self, index: int, data: bytes) -> None:
        assert self.transport is not None
        self.index = index
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            at = head.find(b"\r\nContent-Length: ")
            if at < 0:
                at = head.lower().find(b"\r\ncontent-length:")
            if at < 0:  # aiohttp always sends one for these responses; anything else is a bug
                assert self.transport is not None
                self.transport.close()
                return
            start = head.index(b":", at) + 1
            stop = head.find(b"\r\n", start)
            length = int(head[start : stop if stop >= 0 else len(head)])
            self._head_end = end + 4
            self._need = self._head_end + length
        if len(buf) < self._need:
            return
        status = int(buf[9:12])
        body = bytes(buf[self._head_end : self._need])
        del buf[: self._need]
        self._need = -1
        self._on_answer(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed before connecting"))
        self._on_lost(self)


class _Run:
    """State shared by the connections of one run."""

    def __init__(self, spec: Spec, requests: list[bytes], due: list[float]) -> None:
        self.spec = spec
        self.requests = requests
        n = len(requests)
        self.due = due  # perf_counter seconds; closed loop fills it in at send time
        self.sent = [_UNSENT] * n
        self.done = [_UNSENT] * n
        self.status = [0] * n
        self.reasons: dict[str, int] = {}
        self.backlog: deque[int] = deque()
        self.idle: list[_Connection] = []
        self.live: set[_Connection] = set()
        self.next = 0  # next request not yet sent or queued
        self.finished = 0
        self.max_backlog = 0
        self.measure_from = float("inf")  # start of the measured window
        self.stop_at = float("inf")  # closed loop: no new sends after this
        self.stopped_early: float | None = None  # open loop: when stop_now() cut the schedule
        self.all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alarm: Alarm | None = None  # open loop: wakes tick() when the next request is due

    # -- connection callbacks ---------------------------------------------------------------
    def answered(self, conn: _Connection, status: int, body: bytes) -> None:
        now = time.perf_counter()
        i = conn.index
        conn.index = -1
        self.done[i] = now
        self.status[i] = status
        if self.spec.mode == "open":
            measured = self.due[i] >= self.measure_from
        else:
            measured = self.measure_from <= now <= self.stop_at
        at = body.find(b'"reason":"') if measured else -1
        if at >= 0:
            reason = body[at + 10 : body.find(b'"', at + 10)].decode()
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        # feed first: in a closed loop the next send must be counted before this answer is, or
        # one connection alone would look finished between two requests
        self._feed(conn, now)
        self._finish_one()

    def lost(self, conn: _Connection) -> None:
        self.live.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.index >= 0:  # its request is an error; done stays unset
            conn.index = -1
            self._finish_one()
        if not self.live and not self.all_done.done():
            # nothing left to send on: the run is over, and whatever is unanswered is an error
            self.all_done.set_result(None)

    def _finish_one(self) -> None:
        self.finished += 1
        self._check_done()

    def _check_done(self) -> None:
        if self.finished >= self.next and self.next >= self._last() and not self.all_done.done():
            self.all_done.set_result(None)

    def _last(self) -> int:
        return len(self.requests) if self.spec.mode == "open" else self.next

    # -- sending -----------------------------------------------------------------------------
    def _send(self, conn: _Connection, i: int, now: float) -> None:
        self.sent[i] = now
        conn.send(i, self.requests[i])

    def _feed(self, conn: _Connection, now: float) -> None:
        """Give a connection that just became free its next request, or park it."""
        if self.spec.mode == "open":
            if self.backlog:
                self._send(conn, self.backlog.popleft(), now)
            else:
                self.idle.append(conn)
            return
        if now < self.stop_at and self.next < len(self.requests):
            i = self.next
            self.next += 1
            self.due[i] = now
            self._send(conn, i, now)
        else:
            self._check_done()

    def stop_now(self) -> None:
        """Open loop: drop every request not yet due, let those sent or queued finish (the
        caller's signal that its experiment is over: SIGUSR1)."""
        if self.stopped_early is not None or self.spec.mode != "open":
            return
        self.stopped_early = time.perf_counter()
        k = self.next
        for values in (self.requests, self.due, self.sent, self.done, self.status):
            del values[k:]
        self._check_done()

    def tick(self) -> None:
        """Open loop: send (or queue) every request that is due, then sleep until the next."""
        if self.all_done.done():
            return
        now = time.perf_counter()
        due, n = self.due, len(self.requests)
        i = self.next
        while i < n and due[i] <= now:
            if self.idle:
                self._send(self.idle.pop(), i, now)
            else:
                self.backlog.append(i)
            i += 1
        self.next = i
        self.max_backlog = max(self.max_backlog, len(self.backlog))
        if i < n:
            assert self.alarm is not None
            self.alarm.set(due[i])
        else:
            self._check_done()


def _schedule(spec: Spec, rng: random.Random) -> list[float]:
    """Due offsets (s) from the start, for the lead-in plus the measured window."""
    count = round((spec.lead_in_s + spec.duration_s) * spec.rate)
    if spec.arrivals == "fixed":
        return [k / spec.rate for k in range(count)]
    offsets, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(spec.rate)
        offsets.append(t)
    return offsets


def _micros(values: list[float], mask: list[bool]) -> list[int]:
    return [round(v * 1e6) for v, keep in zip(values, mask, strict=True) if keep]


async def run(spec: Spec) -> Result:
    started_build = time.perf_counter()
    rng = random.Random(spec.seed)
    if spec.mode == "open":
        offsets = _schedule(spec, rng)
        count = len(offsets)
    else:
        offsets = []
        count = round((spec.lead_in_s + spec.duration_s) * spec.max_rate)
    host = f"{spec.host}:{spec.port}"
    bodies = build_bodies(count, cards=spec.cards, seed=spec.seed, id_prefix=spec.id_prefix,
                          scatter_ids=spec.scatter_ids)
    requests = frame_requests(bodies, host=host, secret=spec.secret, now_s=int(time.time()))
    del bodies
    # the pre-built requests are hundreds of thousands of objects: out of the collector's sight,
    # or each full collection during the run walks them all (39 and 74 ms pauses were seen,
    # stalling the client's sends and reading as the server's latency at p99.9)
    gc.collect()
    gc.freeze()
    build_s = time.perf_counter() - started_build

    state = _Run(spec, requests, [0.0] * count)
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(spec.connections):
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: _Connection(state.answered, state.lost), spec.host, spec.port
        ), 10)
        await asyncio.wait_for(conn.ready, 10)
        conns.append(conn)
    state.live.update(conns)
    watch = procstat.find_watch(spec.server_pid, spec.postgres_pids)

    start = time.perf_counter() + 0.01
    measure_from = start + spec.lead_in_s
    window_start_unix = time.time() + (measure_from - time.perf_counter())
    state.measure_from = measure_from
    cpu_before: list[procstat.CpuSnapshot | None] = [None]

    def begin_window() -> None:
        cpu_before[0] = procstat.snapshot(watch)

    loop.call_later(measure_from - time.perf_counter(), begin_window)
    if spec.mode == "open":
        state.due = [start + o for o in offsets]
        state.idle.extend(conns)
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals: run it all
            loop.add_signal_handler(signal.SIGUSR1, state.stop_now)
        if spec.keep_due:  # tell the caller when the measured window starts (wall clock)
            print(f"window-start {window_start_unix:.6f}", flush=True)
        state.alarm = Alarm(loop, state.tick, precise=spec.timer == "timerfd")
        state.alarm.set(start)
        end = state.due[-1] if state.due else start
        timeout = end - time.perf_counter() + _DRAIN_S + spec.duration_s
    else:
        state.stop_at = measure_from + spec.duration_s
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        for conn in conns:
            state._feed(conn, time.perf_counter())
        timeout = state.stop_at - time.perf_counter() + _DRAIN_S
    with contextlib.suppress(TimeoutError):  # whatever is unanswered then counts as an error
        await asyncio.wait_for(asyncio.shield(state.all_done), timeout)
    cpu_s = procstat.cpu_seconds(cpu_before[0], procstat.snapshot(watch))
    if state.alarm is not None:
        state.alarm.close()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    result = _summarise(spec, state, measure_from, cpu_s, build_s)
    if spec.keep_due and spec.mode == "open":
        result.window_start_unix = window_start_unix
        result.due_ms, result.lost_due_ms = _due_times(state, measure_from)
    return result


def _due_times(state: _Run, measure_from: float) -> tuple[list[float], list[float]]:
    answered: list[float] = []
    lost: list[float] = []
    for due, done in zip(state.due, state.done, strict=True):
        if due >= measure_from:
            (answered if done > 0 else lost).append(round((due - measure_from) * 1000, 3))
    return answered, lost


def _summarise(spec: Spec, state: _Run, measure_from: float, cpu_s: dict[str, float],
               build_s: float) -> Result:
    n = len(state.requests)
    if spec.mode == "open":
        # every request due in the window counts, answered or not
        window = [state.due[i] >= measure_from for i in range(n)]
        answered = [w and state.done[i] > 0 for i, w in enumerate(window)]
        last = max((state.done[i] for i in range(n) if answered[i]), default=measure_from)
        planned = spec.duration_s
        if state.stopped_early is not None:
            planned = max(0.001, state.stopped_early - measure_from)
        duration = max(last - measure_from, planned)
        completed = sum(answered)
        errors = sum(window) - completed
        latencies = [d - s for d, s in zip(state.done, state.due, strict=True)]
        lag = [s - d for s, d in zip(state.sent, state.due, strict=True)]
    else:
        stop_at = state.stop_at
        # answered inside the window: the throughput; sent but never answered: errors
        answered = [measure_from <= state.done[i] <= stop_at for i in range(n)]
        duration = spec.duration_s
        completed = sum(answered)
        errors = sum(1 for i in range(state.next) if state.done[i] < 0)
        latencies = [d - s for d, s in zip(state.done, state.sent, strict=True)]
        lag = []
    service = [d - s for d, s in zip(state.done, state.sent, strict=True)]
    statuses: dict[str, int] = {}
    for i in range(n):
        if answered[i]:
            key = str(state.status[i])
            statuses[key] = statuses.get(key, 0) + 1
    return Result(
        mode=spec.mode,
        target_rate=spec.rate,
        duration_s=duration,
        completed=completed,
        errors=errors,
        throughput=completed / duration if duration > 0 else 0.0,
        latencies_us=_micros(latencies, answered),
        service_us=_micros(service, answered),
        lag_us=_micros(lag, answered) if lag else [],
        statuses=statuses,
        reasons=state.reasons,
        cpu_s=cpu_s,
        max_backlog=state.max_backlog,
        exhausted=spec.mode == "closed" and state.next >= n,
        build_s=build_s,
    )


def main(argv: list[str]) -> int:
    import uvloop

    if len(argv) != 2:
        print("usage: python -m benchmarks.loadgen SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = Spec(**orjson.loads(Path(argv[0]).read_bytes()))
    if spec.realtime_priority and spec.mode == "open":
        from authz.scheduling import run_realtime

        run_realtime(spec.realtime_priority)
    if hasattr(signal, "SIGUSR1"):  # a stop request before the run has begun changes nothing
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(spec))
    Path(argv[1]).write_bytes(orjson.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
