"""Test helpers: an injectable clock, and an API client that signs like a card processor and
authenticates like an operator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import aiohttp
import orjson
import pytest
from aiohttp import web

from authz.settings import Settings
from authz.signatures import sign_native

REPO: Final = Path(__file__).resolve().parents[1]
SERVER_STARTUP_S: Final = 20.0


@dataclass
class Server:
    app: web.Application
    base_url: str


class FakeClock:
    """Real time unless a test moves it; reset after every test."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._fixed: float | None = None

    def __call__(self) -> float:
        if self._fixed is not None:
            return self._fixed
        return time.time() + self._offset

    def set(self, when: float) -> None:
        self._fixed = when

    def advance(self, seconds: float) -> None:
        if self._fixed is not None:
            self._fixed += seconds
        else:
            self._offset += seconds

    def reset(self) -> None:
        self._offset = 0.0
        self._fixed = None


async def stored_buckets(server: Server, card_id: str) -> dict[str, list[tuple[int, int, int]]]:
    """A card's velocity counters as stored: per unit, (bucket index, count, amount) oldest
    first, read from the packed fields (policies/buckets.lua) over a connection of its own that
    does not decode replies as text."""
    import redis.asyncio as aioredis

    from authz.app import CACHE, SETTINGS

    client = aioredis.Redis.from_url(server.app[SETTINGS].redis_url)
    try:
        fields = cast(dict[bytes, bytes],
                      await client.hgetall(server.app[CACHE].velocity_key(card_id)))
    finally:
        await client.aclose()
    out = {}
    for unit, packed in fields.items():
        out[unit.decode()] = [(int(i), int(c), int(a))
                              for i, c, a in struct.iter_unpack("<iid", packed)]
    return out


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Api:
    def __init__(self, base_url: str, clock: FakeClock, secret: str, tokens: dict[str, str]
                 ) -> None:
        self.base_url = base_url
        self.clock = clock
        self.secret = secret
        self.tokens = tokens
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=300), raise_for_status=False
        )

    async def close(self) -> None:
        await self.session.close()

    async def raw(self, method: str, path: str, data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> Reply:
        async with self.session.request(method, self.base_url + path, data=data,
                                        headers=headers or {}) as resp:
            raw = await resp.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return Reply(resp.status, body, dict(resp.headers))

    # -- card processor -----------------------------------------------------------------------
    def sign(self, body: bytes, at: float | None = None, secret: str | None = None) -> str:
        ts = int(self.clock() if at is None else at)
        return sign_native(secret or self.secret, ts, body)

    async def authorize_raw(self, body: bytes, signature: str | None = "sign") -> Reply:
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            headers["Holdfast-Signature"] = self.sign(body)
        elif signature is not None:
            headers["Holdfast-Signature"] = signature
        return await self.raw("POST", "/v1/authorize", body, headers)

    async def authorize(self, card_id: str, amount: int, currency: str = "GBP", **extra: Any
                        ) -> Reply:
        body = auth_body(card_id, amount, currency, **extra)
        return await self.authorize_raw(orjson.dumps(body))

    # -- operator -----------------------------------------------------------------------------
    async def admin(self, method: str, path: str, json: Any = None, scope: str = "admin",
                    headers: dict[str, str] | None = None) -> Reply:
        h = {"Authorization": f"Bearer {self.tokens[scope]}", **(headers or {})}
        data = None if json is None else orjson.dumps(json)
        return await self.raw(method, path, data, h)

    async def account(self, currency: str = "GBP", funds: int = 0, overdraft: int = 0) -> str:
        account_id = uid("acct")
        r = await self.admin("POST", "/v1/accounts", {
            "id": account_id, "currency": currency, "overdraft_limit": overdraft})
        assert r.status == 201, r.body
        if funds:
            r = await self.admin("POST", f"/v1/accounts/{account_id}/deposits",
                                 {"amount": funds}, headers={"Idempotency-Key": uid("dep")})
            assert r.status == 201, r.body
        return account_id

    async def card(self, account_id: str, policy: dict[str, Any] | None = None,
                   state: str = "active", **extra: Any) -> str:
        card_id = uid("card")
        r = await self.admin("PUT", f"/v1/cards/{card_id}", {
            "account_id": account_id, "state": state, "policy": policy or {}, **extra})
        assert r.status == 201, r.body
        return card_id

    async def balances(self, account_id: str) -> dict[str, int]:
        r = await self.admin("GET", f"/v1/accounts/{account_id}")
        assert r.status == 200, r.body
        return {k: r.body[k] for k in ("posted", "held", "available")}


def auth_body(card_id: str, amount: int, currency: str = "GBP", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": uid("auth"),
        "card_id": card_id,
        "amount": amount,
        "currency": currency,
        "merchant": {"id": "m-100", "name": "Corner Cafe", "mcc": "5812", "country": "GB"},
        "channel": "contactless",
    }
    merchant = extra.pop("merchant", None)
    if merchant:
        body["merchant"] = {**body["merchant"], **merchant}
    body.update(extra)
    return body


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(settings: Settings, secret: str, port: int,
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``holdfast serve`` started by a test: this run's database, Redis
    and key prefix, ``port``, the webhook secret, quiet logs, then ``extra``."""
    return {
        **os.environ,
        "HOLDFAST_DATABASE_URL": settings.database_url,
        "HOLDFAST_REDIS_URL": settings.redis_url,
        "HOLDFAST_REDIS_PREFIX": settings.redis_prefix,
        "HOLDFAST_PORT": str(port),
        "HOLDFAST_WEBHOOK_SECRET": secret,
        "HOLDFAST_LOG_LEVEL": "WARNING",
        **(extra or {}),
    }


def kill_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every process still running and reap it."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


class ServerProcess:
    """``python -m authz.cli serve`` on a fixed port; output goes to a log file."""

    def __init__(self, settings: Settings, secret: str, port: int, log_path: Path,
                 extra: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = server_env(settings, secret, port, extra)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "authz.cli", "serve"], cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    async def wait_healthy(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + SERVER_STARTUP_S
        while time.monotonic() < deadline:
            if self.current.poll() is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(self.base_url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)  # bounded polling of /healthz only
        log = self.log_path.read_text(errors="replace")[-2000:]
        pytest.fail(f"server on port {self.port} did not become healthy "
                    f"(exit {self.current.poll()}):\n{log}")

    def kill(self) -> None:
        proc = self.current
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def kill_all(self) -> None:
        kill_all(self.procs)
