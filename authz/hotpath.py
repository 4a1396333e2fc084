"""The decision core every entry point calls (native API and provider adapters alike).

DESIGN §2 steps 3-5: one ``EVALSHA`` (duplicate check, card state, rules, velocity, counting), then
one PostgreSQL call (funds, decision record, hold; under load shared with the requests that
queued beside it: authz/batcher.py), then -- off the response path -- giving back velocity that
was counted for money that was not held. An approval is returned only after its
``hf_authorize`` has committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import asyncpg
from redis.exceptions import RedisError

from authz.batcher import LedgerBatcher
from authz.metrics import Metrics
from authz.settings import Settings
from holds import ledger
from holds.db import PG_UNAVAILABLE
from holds.model import hold_window_s
from policies.cache import PolicyCache, Verdict
from policies.model import AuthorizationRequest, Decision, Reason
from policies.store import load_card

__all__ = ["Authorizer", "month_of", "request_hash"]

log = logging.getLogger("holdfast.authorize")

_UTC: Final = dt.UTC
# failures that mean "this dependency is not answering", as opposed to a bug
_REDIS_DOWN: Final = (RedisError, OSError, TimeoutError)
_PG_DOWN: Final = PG_UNAVAILABLE  # holds/db.py


def request_hash(*fields: object) -> str:
    """Digest of a request's meaningful fields: a retry has the same one, a different request
    reusing the same id does not."""
    raw = "\x1f".join(["" if f is None else str(f) for f in fields])  # (a list: no generator)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


class Authorizer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: PolicyCache,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._redis_budget_s = settings.redis_timeout_ms / 1000
        self._deadline_s = settings.decision_deadline_ms / 1000
        self._background: set[asyncio.Task[None]] = set()  # give-backs: drained on stop
        self._followers: set[asyncio.Task[None]] = set()  # late-decision checks: cancelled
        self._standing_in = False
        self._batcher = LedgerBatcher(
            pool, metrics, stand_in_cap_minor=settings.stand_in_max_amount_minor,
            max_batch=settings.pg_batch_max, max_inflight=settings.pg_batch_inflight,
        )

    async def authorize(self, req: AuthorizationRequest) -> Decision:
        """Decide within the deadline, whatever the dependencies do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s
        now = self._clock()
        now_s = int(now)
        verdict = await self._check_redis(req, now_s)
        if verdict is not None and verdict.kind == "dup" and verdict.prior_hash != req.request_hash:
            # the same request identity with another body, while the first may be in flight:
            # answer without touching anything
            return Decision(req.authorization_id, False, 0, Reason.DUPLICATE, False)

        stand_in = verdict is None
        rule_reason = None if verdict is None else verdict.reason
        when = dt.datetime.fromtimestamp(now, tz=_UTC)
        expires = when + dt.timedelta(
            seconds=hold_window_s(
                req.mcc, self._settings.hold_window_s, self._settings.hold_window_long_s
            )
        )
        started = time.perf_counter()
        item = ledger.AuthorizeItem(
            req.provider, req.provider_id, req.sequence, req.authorization_id, req.parent_id,
            req.card_id, req.amount_minor, req.currency, req.partial_allowed,
            None if rule_reason is None else rule_reason.label,
            None if verdict is None else verdict.card_version,
            None if verdict is None else verdict.counters,
            req.request_hash, when, expires, req.merchant_id, req.merchant_name, req.mcc,
            req.country, req.channel, verdict is None,
            verdict is not None and verdict.kind == "ok",
        )
        # The ledger call is shared with the requests batched with this one: the deadline (a
        # timer that fails this request's own future) or a caller hanging up (which cancels
        # the future) never cuts it in half. The batcher does not send a request whose future
        # is done, and a call already on its way goes on, bounded by its own timeout. (A timer
        # instead of asyncio.timeout_at around asyncio.shield: ~5-10 us less per request.)
        future = self._batcher.submit(item, deadline)
        timer = loop.call_at(deadline, _give_up, future)
        try:
            result = await future
        except TimeoutError:
            self._metrics.deadline_exceeded.inc()
            log.error("ledger too slow, declining %s at the deadline", req.provider_id)
            self._track(self._follow_late(req), self._followers)
            return Decision(req.authorization_id, False, 0, Reason.ISSUER_UNAVAILABLE, stand_in)
        except _PG_DOWN as exc:
            self._metrics.postgres_errors.labels("authorize").inc()
            log.error("ledger unreachable, declining %s: %s", req.provider_id, type(exc).__name__)
            return Decision(req.authorization_id, False, 0, Reason.ISSUER_UNAVAILABLE, stand_in)
        finally:
            timer.cancel()
        self._metrics.observe_postgres("authorize", time.perf_counter() - started)

        if verdict is not None:
            self._give_back(req, verdict, result)
        reason = Reason.from_label(result.reason)
        return Decision(
            result.authorization_id, result.approved, result.approved_amount_minor, reason,
            result.stand_in, replay=result.status == "replay",
        )

    async def _check_redis(self, req: AuthorizationRequest, now_s: int) -> Verdict | None:
        """The Redis verdict, reading the card through from PostgreSQL on a miss; None when
        Redis does not answer within its budget (stand-in)."""
        month = month_of(now_s)
        started = time.perf_counter()
        budget_s = self._redis_budget_s
        try:
            if self._cache.bounded_s == budget_s:
                # the hot path's own connection fails the call itself after the budget (one
                # timer per connection, not one per call: policies/resp.py)
                verdict = await self._cache.check(req, now_s, month)
            else:
                async with asyncio.timeout(budget_s):
                    verdict = await self._cache.check(req, now_s, month)
            if verdict.kind == "miss":
                async with asyncio.timeout(budget_s - (time.perf_counter() - started)):
                    loaded = await self._load_and_check(req, now_s, month)
                if loaded is None:
                    return None
                verdict = loaded
        except (*_REDIS_DOWN, *_PG_DOWN) as exc:
            # (a cache miss reads the card from PostgreSQL: if that fails too, the ledger call
            # that follows fails the same way and answers issuer_unavailable)
            self._metrics.redis_errors.labels("decide").inc()
            self._standing_in = True
            self._metrics.stand_in.set(1)
            log.warning("redis unavailable, standing in for %s: %s", req.provider_id,
                        type(exc).__name__)
            return None
        if self._standing_in:
            self._standing_in = False
            self._metrics.stand_in.set(0)
        self._metrics.observe_redis("decide", time.perf_counter() - started)
        return verdict

    async def _load_and_check(self, req: AuthorizationRequest, now_s: int, month: int
                              ) -> Verdict | None:
        """After a cache miss: the card from PostgreSQL into the cache, and the check again."""
        self._metrics.cache_loads.inc()
        card = await load_card(self._pool, req.card_id)
        if card is None:
            # unknown card: PostgreSQL records the decline as invalid_card
            return Verdict("decline", Reason.INVALID_CARD)
        await self._cache.put(card)
        verdict = await self._cache.check(req, now_s, month)
        if verdict.kind == "miss":
            # gone again between the write and the check (evicted, flushed, a failover): no
            # rule or velocity verdict exists for this request, so it is decided as a stand-in
            # (capped, counted later), never as one that passed its rules
            self._metrics.redis_errors.labels("miss_after_load").inc()
            log.warning("card %s still not cached after loading it: standing in for %s",
                        req.card_id, req.provider_id)
            return None
        return verdict

    async def _follow_late(self, req: AuthorizationRequest) -> None:
        """After answering 'issuer_unavailable' at the deadline, find out what the ledger did.
        The statement was cancelled, so normally nothing; if it committed just before the
        cancel landed, the approval stands (the hold is kept: that never overspends, and a
        retry of the request replays it) and operations are told."""
        for wait_s in (1, 5, 30):
            await asyncio.sleep(wait_s)
            try:
                decision = await self._pool.fetchval(
                    "SELECT decision FROM authorization_requests WHERE provider = $1"
                    " AND provider_id = $2 AND sequence = $3",
                    req.provider, req.provider_id, req.sequence, timeout=5)
            except (*_PG_DOWN, asyncpg.PostgresError):
                continue
            if decision == "approve":
                self._metrics.late_approvals.inc()
                log.error("authorisation %s was approved after the deadline answered "
                          "issuer_unavailable; its hold stands until reversed or expired",
                          req.provider_id)
            return

    def _track(self, coro: Coroutine[Any, Any, None],
               into: set[asyncio.Task[None]] | None = None) -> None:
        tasks = self._background if into is None else into
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _give_back(
        self, req: AuthorizationRequest, verdict: Verdict, result: ledger.AuthorizeResult
    ) -> None:
        """Counters must reflect money actually held, counted once. Only the attempt that
        counted (verdict ``ok``) settles them; a duplicate attempt never does, so if the counting
        attempt died the counters stay too high: that fails safe. The give-back runs off the
        response path."""
        if verdict.kind != "ok":
            return
        count = 0 if req.parent_id else 1
        if result.status == "new" or (result.status == "replay" and not result.counted):
            # this attempt's count stands behind the decision: give back what was not held
            amount = req.amount_minor - result.approved_amount_minor
            count = 0 if result.approved else count
        else:
            # a conflict, or a replay of a decision already counted (the dedupe key expired):
            # this attempt counted twice
            amount = req.amount_minor
        if amount <= 0 and count == 0:
            return
        self._track(self._release(req.card_id, verdict.buckets, amount, count))

    async def _release(self, card_id: str, buckets: str, amount: int, count: int) -> None:
        try:
            await self._cache.release(card_id, buckets, max(amount, 0), count)
            self._metrics.compensations.labels("ok").inc()
        except _REDIS_DOWN as exc:
            self._metrics.compensations.labels("failed").inc()
            log.warning("velocity give-back failed for card %s: %s", card_id, type(exc).__name__)

    async def drain(self) -> None:
        """Wait for pending give-backs (on shutdown and in tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        await self._batcher.close()
        await self.drain()
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*list(self._followers), return_exceptions=True)


def _give_up(future: asyncio.Future[ledger.AuthorizeResult]) -> None:
    """The request's deadline: it stops waiting for the ledger (TimeoutError)."""
    if not future.done():
        future.set_exception(TimeoutError())


_DAY_S: Final = 86_400
_month_cache: list[int] = [-1, 0]  # [the UTC day (Unix time // 86,400) last asked, its month]


def month_of(now_s: int) -> int:
    """The UTC month of a Unix time as YYYYMM (what the decision script compares expiry with);
    worked out once a day (``time.gmtime`` per request was 0.5 % of the server's samples)."""
    day = now_s // _DAY_S
    if day != _month_cache[0]:
        t = time.gmtime(day * _DAY_S)
        _month_cache[0], _month_cache[1] = day, t.tm_year * 100 + t.tm_mon
    return _month_cache[1]
