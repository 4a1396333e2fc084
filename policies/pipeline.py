"""Shared round trips for the decision script: ``EVALSHA`` calls that arrive while earlier ones
are still on the wire go to Redis together, as one pipelined write.

The same shape as the ledger's group commit (authz/batcher.py): at most ``max_inflight``
pipelines at once; a call that finds one free goes at once and alone, so nothing waits for
company at low load; calls that find all busy queue and leave together with the next one. Redis
runs the scripts one after another in arrival order, each atomic, exactly as separate calls
would: batching changes how many bytes and system calls carry them, not what they do.

A call's error is its own (a ``NOSCRIPT`` for one script is raised to that caller, who reloads
and retries alone); a lost connection fails every call of the pipeline, as it would have failed
each of them. A caller that gives up (its Redis budget ran out) leaves its script to run or not:
the same as a timed-out single call.

Single Redis only: on a Redis Cluster each script goes to its slot's primary, and calls are made
one by one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import redis.asyncio as aioredis

__all__ = ["ScriptPipeline"]


@dataclass(slots=True)
class _Call:
    sha: str
    keys: list[str]
    args: list[str]
    future: asyncio.Future[object]


class ScriptPipeline:
    def __init__(self, client: aioredis.Redis, *, max_batch: int, max_inflight: int) -> None:
        self._client = client
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: deque[_Call] = deque()
        self._inflight = 0
        self._runners: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # writes to Redis so far (one per pipeline or lone call)

    async def evalsha(self, sha: str, keys: list[str], args: list[str]) -> object:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append(_Call(sha, keys, args, future))
        if self._inflight < self._max_inflight:
            self._inflight += 1
            runner = asyncio.create_task(self._run())
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return await future

    async def _run(self) -> None:
        try:
            while self._queue:
                calls = [self._queue.popleft()
                         for _ in range(min(self._max_batch, len(self._queue)))]
                calls = [c for c in calls if not c.future.done()]  # callers that gave up
                if calls:
                    await self._send(calls)
        finally:
            self._inflight -= 1

    async def _send(self, calls: list[_Call]) -> None:
        self.round_trips += 1
        try:
            if len(calls) == 1:
                c = calls[0]
                results: list[object] = [
                    await self._client.evalsha(c.sha, len(c.keys), *c.keys, *c.args)]
            else:
                pipe = self._client.pipeline(transaction=False)
                for c in calls:
                    pipe.evalsha(c.sha, len(c.keys), *c.keys, *c.args)
                results = await pipe.execute(raise_on_error=False)
        except (asyncio.CancelledError, Exception) as exc:
            for c in calls:
                if not c.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        c.future.cancel()
                    else:
                        c.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for c, result in zip(calls, results, strict=True):
            if c.future.done():
                continue
            if isinstance(result, Exception):
                c.future.set_exception(result)
            else:
                c.future.set_result(result)

    async def close(self) -> None:
        while self._runners:
            await asyncio.gather(*list(self._runners), return_exceptions=True)


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
