"""A lean, pipelined Redis connection for the hot path's one command (``EVALSHA velocity.lua``).

redis-py's asyncio client costs ~85-100 us of Python per call on this machine (connection pool,
retry wrapper, command packing and encoders, a timeout context around the read, the pool
release): about a fifth of the server's CPU per authorisation. This connection does only what
that one call needs: it packs the command as RESP bytes, writes them at once, and matches
replies to callers in order (Redis answers a connection's commands in the order sent), parsed
by hiredis -- the parser redis-py itself uses. Every concurrent decision shares the one
connection: a command made while none is unanswered is written at once, and the commands made
while others are waiting go out in one write at the end of the event loop's turn, so requests
that arrive together cost one system call and their replies come back in one read: pipelining
without waiting to form a batch. Measured in isolation (8 concurrent
calls): ~15-20 us of Python per call, against ~65-75 us with a redis-py pipeline of 8 and ~85-100
us with one redis-py call each.

Scope: a single Redis over TCP (``redis://[[user]:password@]host[:port][/db]``). Redis Cluster,
TLS (``rediss://``) and Unix sockets keep redis-py (authz/app.py chooses), and so does every other
command (cache writes, give-backs, rate limits, script loading).

Failures look like redis-py's, so callers handle one family: a lost or refused connection is
``redis.exceptions.ConnectionError`` (every call waiting on it gets it; the next call connects
again), an error reply is ``ResponseError`` (``NoScriptError`` for NOSCRIPT). With
``reply_timeout_s`` (the hot path's Redis budget) a call not answered in that time fails with
``TimeoutError``: one timer per connection, armed for the oldest unanswered command only, does it
(commands are answered in the order sent and all wait the same time, so the oldest is always
the first due), where ``asyncio.timeout`` around each call cost ~8 us of the server's ~250 per
authorisation. A caller that gives up (that way or its own) leaves its reply to be read and
dropped, so the order stays right; if the oldest unanswered command has waited longer than
``stale_s``, the connection is taken as dead and closed, and the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["PipelinedRedis", "pack"]

_DEFAULT_PORT: Final = 6379
# (hiredis's stub types the argument as a tuple of one part; it takes any number)
_pack_command = cast(Callable[[tuple[str | int | bytes, ...]], bytes], hiredis.pack_command)


def pack(*parts: str | int | bytes) -> bytes:
    """One command as RESP: an array of bulk strings (text as UTF-8, integers in decimal).
    hiredis packs it in C: ~2.6 us for the decision's 18 parts against ~10.4 us in Python
    (``b"%d" %`` formatting per part), ~8 us of the server's CPU per authorisation."""
    return _pack_command(parts)


def _error(reply: hiredis.ReplyError) -> ResponseError:
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    return ResponseError(text)


