"""Group commit for the hot path: authorisations that arrive while earlier ledger calls are still
running go to PostgreSQL together, in one transaction.

At most ``max_inflight`` ledger calls run at once. A request that finds a free slot goes out at
once, alone (no waiting for company: at low load nothing is added to its latency); one that finds
every slot busy queues, and the next call to finish takes the whole queue (up to ``max_batch``)
with it. So batches form only when the ledger is the bottleneck, and they grow with the load:
one round trip, one commit and one WAL flush then serve many authorisations, which is most of
what PostgreSQL spends on a lone one.

A batch never takes a request whose card is in a call still running: that call holds the card's
account locked until it commits, and the request would hold up the whole of its own batch
waiting for the lock. It waits at the head of the queue instead, and the call that holds its
card takes it when it finishes. (Two cards of one account in two calls can still meet at the
lock; that costs time, never correctness: every writer locks in the same order.)

Every request still gets exactly what a call of its own would give: ``hf_authorize_batch``
decides the requests one after another, in arrival order, and answers after the commit. A batch
that fails as a whole on something one request may have caused (a unique violation, a deadlock,
a constraint) is retried one request at a time, so one bad request cannot take its neighbours
down with it. Deadlines: each request's own; a batch's statement timeout is its earliest, and a
request whose deadline passed while it queued is not sent.

Each slot keeps its connection between calls (taking one from asyncpg's pool and giving it back
cost a lone request's call ~16 % of the server's instructions); a connection whose call failed
goes back to the pool, and the slots never keep so many that the pool has fewer than two left
for its other users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from authz.metrics import Metrics
from holds import ledger
from holds.db import PG_UNAVAILABLE, Conn

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["LedgerBatcher"]

_LEFT_FOR_OTHERS = 2  # pooled connections the batcher never keeps idle

log = logging.getLogger("holdfast.authorize")


@dataclass(slots=True)
class _Pending:
    item: ledger.AuthorizeItem
    deadline: float  # loop time
    future: asyncio.Future[ledger.AuthorizeResult]
    waited: bool = False  # held back once for its card (counted once)


class LedgerBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        *,
        stand_in_cap_minor: int,
        max_batch: int,
        max_inflight: int,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._cap = stand_in_cap_minor
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: deque[_Pending] = deque()
        self._inflight = 0
        self._cards_sent: dict[str, int] = {}  # card -> requests of it in calls still running
        self._runners: set[asyncio.Task[None]] = set()
        # connections the slots keep between calls (at most one a slot): taking one from the
        # pool and giving it back cost a ledger call more Python than its own round trip
        self._idle: list[PoolConnectionProxy[asyncpg.Record]] = []
        # never so many that the pool's other users (a cache miss's read-through, the
        # follow-ups, the management routes) are left without one
        self._keep = max(0, min(max_inflight, pool.get_max_size() - _LEFT_FOR_OTHERS))

    def submit(self, item: ledger.AuthorizeItem, deadline: float
               ) -> asyncio.Future[ledger.AuthorizeResult]:
        """Queue one request; the future has its result once its batch has committed (or the
        error that stopped it). The future is this request's alone: a caller that gives up may
        cancel it or fail it (TimeoutError); a request whose future is done is not sent, and a
        call already on its way goes on for the others and drops its answer."""
        future: asyncio.Future[ledger.AuthorizeResult] = (
            asyncio.get_running_loop().create_future())
        future.add_done_callback(_retrieve)
        self._queue.append(_Pending(item, deadline, future))
        if self._inflight < self._max_inflight:
            self._inflight += 1
            runner = asyncio.create_task(self._run())
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return future

    async def _run(self) -> None:
        """One slot: send what is queued, until nothing is (or all of it waits for cards in a
        call still running, whose slot then takes it)."""
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    break
                cards = self._cards_sent
                for pending in batch:
                    card = pending.item.card_id
                    cards[card] = cards.get(card, 0) + 1
                try:
                    await self._send(batch)
                finally:
                    for pending in batch:
                        card = pending.item.card_id
                        left = cards[card] - 1
                        if left:
                            cards[card] = left
                        else:
                            del cards[card]
        finally:
            self._inflight -= 1

    def _take(self) -> list[_Pending]:
        """The next batch: up to ``max_batch`` queued requests in arrival order, but never two of
        one identity or one authorisation id (a retry of a request queued behind it): the ledger
        can only answer the second once the first is written, so it waits for the next batch,
        keeping its place at the head of the queue. Nor one whose card is in a call still
        running (it would wait there for that call's lock)."""
        batch: list[_Pending] = []
        later: list[_Pending] = []
        keys: set[tuple[str, str, int] | str] = set()
        busy = self._cards_sent
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            item = pending.item
            identity = (item.provider, item.provider_id, item.sequence)
            if identity in keys or item.authorization_id in keys:
                later.append(pending)
                continue
            if item.card_id in busy:
                if not pending.waited:
                    pending.waited = True
                    self._metrics.pg_batch_card_waits.inc()
                later.append(pending)
                continue
            keys.add(identity)
            keys.add(item.authorization_id)
            batch.append(pending)
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            batch = _live(batch, loop.time())
            if not batch:
                return
            started = time.perf_counter()
            conn = await self._connection(min(p.deadline for p in batch) - loop.time())
            keep = False
            try:
                batch = _live(batch, loop.time())
                if not batch:
                    keep = True
                    return
                try:
                    results = await ledger.authorize_many(
                        conn, [p.item for p in batch], stand_in_cap_minor=self._cap,
                        timeout_s=min(p.deadline for p in batch) - loop.time())
                except PG_UNAVAILABLE:
                    raise
                except asyncpg.PostgresError as exc:
                    if len(batch) > 1:
                        self._metrics.pg_batch_retries.inc()
                        log.warning("ledger batch of %d failed (%s); deciding one by one",
                                    len(batch), type(exc).__name__)
                    await self._one_by_one(conn, batch)
                    keep = True
                    return
                keep = True
            finally:
                await self._put_back(conn, keep)
            self._metrics.pg_batch_size.observe(len(batch))
            self._metrics.observe_postgres("authorize_batch", time.perf_counter() - started)
            for pending, result in zip(batch, results, strict=True):
                _settle(pending, result)
        except (asyncio.CancelledError, Exception) as exc:
            # the whole batch shares the failure: each request answers as its own call would
            for pending in batch:
                _fail(pending, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _connection(self, wait_s: float) -> PoolConnectionProxy[asyncpg.Record]:
        """A connection of the slots' own, or a new one from the pool (waiting at most
        ``wait_s``, the batch's earliest deadline)."""
        while self._idle:
            conn = self._idle.pop()
            if _usable(conn):
                return conn
            await self._pool.release(conn)
        return await self._pool.acquire(timeout=max(wait_s, 0.001))

    async def _put_back(self, conn: PoolConnectionProxy[asyncpg.Record], keep: bool
                        ) -> None:
        """Keep a connection whose call ended cleanly for the next call; one that failed in any
        other way (a timeout, a lost server, a cancellation) goes back to the pool, which
        finishes what is left of it (a cancelled statement, an open transaction)."""
        if keep and len(self._idle) < self._keep and _usable(conn):
            self._idle.append(conn)
        else:
            await self._pool.release(conn)

    async def _one_by_one(self, conn: Conn, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for pending in batch:
            for attempt in (1, 2):
                remaining = pending.deadline - loop.time()
                if remaining <= 0:
                    _fail(pending, TimeoutError())
                    break
                try:
                    (result,) = await ledger.authorize_many(
                        conn, [pending.item], stand_in_cap_minor=self._cap, timeout_s=remaining)
                except asyncpg.UniqueViolationError as exc:
                    # a concurrent request with the same identity committed first: the second
                    # attempt finds its row and answers as a replay or a conflict
                    if attempt == 2:
                        _fail(pending, exc)
                    continue
                except PG_UNAVAILABLE:
                    raise
                except asyncpg.PostgresError as exc:
                    _fail(pending, exc)
                    break
                _settle(pending, result)
                break

    async def close(self) -> None:
        """Wait for the calls on their way (their requests are waiting for them)."""
        while self._runners:
            await asyncio.gather(*list(self._runners), return_exceptions=True)
        while self._idle:
            await self._pool.release(self._idle.pop())


def _live(batch: list[_Pending], now: float) -> list[_Pending]:
    """The requests still worth sending: not yet answered, deadline not passed."""
    live = []
    for pending in batch:
        if pending.future.done():
            continue
        if pending.deadline <= now:
            _fail(pending, TimeoutError())
            continue
        live.append(pending)
    return live


def _usable(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
    """Open, and not in a transaction. (A connection lost while kept here was given back to the
    pool by asyncpg itself, which detaches it: any call on it then raises InterfaceError.)"""
    try:
        return not conn.is_closed() and not conn.is_in_transaction()
    except asyncpg.InterfaceError:
        return False


def _settle(pending: _Pending, result: ledger.AuthorizeResult) -> None:
    if not pending.future.done():
        pending.future.set_result(result)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        if isinstance(exc, asyncio.CancelledError):
            pending.future.cancel()
        else:
            pending.future.set_exception(exc)


def _retrieve(future: asyncio.Future[ledger.AuthorizeResult]) -> None:
    """A request the deadline gave up on leaves its future unread: take its error, so asyncio
    does not report it as never retrieved (the request's follow-up reads the ledger itself)."""
    if not future.cancelled():
        future.exception()
