"""The last tests of the suite (tests/conftest.py moves this module to the end whatever the
order): after everything else ran, no card number and no configured secret is anywhere the
tests could have left one:

- every text, character, JSON and text-array column of every table of this run's databases;
- every log line written during the session: this process's (tests/conftest.py writes it with the
  production formatter) and every ``*.log`` the servers and consumers started as subprocesses
  wrote under pytest's temporary directory;
- every string and hash value under this run's Redis prefix.

A card number is recognised exactly as ``policies.pan.mask_pans`` recognises it (a Luhn-valid run
of 13-19 digits, or the printed 4-4-4-4 / 4-6-5 groupings): the same rule the log formatter and
the adapters use. The secrets are every ``Secret`` of the test settings, the admin tokens, the
providers' and the bank's test secrets, the development defaults, and the forms they travel in
(the password of a ``user:password`` pair, its Basic header, the key inside ``whsec_…``)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import pytest
import redis.asyncio as aioredis

from authz import settings as settings_module
from authz.settings import Secret, Settings
from policies.pan import mask_pans
from tests.conftest import PG_ADMIN_URL, RUN_ID, SESSION_LOG_NAME, TOKENS, WEBHOOK_SECRET
from tests.payments import support as payments_support
from tests.providers import keys

_TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")
_TEXT_ARRAYS = ("_text", "_varchar", "_json", "_jsonb")
# a hex token of digest length (request hashes, payload digests, a Redis node id): its digit runs
# are not card numbers written anywhere, whatever mask_pans would make of them
_HEX_TOKEN = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{32,}(?![0-9A-Za-z])")
_PAN_CANDIDATE = r"[0-9]([ -]?[0-9]){12}"
_MIN_SECRET_LEN = 8
_EXCERPT = 60


def _derived(secret: str) -> Iterator[str]:
    """The secret and the forms it travels in."""
    yield secret
    _user, sep, password = secret.partition(":")
    if sep and password:
        yield password
        yield base64.b64encode(secret.encode()).decode()
    if secret.startswith("whsec_"):
        key = secret.removeprefix("whsec_")
        yield key
        with contextlib.suppress(ValueError):
            decoded = base64.b64decode(key, validate=True).decode("ascii")
            if decoded.isprintable():
                yield decoded


def configured_secrets(settings: Settings) -> dict[str, str]:
    """secret value -> a name to report it by (never the value itself)."""
    named: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(values):
            if isinstance(item, Secret):
                named.setdefault(item.reveal(), f"settings.{f.name}[{i}]")
    for scope, token in TOKENS.items():
        named.setdefault(token, f"admin token ({scope})")
    named.setdefault(WEBHOOK_SECRET, "tests.conftest.WEBHOOK_SECRET")
    for name in dir(keys):
        value = getattr(keys, name)
        for i, item in enumerate(value if isinstance(value, tuple) else (value,)):
            if name.isupper() and isinstance(item, str):
                named.setdefault(item, f"tests.providers.keys.{name}[{i}]")
    for name in ("BANK_SECRET", "BANK_API_KEY"):
        named.setdefault(getattr(payments_support, name), f"tests.payments.support.{name}")
    # the payments tests' server also accepts a bank secret being rotated out
    named.setdefault("bank-secret-being-rotated-out", "tests/payments/conftest.py bank secret")
    for name in ("DEV_ADMIN_TOKENS", "DEV_WEBHOOK_SECRET", "DEV_BANK_WEBHOOK_SECRET",
                 "DEV_BANK_API_KEY"):
        for token in str(getattr(settings_module, name)).split(","):
            named.setdefault(token.partition("=")[0], f"authz.settings.{name}")
    # not the user name of a user:password pair: it is not a secret
    named.pop(keys.MARQETA_USER, None)
    out: dict[str, str] = {}
    for value, name in named.items():
        for form in _derived(value):
            if len(form) >= _MIN_SECRET_LEN and form != keys.MARQETA_USER:
                out.setdefault(form, name)
    return out


@pytest.fixture(scope="module")
def secrets(settings: Settings) -> dict[str, str]:
    return configured_secrets(settings)


def findings(text: str, secrets: dict[str, str]) -> list[str]:
    """What is wrong with ``text``: each card number (masked) and each secret (by name), with
    some context, the secret itself never shown."""
    found = []
    plain = _HEX_TOKEN.sub("<hex>", text)
    if mask_pans(plain) != plain:
        masked = mask_pans(plain)
        at = masked.find("****")
        found.append("card number in …" + _hide(masked[max(0, at - _EXCERPT):at + _EXCERPT],
                                                secrets) + "…")
    for secret, name in secrets.items():
        at = text.find(secret)
        if at >= 0:
            context = text[max(0, at - _EXCERPT):at + len(secret) + _EXCERPT]
            found.append(f"secret {name} in …{_hide(mask_pans(context), secrets)}…")
    return found


def _hide(text: str, secrets: dict[str, str]) -> str:
    for secret, name in secrets.items():
        text = text.replace(secret, f"<{name}>")
    return text


def test_the_scanner_finds_what_it_looks_for(secrets: dict[str, str]) -> None:
    assert findings("order 4111 1111 1111 1111 shipped", secrets) == [
        "card number in …order ****1111 shipped…"]
    assert findings(f"Authorization: Bearer {TOKENS['ops']}", secrets) == [
        "secret admin token (ops) in …Authorization: Bearer <admin token (ops)>…"]
    basic = base64.b64encode(keys.MARQETA_BASIC_AUTH[0].encode()).decode()
    assert findings(f"Basic {basic}", secrets)
    # ids, references and digests are not card numbers
    digest = "be5dd75ec3301ce4111111111111111796ae5"  # a digit run inside a hex digest
    assert findings(f"auth-0b6c1f6e-1c1e-4f35-9d1b-33f2b9d6a8f1 card-7f3a9c 2024-01-15 {digest}",
                    secrets) == []
    # but a card number next to one still is
    assert findings(f"{digest} 4111111111111111", secrets)


async def _run_databases() -> list[str]:
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY datname",
            f"holdfast_test_{RUN_ID}%")
    finally:
        await admin.close()
    return [r["datname"] for r in rows]


async def _scan_database(url: str, secrets: dict[str, str]) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
            "   AND (data_type = ANY($1::text[]) OR udt_name = ANY($2::text[]))"
            " ORDER BY table_name, column_name", list(_TEXT_TYPES), list(_TEXT_ARRAYS))
        assert columns, "no text column found: is this the right database?"
        found = []
        for col in columns:
            table, column = col["table_name"], col["column_name"]
            # PostgreSQL narrows the rows down; Python decides with the exact rule
            rows = await conn.fetch(
                f'SELECT v FROM (SELECT "{column}"::text AS v FROM "{table}") t'
                " WHERE v ~ $1 OR EXISTS (SELECT 1 FROM unnest($2::text[]) s"
                "                         WHERE strpos(v, s) > 0)",
                _PAN_CANDIDATE, list(secrets))
            for row in rows:
                found += [f"{table}.{column}: {f}" for f in findings(row["v"], secrets)]
    finally:
        await conn.close()
    return found


async def test_no_table_holds_a_card_number_or_a_secret(
        settings: Settings, secrets: dict[str, str]) -> None:
    names = await _run_databases()
    session_db = urlparse(settings.database_url).path.lstrip("/")
    assert session_db in names
    found: list[str] = []
    for name in names:
        url = settings.database_url.rsplit("/", 1)[0] + f"/{name}"
        found += [f"{name}: {f}" for f in await _scan_database(url, secrets)]
    assert not found, "\n".join(sorted(set(found)))


def _log_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.log") if p.is_file())


def test_no_log_holds_a_card_number_or_a_secret(
        tmp_path_factory: pytest.TempPathFactory, secrets: dict[str, str]) -> None:
    base = tmp_path_factory.getbasetemp()
    files = _log_files(base)
    assert base / SESSION_LOG_NAME in files
    found: list[str] = []
    lines = 0
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                lines += 1
                where = f"{path.relative_to(base)}:{number}"
                found += [f"{where}: {f}" for f in findings(line, secrets)]
    assert lines > 0, "nothing was logged during the whole session: is the capture installed?"
    assert not found, "\n".join(found[:50])


async def test_redis_holds_no_card_number_or_secret(
        settings: Settings, secrets: dict[str, str]) -> None:
    # bytes, not text: velocity counters are packed binary (policies/buckets.lua); everything
    # is read as text with undecodable bytes replaced, which keeps every digit and letter
    redis = aioredis.Redis.from_url(settings.redis_url)
    keys_seen = 0
    found: list[str] = []
    batch: list[bytes] = []

    def text(value: object) -> str:
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        if isinstance(value, dict):
            return " ".join(f"{text(k)} {text(v)}" for k, v in value.items())
        return str(value)

    async def check(batch: list[bytes]) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.type(key)
            types = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for key, kind in zip(batch, types, strict=True):
                if kind == b"string":
                    pipe.get(key)
                elif kind == b"hash":
                    pipe.hgetall(key)
                else:
                    pipe.exists(key)
            values = await pipe.execute()
        for key, value in zip(batch, values, strict=True):
            name = text(key)
            found.extend(f"{re.sub(r'[0-9]{13,}', '…', name)}: {f}"
                         for f in findings(f"{name} {text(value)}", secrets))

    try:
        async for key in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            keys_seen += 1
            batch.append(key)
            if len(batch) == 500:
                await check(batch)
                batch = []
        if batch:
            await check(batch)
    finally:
        await redis.aclose()
    assert keys_seen > 0
    assert not found, "\n".join(found[:50])
