"""Pieces the larger benchmarks (``benchmarks.sweep``, ``benchmarks.scale``) share: a ``holdfast
serve`` subprocess on a database of their own, load-generator processes (started, stopped early,
read), CPU accounting over arbitrary windows, the machine's background load, and latency
summaries."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson
import redis.asyncio as aioredis

from benchmarks import procstat
from benchmarks.loadgen import Result, Spec
from benchmarks.report import percentile
from benchmarks.servers import ServerProcess, free_port, start_server

__all__ = [
    "Latency",
    "LoadRun",
    "Window",
    "background_load",
    "cpu_description",
    "db_url",
    "environment",
    "postgres_pids",
    "start_holdfast",
]


def db_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _holdfast_argv() -> list[str]:
    holdfast_bin = Path(sys.executable).with_name("holdfast")
    return ([str(holdfast_bin), "serve"] if holdfast_bin.exists()
            else [sys.executable, "-m", "authz.cli", "serve"])


def server_env(url: str, redis_url: str, prefix: str, port: int, secret: str,
               extra: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a server under test: nothing of the caller's Holdfast configuration
    leaks in; ``extra`` is NAME=VALUE settings on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLDFAST_")}
    env.update({
        "HOLDFAST_DATABASE_URL": url,
        "HOLDFAST_REDIS_URL": redis_url,
        "HOLDFAST_REDIS_PREFIX": prefix,
        "HOLDFAST_PORT": str(port),
        "HOLDFAST_WEBHOOK_SECRET": secret,
        "HOLDFAST_LOG_LEVEL": "WARNING",
    })
    for item in extra:
        name, _, value = item.partition("=")
        env[name] = value
    return env


async def start_holdfast(name: str, url: str, redis_url: str, prefix: str, secret: str,
                         extra: Sequence[str] = ()) -> ServerProcess:
    port = free_port()
    return await start_server(name, _holdfast_argv(),
                              server_env(url, redis_url, prefix, port, secret, extra), port)


async def postgres_pids(admin_url: str, db_names: Sequence[str]) -> list[int]:
    """The backends of the benchmark's databases and PostgreSQL's background processes."""
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = ANY($1::text[]) OR backend_type <> 'client backend'",
            list(db_names))
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


class LoadRun:
    """One load-generator process: started, optionally told to stop early (SIGUSR1: drop what
    is not yet due), and read."""

    def __init__(self, spec: Spec, tmp: Path) -> None:
        self.spec = spec
        self._spec_path = tmp / f"{spec.id_prefix}.spec.json"
        self._out_path = tmp / f"{spec.id_prefix}.result.json"
        self._proc: asyncio.subprocess.Process | None = None
        self.window_start_unix: float | None = None

    async def start(self) -> None:
        self._spec_path.write_bytes(orjson.dumps(dataclasses.asdict(self.spec)))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.loadgen", str(self._spec_path),
            str(self._out_path), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self.spec.keep_due else None,
        )

    async def started(self, timeout_s: float = 120.0) -> float:
        """Wait for the measured window to begin (needs ``keep_due``); its wall-clock time."""
        assert self._proc is not None and self._proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self._proc.stdout.readline()
                if not line:
                    raise RuntimeError("load generator exited before its run began")
                if line.startswith(b"window-start "):
                    self.window_start_unix = float(line.split()[1])
                    return self.window_start_unix

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGUSR1)

    async def result(self) -> Result:
        assert self._proc is not None
        limit = self.spec.lead_in_s + self.spec.duration_s + 120
        if self._proc.stdout is not None:
            await self._proc.stdout.read()  # drain, so the process never blocks on a pipe
        try:
            code = await asyncio.wait_for(self._proc.wait(), limit)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
            raise RuntimeError(f"load generator {self.spec.id_prefix} ran over {limit:.0f} s"
                               ) from None
        if code != 0:
            raise RuntimeError(f"load generator {self.spec.id_prefix} failed ({code})")
        return Result(**orjson.loads(self._out_path.read_bytes()))

    async def run(self) -> Result:
        await self.start()
        return await self.result()


@dataclass(frozen=True, slots=True)
class Latency:
    p50: float
    p99: float
    p999: float
    max: float
    count: int

    @classmethod
    def of(cls, samples_us: Sequence[int]) -> Latency:
        ordered = sorted(samples_us)
        ms = [percentile(ordered, p) / 1000 for p in (50, 99, 99.9, 100)]
        return cls(ms[0], ms[1], ms[2], ms[3], len(ordered))

    def cells(self) -> list[str]:
        return [_ms(self.p50), _ms(self.p99), _ms(self.p999), _ms(self.max)]


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.2f}"


@dataclass(slots=True)
class Window:
    """CPU use between two instants, by process group (procstat)."""

    name: str
    watch: procstat.Watch
    before: procstat.CpuSnapshot | None = None
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)

    def open(self) -> None:
        self.before = procstat.snapshot(self.watch)

    def close(self) -> None:
        self.cpu = procstat.cpu_seconds(self.before, procstat.snapshot(self.watch))

    def share(self, group: str) -> float:
        capacity = self.cpu.get("capacity", 0.0)
        return self.cpu.get(group, 0.0) / capacity if capacity else math.nan

    def cores(self, group: str) -> float:
        capacity = self.cpu.get("capacity", 0.0)
        cores = os.cpu_count() or 1
        return self.cpu.get(group, 0.0) / (capacity / cores) if capacity else math.nan


async def background_load(seconds: float = 3.0) -> tuple[float, float]:
    """Share of all cores busy while this benchmark does nothing yet (other work on a shared
    machine), and the 1-minute load average."""
    watch = procstat.Watch()
    before = procstat.snapshot(watch)
    await asyncio.sleep(seconds)
    cpu = procstat.cpu_seconds(before, procstat.snapshot(watch))
    capacity = cpu.get("capacity", 0.0)
    return (cpu.get("machine", 0.0) / capacity if capacity else math.nan), os.getloadavg()[0]


def cpu_description(cpuinfo: str | None = None) -> str:
    """The first CPU as /proc/cpuinfo names it: two VMs of "the same kind" have differed by half
    in the cost of Holdfast's work (benchmarks/README.md, "Session 17"), and this is where they
    can be told apart ("unknown" where /proc/cpuinfo is not)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor only
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return "unknown"
    detail = ", ".join(f"{label} {fields[key]}" for key, label in (
        ("cpu family", "family"), ("model", "model"), ("stepping", "stepping"),
        ("cpu MHz", "MHz"), ("cache size", "cache")) if key in fields)
    return f"{fields['model name']} ({detail})"


