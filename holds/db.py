"""Connection types the ledger accepts: a pool, a connection, or a pooled connection."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["Conn", "Executor"]

# something a single transaction can run on
Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
# anything that can run one statement
Executor: TypeAlias = asyncpg.Pool[Any] | Conn
