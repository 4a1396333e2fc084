"""The hot path's pipelined Redis connection (policies/resp.py), against the real Redis.

Blocking commands (BLPOP on a key nobody pushes to) make Redis slow for this one connection only,
without slowing the shared server for anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from authz.settings import Settings
from policies.cache import PolicyCache
from policies.model import AuthorizationRequest
from policies.resp import PipelinedRedis, pack
from tests.conftest import REDIS_URL, RUN_ID
from tests.support import Api


@contextlib.asynccontextmanager
async def _connected(stale_s: float = 5.0, reply_timeout_s: float | None = None
                     ) -> AsyncIterator[PipelinedRedis]:
    fast = PipelinedRedis.from_url(REDIS_URL, connect_timeout_s=2.0, stale_s=stale_s,
                                   reply_timeout_s=reply_timeout_s)
    assert fast is not None
    try:
        yield fast
    finally:
        await fast.aclose()


def test_pack_is_resp() -> None:
    assert pack("EVALSHA", "ab", 1, "k") == (
        b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n")
    assert pack("SET", "k", "caf\u00e9") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\ncaf\xc3\xa9\r\n"
    assert pack("INCRBY", b"k\r\n", -12, "") == (
        b"*4\r\n$6\r\nINCRBY\r\n$3\r\nk\r\n\r\n$3\r\n-12\r\n$0\r\n\r\n")
    with pytest.raises(TypeError):
        pack("SET", "k", None)  # type: ignore[arg-type]


def test_from_url_speaks_only_plain_tcp() -> None:
    fast = PipelinedRedis.from_url("redis://:p%40ss@10.0.0.5:6380/3")
    assert fast is not None
    assert (fast._host, fast._port, fast._db, fast._password) == ("10.0.0.5", 6380, 3, "p@ss")
    for url in ("rediss://127.0.0.1:6379/0", "unix:///tmp/redis.sock",
                "redis://127.0.0.1:6379/0?socket_timeout=1", "redis://127.0.0.1/abc"):
        assert PipelinedRedis.from_url(url) is None, url


async def test_concurrent_calls_each_get_their_own_reply() -> None:
    async with _connected() as fast:
        replies = await asyncio.gather(*[fast.call("ECHO", f"r{i}") for i in range(300)])
        assert replies == [f"r{i}" for i in range(300)]
        key = f"hft:{RUN_ID}:resp:never-set-int"
        assert await fast.call("INCRBY", key, 0) == 0
        assert await fast.call("DEL", key) == 1


async def test_a_lone_command_goes_out_at_once_and_one_behind_it_at_the_end_of_the_turn(
) -> None:
    """Nothing unanswered: the command is written before its caller yields (a blocking client
    sees its effect while this event loop has not run since). One sent while another is
    unanswered waits for the end of the loop's turn, with whatever else that turn sends."""
    sync = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    first, second = f"hft:{RUN_ID}:resp:at-once", f"hft:{RUN_ID}:resp:end-of-turn"
    try:
        async with _connected() as fast:
            assert await fast.call("PING") == "PONG"  # connected, nothing unanswered
            proto = fast._proto
            assert proto is not None and not proto.pending
            loop = asyncio.get_running_loop()
            alone = proto.request(pack("SET", first, "1"), loop)
            behind = proto.request(pack("SET", second, "2"), loop)
            deadline = time.monotonic() + 2.0  # (blocking: the loop does not run meanwhile)
            while sync.get(first) is None and time.monotonic() < deadline:
                time.sleep(0.005)  # noqa: ASYNC251 (the loop must not run)
            assert sync.get(first) == "1"
            assert sync.get(second) is None  # not written: the turn has not ended
            assert list(await asyncio.gather(alone, behind)) == ["OK", "OK"]
            assert sync.get(second) == "2"
    finally:
        sync.delete(first, second)
        sync.close()


