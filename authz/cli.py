"""``holdfast`` command line: migrate, serve, verify, demo, consumers, sweep, events, sandbox,
reconcile."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlparse

import asyncpg
from aiohttp import web
from prometheus_client import start_http_server

from authz.app import METRICS, create_pool, make_app
from authz.front import start_runner
from authz.logs import setup_logging
from authz.payments_cli import (
    add_parsers,
    reconcile_command,
    run_payments_worker,
    sandbox_command,
)
from authz.scheduling import check_workers, run_realtime
from authz.scheduling import current as current_priority
from authz.settings import Settings, SettingsError
from authz.tls import server_ssl_context
from authz.workers import MAX_WORKERS, supervise
from clearing.consumer import Consumer, ConsumerConfig, retry_event
from clearing.handlers import HoldWindows
from clearing.metrics import ConsumerMetrics
from clearing.sweep import sweep
from holds.migrate import migrate
from holds.verify import verify

__all__ = ["main"]


def _db_name(url: str) -> str:
    name = urlparse(url).path.lstrip("/")
    if not name:
        raise SettingsError("HOLDFAST_DATABASE_URL must name a database")
    return name


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. True if created."""
    name = _db_name(url)
    conn = await asyncpg.connect(url, database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


async def _migrate(settings: Settings, create_db: bool) -> int:
    if create_db and await ensure_database(settings.database_url):
        print(f"created database {_db_name(settings.database_url)}")
    conn = await asyncpg.connect(settings.database_url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    for m in applied:
        print(f"applied {m.version}_{m.name}")
    print("schema is current" if not applied else f"{len(applied)} migration(s) applied")
    return 0


async def _verify(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        report = await verify(conn)
    finally:
        await conn.close()
    print(report.render())
    return 0 if report.ok else 1


async def _serve(settings: Settings, worker_index: int | None = None) -> int:
    ssl_context = server_ssl_context(settings)  # before anything starts: bad files fail fast
    if settings.realtime_priority:
        run_realtime(settings.realtime_priority)  # before any thread starts: they inherit it
    app = make_app(settings)
    app[METRICS].realtime_priority.set(current_priority())
    runner = await start_runner(app, access_log=None, handle_signals=False)
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=2048,
                       ssl_context=ssl_context)
    await site.start()
    # Everything built so far (modules, the app, pools) lives as long as the process: move it out
    # of the cyclic collector's sight, so a full collection walks only what requests allocate
    # and does not stall the event loop for milliseconds (a p99 matter)
    gc.collect()
    gc.freeze()
    scheme = "http" if ssl_context is None else "https"
    print(f"holdfast serving on {scheme}://{settings.host}:{settings.port} (pid {os.getpid()})",
          flush=True)
    if worker_index is not None:
        # a scrape of the shared port reaches whichever worker the kernel picks: each worker
        # also serves its own metrics on a port of its own, one scrape target per worker
        metrics_port = settings.worker_metrics_port + worker_index
        start_http_server(metrics_port, addr=settings.host, registry=app[METRICS].registry)
        print(f"holdfast worker {worker_index} metrics on :{metrics_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def _consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        sweep_interval_s=settings.sweep_interval_s,
        sweep_batch_size=settings.sweep_batch_size,
        sweep_window=settings.sweep_window,
        sweep_duty=settings.sweep_duty_pct / 100,
        windows=HoldWindows(settings.hold_window_s, settings.hold_window_long_s),
    )


async def _consumers(settings: Settings) -> int:
    # lifecycle: a listener and a worker; payments: a listener, a worker, the outbox
    pool = await create_pool(settings, size=6)
    metrics = ConsumerMetrics()
    start_http_server(settings.consumer_metrics_port, addr=settings.host,
                      registry=metrics.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"holdfast consumers running (pid {os.getpid()}, metrics on "
          f":{settings.consumer_metrics_port})", flush=True)
    try:
        await asyncio.gather(
            Consumer(pool, _consumer_config(settings), metrics).run(stop),
            run_payments_worker(settings, pool, metrics.registry, stop))
    finally:
        await pool.close()
    return 0


async def _sweep(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        result = await sweep(conn, dt.datetime.now(dt.UTC), settings.sweep_batch_size,
                             duty=settings.sweep_duty_pct / 100,
                             window=settings.sweep_window)
    finally:
        await conn.close()
    print(f"expired {result.holds} hold(s) releasing {result.amount_minor} minor units in "
          f"{result.batches} batch(es), {result.seconds:.2f} s")
    return 0


async def _events(settings: Settings, action: str, inbox_id: int | None) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        if action == "retry":
            if inbox_id is None or not await retry_event(conn, inbox_id):
                print(f"no quarantined event with id {inbox_id}", file=sys.stderr)
                return 1
            print(f"event {inbox_id} queued again")
            return 0
        rows = await conn.fetch(
            "SELECT id, provider, provider_event_id, type, attempts, quarantine_reason,"
            " received_at FROM inbox_events WHERE status = 'quarantined' ORDER BY id")
    finally:
        await conn.close()
    for r in rows:
        print(f"{r['id']}\t{r['provider']}\t{r['provider_event_id']}\t{r['type']}\t"
              f"attempts={r['attempts']}\t{r['received_at']:%Y-%m-%dT%H:%M:%SZ}\t"
              f"{r['quarantine_reason']}")
    print(f"{len(rows)} quarantined event(s)")
    return 0


async def _demo(settings: Settings) -> int:
    from authz.demo import seed

    await seed(settings)
    return 0


def _run(coro_factory: object) -> int:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return int(runner.run(coro_factory))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="holdfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply pending schema migrations")
    m.add_argument("--create-db", action="store_true", help="create the database if missing")
    srv = sub.add_parser("serve", help="run the HTTP server")
    srv.add_argument("--workers", type=int, default=1, metavar="N",
                     help=f"server processes sharing the port (SO_REUSEPORT), 1 to {MAX_WORKERS};"
                          " the parent supervises them")
    # set by the supervisor on the processes it starts; not for operators
    srv.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    sub.add_parser("verify", help="prove the ledger invariants; exit 1 on any violation")
    sub.add_parser("demo", help="seed demo accounts and cards (idempotent)")
    sub.add_parser("consumers", help="apply inbox events and sweep expired holds, until stopped")
    sub.add_parser("sweep", help="release every hold past its window now, then exit")
    ev = sub.add_parser("events", help="quarantined events: list them or retry one")
    ev.add_argument("action", choices=["quarantined", "retry"])
    ev.add_argument("inbox_id", nargs="?", type=int)
    add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if args.command == "migrate":
            return _run(_migrate(settings, args.create_db))
        if args.command == "verify":
            return _run(_verify(settings))
        if args.command == "serve":
            if not 1 <= args.workers <= MAX_WORKERS:
                parser.error(f"--workers must be between 1 and {MAX_WORKERS}")
            check_workers(args.workers, settings.realtime_priority)
            if args.workers > 1:
                return supervise(args.workers)
            return _run(_serve(settings, args.worker_index))
        if args.command == "demo":
            return _run(_demo(settings))
        if args.command == "consumers":
            return _run(_consumers(settings))
        if args.command == "sweep":
            return _run(_sweep(settings))
        if args.command == "sandbox":
            return _run(sandbox_command(settings, args))
        if args.command == "reconcile":
            return _run(reconcile_command(settings, args.statement, args.format))
        if args.command == "events":
            return _run(_events(settings, args.action, args.inbox_id))
    except SettingsError as exc:  # e.g. a TLS file that cannot be loaded
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"holdfast {args.command}: cannot reach a dependency: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
