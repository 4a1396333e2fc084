"""Versioned SQL migrations: ``holds/migrations/NNNN_name.sql`` applied in order, each in its own
transaction, recorded in ``schema_migrations`` with a checksum. Re-running is a no-op; an applied
file whose text changed is an error (write a new migration instead)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from holds.db import Conn

__all__ = ["Migration", "MigrationError", "applied_versions", "available", "migrate", "pending"]

# any constant: serialises concurrent `holdfast migrate` runs on one database
_LOCK_KEY = 0x486F6C64


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    folder = resources.files("holds") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


_CREATE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def applied_versions(conn: Conn) -> dict[str, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def pending(conn: Conn) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in available() if m.version not in done]


async def migrate(conn: Conn, through: str | None = None) -> list[Migration]:
    """Apply every pending migration (up to version ``through``, when given: a benchmark's
    database as of an earlier release); return those applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE)
        done = await applied_versions(conn)
        applied = []
        for m in available():
            if through is not None and m.version > through:
                break
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version}_{m.name} changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            applied.append(m)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