class _Protocol(asyncio.Protocol):
    def __init__(self, reply_timeout_s: float | None = None, stale_s: float = 1.0) -> None:
        self._reader = hiredis.Reader(encoding="utf-8")
        # (future, loop time sent) per command sent and not yet answered, oldest first
        self.pending: deque[tuple[asyncio.Future[object], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._outbox: list[bytes] = []
        self._reply_timeout_s = reply_timeout_s
        self._stale_s = stale_s
        self._timer: asyncio.TimerHandle | None = None
        self._expired = 0  # how many of the oldest pending have been failed by the timer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TCP transport is not a subclass of asyncio.Transport, but is one)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not self.pending:  # a reply nobody asked for: the stream is out of step
                self.abort("reply out of order")
                return
            future, _ = self.pending.popleft()
            if self._expired:
                self._expired -= 1
            if future.done():  # its caller gave up: drop the reply, keep the order
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def request(self, command: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[object]:
        """Queue a command and return the future of its reply. A command sent while no other is
        unanswered goes out at once; one sent while others are waiting joins every command
        queued in that turn of the event loop in one write at the end of it (one system call
        for the decisions that reached Redis together)."""
        future: asyncio.Future[object] = loop.create_future()
        now = loop.time()
        self.pending.append((future, now))
        if self._timer is None and self._reply_timeout_s is not None:
            self._timer = loop.call_at(now + self._reply_timeout_s, self._expire, loop)
        if not self._outbox:
            if len(self.pending) == 1 and self.transport is not None and not self.lost:
                # Alone (the rule below saturation): nothing would join it, and the end of the
                # turn can be far off -- the loop's next pass first runs whatever its sockets
                # brought (other requests, PostgreSQL's answers). Measured (benchmarks/README,
                # "Session 14"): the Redis decision ~30 us faster on average at 300/s.
                self.transport.write(command)
                return future
            loop.call_soon(self._flush)
        self._outbox.append(command)
        return future

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every call past its time, oldest first; re-arm for the first one that is not
        (the timer fires about once per timeout while commands are in flight, not per call)."""
        self._timer = None
        timeout_s = self._reply_timeout_s
        if timeout_s is None or self.lost:
            return
        now = loop.time()
        for future, sent in itertools.islice(self.pending, self._expired, None):
            if sent + timeout_s > now:
                self._timer = loop.call_at(sent + timeout_s, self._expire, loop)
                break
            self._expired += 1
            if not future.done():
                future.set_exception(TimeoutError(f"Redis did not answer in {timeout_s:g} s"))
        if self.pending:
            oldest = self.pending[0][1]
            if oldest + timeout_s <= now and now - oldest > self._stale_s:
                # a peer that vanished sends no reset: nothing answered for too long, so close
                # it -- once the oldest command has had its own time (a timer armed for an
                # earlier command, answered since, may fire first: its callers then get their
                # TimeoutError at their own deadline, not a ConnectionError before it)
                self.abort("Redis did not answer in time")

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timer()
        self._fail(RedisConnectionError(f"connection to Redis lost: {type(exc).__name__}"
                                        if exc else "connection to Redis closed"))

    def _fail(self, exc: Exception) -> None:
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self, why: str) -> None:
        self.lost = True
        self._cancel_timer()
        self._fail(RedisConnectionError(why))
        if self.transport is not None:
            self.transport.abort()


class PipelinedRedis:
    """One pipelined connection to one Redis, opened on first use and again after a loss."""

    def __init__(self, host: str, port: int = _DEFAULT_PORT, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 connect_timeout_s: float = 1.0, stale_s: float = 1.0,
                 reply_timeout_s: float | None = None, name: str = "holdfast-hotpath",
                 on_connect: Callable[[], None] | None = None) -> None:
        self._host = host
        self._port = port
        self._db = db
        self._username = username
        self._password = password
        self._connect_timeout_s = connect_timeout_s
        self._stale_s = stale_s
        self._reply_timeout_s = reply_timeout_s
        self._name = name
        self._on_connect = on_connect
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str, *, connect_timeout_s: float = 1.0, stale_s: float = 1.0,
                 reply_timeout_s: float | None = None,
                 on_connect: Callable[[], None] | None = None) -> PipelinedRedis | None:
        """The connection for a ``redis://`` URL; None for what it does not speak (TLS, Unix
        sockets, URL options): the caller keeps redis-py for those."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname or parts.query:
            return None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            return None
        return cls(parts.hostname, parts.port or _DEFAULT_PORT, db=int(path or 0),
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   connect_timeout_s=connect_timeout_s, stale_s=stale_s,
                   reply_timeout_s=reply_timeout_s, on_connect=on_connect)

    @property
    def reply_timeout_s(self) -> float | None:
        return self._reply_timeout_s

    async def call(self, *parts: str | int) -> object:
        """Send one command and wait for its reply: ``TimeoutError`` after ``reply_timeout_s``
        (a connection opened first counts in it), without it bound it with the caller's timeout."""
        proto = self._proto
        if proto is None or proto.lost:
            if self._reply_timeout_s is None:
                proto = await self._connect()
            else:
                async with asyncio.timeout(self._reply_timeout_s):  # the rare path: a new one
                    return await self._send(await self._connect(), parts)
        return await self._send(proto, parts)

    async def _send(self, proto: _Protocol, parts: tuple[str | int, ...]) -> object:
        loop = asyncio.get_running_loop()
        future = proto.request(_pack_command(parts), loop)
        try:
            return await future
        except asyncio.CancelledError:
            # the caller's time is up; if Redis has not answered anything for too long, the
            # connection is dead (a peer that vanished sends no reset): close it
            if proto.pending and loop.time() - proto.pending[0][1] > self._stale_s:
                proto.abort("Redis did not answer in time")
            raise

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto  # another caller connected while this one waited
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(self._reply_timeout_s, self._stale_s),
                        self._host, self._port)
                    await self._handshake(proto)
            except OSError as exc:
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self._host}:{self._port}: "
                    f"{type(exc).__name__}") from exc
            self._proto = proto
            if self._on_connect is not None:
                self._on_connect()
            return proto

    async def _handshake(self, proto: _Protocol) -> None:
        commands: list[tuple[str | int, ...]] = []
        if self._password is not None:
            commands.append(("AUTH", self._username, self._password) if self._username
                            else ("AUTH", self._password))
        if self._db:
            commands.append(("SELECT", self._db))
        commands.append(("CLIENT", "SETNAME", self._name))
        loop = asyncio.get_running_loop()
        futures = [proto.request(pack(*command), loop) for command in commands]
        try:
            for future in futures:
                await future
        except BaseException:
            proto.abort("handshake failed")
            raise

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
