"""The payments side of the ``holdfast`` command line: ``sandbox``, ``reconcile STATEMENT``, and
the payments worker that ``holdfast consumers`` runs beside the lifecycle consumer."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from pathlib import Path
from typing import Final

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry

from authz.settings import DEV_ADMIN_TOKENS, Secret, Settings
from clearing.payments.bank import BankClient, BankConfig
from clearing.payments.metrics import PaymentMetrics
from clearing.payments.worker import PaymentsWorker, WorkerConfig
from clearing.reconcile import StatementError, reconcile, render
from clearing.sandbox.app import run_sandbox
from clearing.sandbox.config import SandboxConfig

__all__ = ["add_parsers", "reconcile_command", "run_payments_worker", "sandbox_command"]

MAX_STATEMENT_BYTES: Final = 64 << 20


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sb = sub.add_parser("sandbox", help="run the provider sandbox (card processor and bank)")
    sb.add_argument("--demo", action="store_true", help="send gentle demo traffic")
    sb.add_argument("--port", type=int, default=None, help="default HOLDFAST_SANDBOX_PORT")
    sb.add_argument("--delay-ms", type=int, default=50, help="webhook delivery delay")
    sb.add_argument("--duplicate-rate", type=float, default=0.0)
    sb.add_argument("--reorder-rate", type=float, default=0.0)
    sb.add_argument("--failure-rate", type=float, default=0.0,
                    help="webhook attempts lost and bank calls answered 503")
    sb.add_argument("--timeout-rate", type=float, default=0.0,
                    help="payment submissions made but answered too late")
    sb.add_argument("--reject-rate", type=float, default=0.0)
    sb.add_argument("--seed", type=int, default=1)
    rc = sub.add_parser("reconcile", help="match a bank statement against the ledger; exit 1 "
                                          "on breaks")
    rc.add_argument("statement", type=Path, help="CSV or JSON lines")
    rc.add_argument("--format", choices=["csv", "jsonl"], default=None,
                    help="default: from the file name (.csv; .jsonl/.ndjson)")


def _dev_admin_token(settings: Settings) -> str | None:
    token = DEV_ADMIN_TOKENS.split(",")[0].partition("=")[0]
    return token if "admin" in settings.scopes_for(token) else None


def _rate(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise SystemExit(f"--{name} must be between 0 and 1")
    return value


def sandbox_config(settings: Settings, args: argparse.Namespace) -> SandboxConfig:
    def first(secrets: tuple[Secret, ...]) -> str | None:
        return secrets[0].reveal() if secrets else None

    return SandboxConfig(
        holdfast_url=f"http://{settings.host}:{settings.port}",
        host=settings.host, port=args.port or settings.sandbox_port,
        native_secret=first(settings.webhook_secrets) or "",
        bank_webhook_secret=first(settings.bank_webhook_secrets) or "",
        stripe_secret=first(settings.stripe_webhook_secrets),
        bank_api_key=settings.bank_api_key.reveal() if settings.bank_api_key else None,
        admin_token=_dev_admin_token(settings),
        delay_ms=max(0, args.delay_ms),
        duplicate_rate=_rate("duplicate-rate", args.duplicate_rate),
        reorder_rate=_rate("reorder-rate", args.reorder_rate),
        failure_rate=_rate("failure-rate", args.failure_rate),
        timeout_rate=_rate("timeout-rate", args.timeout_rate),
        reject_rate=_rate("reject-rate", args.reject_rate), seed=args.seed)


async def sandbox_command(settings: Settings, args: argparse.Namespace) -> int:
    config = sandbox_config(settings, args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_sandbox(config, stop, demo=args.demo)
    return 0


def _read_statement(path: Path) -> str:
    if path.stat().st_size > MAX_STATEMENT_BYTES:
        raise ValueError(f"larger than {MAX_STATEMENT_BYTES >> 20} MB")
    return path.read_text(encoding="utf-8")


async def reconcile_command(settings: Settings, path: Path, fmt: str | None) -> int:
    """Exit 0: everything matched; 1: breaks (reported and stored); 2: unreadable statement."""
    chosen = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    try:
        text = await asyncio.to_thread(_read_statement, path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    conn = await asyncpg.connect(settings.database_url)
    try:
        recon_id, result = await reconcile(conn, path.name, text,
                                           "csv" if chosen == "csv" else "jsonl",
                                           dt.datetime.now(dt.UTC))
    except StatementError as exc:
        print(f"{path}: {exc}; nothing stored", file=sys.stderr)
        return 2
    finally:
        await conn.close()
    print(render(recon_id, result))
    return 0 if result.ok else 1


async def run_payments_worker(settings: Settings, pool: asyncpg.Pool,
                              registry: CollectorRegistry, stop: asyncio.Event) -> None:
    config = BankConfig(
        url=settings.bank_url,
        api_key=settings.bank_api_key.reveal() if settings.bank_api_key else None,
        submit_timeout_s=settings.bank_submit_timeout_ms / 1000,
        payee_check_timeout_s=settings.payee_check_timeout_ms / 1000)
    async with aiohttp.ClientSession() as session:
        worker = PaymentsWorker(pool, BankClient(session, config), WorkerConfig(),
                                PaymentMetrics(registry))
        await worker.run(stop)