async def environment(admin_url: str, redis_url: str) -> list[tuple[str, str]]:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("aiohttp", "uvloop", "orjson", "redis", "hiredis", "asyncpg"))
    conn = await asyncpg.connect(admin_url)
    try:
        pg = await conn.fetchval("SHOW server_version")
        settings = ", ".join([
            f"{name}={await conn.fetchval(f'SHOW {name}')}"
            for name in ("fsync", "synchronous_commit", "autovacuum", "shared_buffers",
                         "max_wal_size", "checkpoint_timeout", "wal_compression", "jit")
        ])
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        redis_version = (await client.info("server")).get("redis_version", "?")
    finally:
        await client.aclose()
    load1, load5, _ = os.getloadavg()
    return [
        ("date", dt.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("cores", str(os.cpu_count())),
        ("CPU", cpu_description()),
        ("load average before the run (1 / 5 min)", f"{load1:.2f} / {load5:.2f}"),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        ("libraries", versions),
        ("PostgreSQL", f"{pg} ({settings})"),
        ("Redis", str(redis_version)),
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"


def code_version() -> str:
    """The commit measured, and whether the working tree differed from it (outside benchmarks/):
    a figure is only comparable with another of the same code."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = len(dirty.splitlines())
    return head + (f" plus {changed} uncommitted file(s)" if changed else "")


Suite = Callable[[argparse.Namespace, str], Coroutine[Any, Any, tuple[str, bool]]]


def run_and_report(suite: Suite, args: argparse.Namespace, suffix: str) -> int:
    """Run a suite on uvloop, print its report and, unless ``--quick`` or ``--no-write``, keep
    it as ``results/<date><suffix>.md``. Exit status 0 when the suite says it completed."""
    import uvloop

    code = code_version()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        text, ok = runner.run(suite(args, code))
    print("\n" + text)
    if not args.no_write and not args.quick:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{dt.date.today().isoformat()}{suffix}.md"
        path.write_text(text)
        print(f"written to {path}")
    return 0 if ok else 1
