"""Connection types the ledger accepts: a pool, a connection, or a pooled connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

__all__ = ["PG_UNAVAILABLE", "Conn", "Executor"]

if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not subscriptable
    from asyncpg.pool import PoolConnectionProxy

    # something a single transaction can run on
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    # anything that can run one statement
    Executor: TypeAlias = asyncpg.Pool[Any] | Conn
else:
    Conn = Any
    Executor = Any


# failures that mean "PostgreSQL is not answering", as opposed to "this statement is wrong"
PG_UNAVAILABLE = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
)