async def test_error_replies_are_redis_errors_and_the_connection_goes_on() -> None:
    async with _connected() as fast:
        with pytest.raises(NoScriptError):
            await fast.call("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match="unknown command"):
            await fast.call("NOSUCHCOMMAND", "x")
        assert await fast.call("ECHO", "still here") == "still here"


async def test_a_caller_that_gives_up_leaves_the_order_intact() -> None:
    async with _connected(stale_s=5.0) as fast:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await fast.call("BLPOP", f"hft:{RUN_ID}:resp:nobody-pushes", "0.3")
        # queued behind the abandoned BLPOP: its reply (nil) is dropped, this one gets its own
        assert await fast.call("ECHO", "after") == "after"


async def test_a_connection_silent_too_long_is_replaced() -> None:
    async with _connected(stale_s=0.1) as fast:
        first = await fast.call("CLIENT", "ID")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await fast.call("BLPOP", f"hft:{RUN_ID}:resp:nobody-pushes", "5")
        # the oldest command waited longer than stale_s: that connection was closed, a new
        # one answers at once (not after the 5 s BLPOP)
        async with asyncio.timeout(2):
            second = await fast.call("CLIENT", "ID")
        assert isinstance(first, int) and isinstance(second, int) and second != first


async def test_each_call_times_out_on_its_own_clock_and_the_order_holds() -> None:
    """With a reply timeout and no timeout of the caller's: a blocked command fails at its own
    time, a command queued 0.1 s behind it (Redis answers in order, so it waits too) at its
    own, later time; once Redis answers again, every late reply is dropped in order."""
    async with _connected(stale_s=5.0, reply_timeout_s=0.2) as fast:
        loop = asyncio.get_running_loop()
        failed_at: list[float] = []

        async def timed_out(*command: str) -> None:
            with pytest.raises(TimeoutError):
                await fast.call(*command)
            failed_at.append(loop.time())

        start = loop.time()
        blocked = asyncio.ensure_future(
            timed_out("BLPOP", f"hft:{RUN_ID}:resp:nobody-pushes", "0.5"))
        await asyncio.sleep(0.1)
        behind = asyncio.ensure_future(timed_out("ECHO", "behind"))
        await asyncio.gather(blocked, behind)
        first, second = (t - start for t in failed_at)
        # each at or after its own deadline, the first well before Redis answers it (0.5 s)
        assert 0.2 <= first < 0.45 and second >= 0.3 and first < second
        await asyncio.sleep(0.35)  # the BLPOP's nil and the ECHO's reply arrive, unclaimed
        assert await fast.call("ECHO", "after") == "after"
        assert await fast.call("ECHO", "and again") == "and again"


async def test_the_reply_timeout_closes_a_connection_silent_too_long() -> None:
    """No caller of its own gives up here: the connection's timer sees the oldest command has
    waited past stale_s and closes the connection, so the next call gets a new one at once."""
    async with _connected(stale_s=0.1, reply_timeout_s=0.15) as fast:
        first = await fast.call("CLIENT", "ID")
        with pytest.raises(TimeoutError):
            await fast.call("BLPOP", f"hft:{RUN_ID}:resp:nobody-pushes", "5")
        async with asyncio.timeout(2):
            second = await fast.call("CLIENT", "ID")
        assert isinstance(first, int) and isinstance(second, int) and second != first


async def test_a_timer_set_for_an_answered_command_does_not_close_the_connection_early() -> None:
    """The connection's one timer was armed for the handshake; it fires while the command sent
    later has waited past stale_s but not its own reply timeout: that command still gets its
    TimeoutError at its own deadline (it got a ConnectionError before it, once a first round
    trip took a few milliseconds on a loaded machine)."""
    async with _connected(stale_s=0.1, reply_timeout_s=0.15) as fast:
        loop = asyncio.get_running_loop()
        first = await fast.call("CLIENT", "ID")
        await asyncio.sleep(0.03)  # the handshake's timer is due ~0.12 s after the next send
        sent = loop.time()
        with pytest.raises(TimeoutError):
            await fast.call("BLPOP", f"hft:{RUN_ID}:resp:nobody-pushes", "5")
        assert loop.time() - sent > 0.149  # not before its own deadline
        async with asyncio.timeout(2):
            second = await fast.call("CLIENT", "ID")
        assert isinstance(first, int) and isinstance(second, int) and second != first


async def test_a_killed_connection_fails_its_callers_and_the_next_call_reconnects() -> None:
    connects: list[None] = []
    fast = PipelinedRedis.from_url(REDIS_URL, connect_timeout_s=2.0, stale_s=5.0,
                                   on_connect=lambda: connects.append(None))
    assert fast is not None
    admin = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        my_id = await fast.call("CLIENT", "ID")
        blocked = asyncio.ensure_future(fast.call("BLPOP", f"hft:{RUN_ID}:resp:nobody-pushes", "5"))
        await asyncio.sleep(0.05)
        assert isinstance(my_id, int)
        assert await admin.client_kill_filter(_id=str(my_id)) == 1
        with pytest.raises(RedisConnectionError):
            async with asyncio.timeout(2):
                await blocked
        assert len(connects) == 1
        assert await fast.call("ECHO", "back") == "back"
        assert await fast.call("CLIENT", "ID") != my_id
        assert len(connects) == 2  # what holdfast_redis_hotpath_connects_total counts
    finally:
        await fast.aclose()
        await admin.aclose()


async def test_no_redis_is_a_connection_error() -> None:
    fast = PipelinedRedis("127.0.0.1", 1, connect_timeout_s=1.0)  # nothing listens on port 1
    with pytest.raises(RedisConnectionError):
        await fast.call("PING")


async def test_selects_the_database_of_its_url(settings: Settings) -> None:
    fast = PipelinedRedis.from_url("redis://127.0.0.1:6379/5")
    assert fast is not None
    try:
        info = await fast.call("CLIENT", "INFO")
        assert isinstance(info, str) and " db=5 " in info and " name=holdfast-hotpath " in info
    finally:
        await fast.aclose()


async def test_the_policy_cache_reloads_lost_scripts_over_the_fast_path(
        settings: Settings, redis: aioredis.Redis) -> None:
    async with _connected() as fast:
        cache = PolicyCache(redis, settings.redis_prefix + "resp:", 60, fast)
        await cache.load_scripts()
        cache._sha["velocity"] = "f" * 40  # as if Redis had restarted and lost the script
        req = AuthorizationRequest(
            provider="native", provider_id="resp-1", sequence=0, authorization_id="resp-1",
            card_id="card-resp-none", amount_minor=100, currency="GBP", merchant_id="m",
            merchant_name="M", mcc="5411", country="GB", channel="pos", partial_allowed=False,
            parent_id=None, request_hash="h")
        verdict = await cache.check(req, 1_800_000_000, 202701)
        assert verdict.kind == "miss"  # the script ran: no policy cached for this card
        assert cache._sha["velocity"] != "f" * 40


async def test_the_server_decides_over_it_and_counts_its_connections(api: Api) -> None:
    acct = await api.account("GBP", funds=1_000)
    card = await api.card(acct)
    r = await api.authorize(card, 100)
    assert r.status == 200 and r.body["decision"] == "approve"
    metrics = await api.raw("GET", "/metrics")
    # the session's server opened its pipelined connection once and has kept it
    assert "holdfast_redis_hotpath_connects_total 1.0" in str(metrics.body)
