"""Shared Redis round trips for the decision script (policies/pipeline.py), against the real
Redis: scripts queued together leave as one pipeline, run in arrival order, and each caller gets
its own answer or its own error."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from authz.settings import Settings
from policies.pipeline import ScriptPipeline
from tests.support import uid

# appends ARGV[1] to a list and answers the list's length: the order scripts ran in is kept
_APPEND = "return redis.call('RPUSH', KEYS[1], ARGV[1])"


async def test_scripts_queued_together_leave_as_one_round_trip_in_arrival_order(
        redis: aioredis.Redis, settings: Settings) -> None:
    sha = await redis.script_load(_APPEND)
    key = f"{settings.redis_prefix}{uid('pipe')}"
    pipe = ScriptPipeline(redis, max_batch=64, max_inflight=1)

    answers = await asyncio.gather(*(pipe.evalsha(sha, [key], [str(i)]) for i in range(10)))

    assert answers == list(range(1, 11))
    assert await redis.lrange(key, 0, -1) == [str(i) for i in range(10)]
    assert pipe.round_trips == 1
    await pipe.close()


async def test_a_lost_script_is_its_callers_error_only(redis: aioredis.Redis,
                                                        settings: Settings) -> None:
    sha = await redis.script_load(_APPEND)
    key = f"{settings.redis_prefix}{uid('pipe')}"
    pipe = ScriptPipeline(redis, max_batch=64, max_inflight=1)

    answers = await asyncio.gather(
        pipe.evalsha(sha, [key], ["a"]),
        pipe.evalsha("0" * 40, [key], ["lost"]),
        pipe.evalsha(sha, [key], ["b"]),
        return_exceptions=True)

    assert answers[0] == 1 and answers[2] == 2
    assert isinstance(answers[1], NoScriptError)
    assert await redis.lrange(key, 0, -1) == ["a", "b"]
    await pipe.close()


async def test_batches_are_bounded_and_a_caller_that_gave_up_is_not_sent(
        redis: aioredis.Redis, settings: Settings) -> None:
    sha = await redis.script_load(_APPEND)
    key = f"{settings.redis_prefix}{uid('pipe')}"
    pipe = ScriptPipeline(redis, max_batch=4, max_inflight=1)

    calls = [asyncio.ensure_future(pipe.evalsha(sha, [key], [str(i)])) for i in range(10)]
    await asyncio.sleep(0)  # every call queued, none sent yet
    calls[5].cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(answers[5], asyncio.CancelledError)
    assert await redis.lrange(key, 0, -1) == [str(i) for i in range(10) if i != 5]
    assert pipe.round_trips == 3  # 4 + 4 + 2 queued; the cancelled call's slot went unsent
    await pipe.close()


async def test_a_lost_connection_fails_every_call_of_its_pipeline() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    pipe = ScriptPipeline(client, max_batch=64, max_inflight=1)

    answers = await asyncio.gather(*(pipe.evalsha("0" * 40, ["k"], ["v"]) for _ in range(3)),
                                   return_exceptions=True)

    assert all(isinstance(a, RedisConnectionError) for a in answers), answers
    await pipe.close()
    await client.aclose()


@pytest.mark.parametrize("batch_max", [1, 64])
def test_the_setting_reads_from_the_environment(batch_max: int) -> None:
    env = {"HOLDFAST_REDIS_BATCH_MAX": str(batch_max)}
    assert Settings.from_env(env).redis_batch_max == batch_max
