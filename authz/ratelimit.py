"""Rate limits on the management API: per bearer token, a sliding window counted in Redis, so every
server process (and every host) shares one limit.

- **What is limited**: requests that carry a known ``Authorization: Bearer`` token, on every route
  except the card processors' (``/v1/authorize``, ``/v1/events``, ``/providers/…``), which never
  reach Redis from here: the hot path pays one set lookup and one prefix check.
- **How**: ``HOLDFAST_ADMIN_RATE_LIMIT`` requests per minute per token (0: off). One ``EVAL`` reads
  the counters of this minute and the one before, weighs the one before by how much of it is
  still inside the sliding minute, and counts the request only if the total stays under the
  limit (a refused request is not counted, so a client that backs off recovers). Keys are
  ``<prefix>{admin-rl:<token id>}:<minute>``, one hash tag per token (Redis Cluster safe), and
  expire after two minutes.
- **Refusal**: ``429`` ``{"error": {"code": "rate_limited", ...}}`` with ``Retry-After`` (whole
  seconds until a request would be let through again).
- **Redis unreachable or slower than ``HOLDFAST_REDIS_TIMEOUT_MS``: fail open.** Every request
  limited here has already passed a hashed bearer token, and the calls it guards include the
  ones an incident needs most — a customer freezing a stolen card, support terminating one — which
  must not stop working because the cache is down. The limit is a brake on a runaway or abused
  client, not an authentication step. Failures are counted
  (``holdfast_admin_rate_limit_errors_total``) and logged at most once a minute.
- Unknown tokens are not counted: they get their 401 from the route at the cost of one SHA-256,
  and tokens are at least 12 characters (``HOLDFAST_ADMIN_TOKENS``), so guessing is hopeless.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisClusterException, RedisError

from authz.app import CLOCK, METRICS, REDIS, SETTINGS
from authz.http import json_response
from authz.settings import hash_token
from policies.cache import RedisClient

__all__ = [
    "CARD_PROCESSOR_PATHS",
    "RATE_LIMIT",
    "WINDOW_S",
    "RateLimit",
    "Verdict",
    "retry_after_s",
    "setup_rate_limit",
]

log = logging.getLogger("holdfast.ratelimit")

WINDOW_S: Final = 60
CARD_PROCESSOR_PATHS: Final = frozenset({"/v1/authorize", "/v1/events"})
_PROVIDER_PREFIX: Final = "/providers/"
_ERROR_LOG_INTERVAL_S: Final = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# KEYS[1] this window's counter, KEYS[2] the previous window's;
# ARGV[1] limit, ARGV[2] window (ms), ARGV[3] time elapsed in this window (ms)
_SCRIPT: Final = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local elapsed = tonumber(ARGV[3])
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if previous * (window - elapsed) + current * window >= limit * window then
  return {0, previous, current}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], 2 * window)
end
return {1, previous, current}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0


def retry_after_s(limit: int, window_ms: int, elapsed_ms: int, previous: int, current: int
                  ) -> int:
    """Whole seconds until a request is let through again: until ``previous * (window - e) /
    window + current < limit``, ``e`` being the time into a window. Integer arithmetic, exactly
    as the script compares. At least 1."""
    ahead_ms = 0
    if current >= limit:
        # this window alone is full: in the next one its count is the "previous" one, which
        # must slide out far enough to leave room
        previous, current, ahead_ms, elapsed_ms = current, 0, window_ms - elapsed_ms, 0
    if previous <= 0:
        return 1
    # the first millisecond e with previous * (window - e) < (limit - current) * window
    first_ms = (window_ms * previous - (limit - current) * window_ms) // previous + 1
    wait_ms = ahead_ms + max(0, first_ms - elapsed_ms)
    return max(1, -(-wait_ms // 1000))


class RateLimit:
    """The management API's limit: one sliding window per token, counted in Redis."""

    def __init__(self, prefix: str, limit_per_window: int, registry: CollectorRegistry,
                 window_s: int = WINDOW_S) -> None:
        self._prefix = prefix
        self._limit = limit_per_window
        self._window_s = window_s
        self._last_error_log = -math.inf
        self.refused = Counter(
            "holdfast_admin_rate_limited_total",
            "Management API requests refused with 429 by the per-token rate limit",
            registry=registry)
        self.errors = Counter(
            "holdfast_admin_rate_limit_errors_total",
            "Rate-limit checks that could not reach Redis (the request was let through)",
            registry=registry)

    def keys(self, token_id: str, window: int) -> list[str]:
        tag = f"{self._prefix}{{admin-rl:{token_id[:32]}}}"
        return [f"{tag}:{window}", f"{tag}:{window - 1}"]

    async def check(self, redis: RedisClient, token_id: str, now_s: float, timeout_s: float
                    ) -> Verdict:
        window_ms = self._window_s * 1000
        window, elapsed_ms = divmod(int(now_s * 1000), window_ms)
        try:
            async with asyncio.timeout(timeout_s):
                out = await redis.eval(
                    _SCRIPT, 2, *self.keys(token_id, window), str(self._limit), str(window_ms),
                    str(elapsed_ms))
            allowed, previous, current = (int(x) for x in out)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self.errors.inc()
            self._log_failure(now_s, exc)
            return Verdict(True)
        if allowed:
            return Verdict(True)
        self.refused.inc()
        return Verdict(False, retry_after_s(self._limit, window_ms, elapsed_ms, previous,
                                            current))

    def _log_failure(self, now_s: float, exc: BaseException) -> None:
        # once a minute at most: an outage must not turn into a log flood
        if now_s - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
            self._last_error_log = now_s
            log.warning("admin rate limit not enforced, Redis unavailable: %s",
                        type(exc).__name__)


RATE_LIMIT: Final = web.AppKey("admin_rate_limit", RateLimit)


def _token_id(request: web.Request) -> str | None:
    """The hashed bearer token when it is one the server knows, else None."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    token_id = hash_token(token.strip())
    return token_id if token_id in request.app[SETTINGS].admin_tokens else None


@web.middleware
async def _rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in CARD_PROCESSOR_PATHS or path.startswith(_PROVIDER_PREFIX):
        return await handler(request)
    token_id = _token_id(request)
    if token_id is None:
        return await handler(request)
    app = request.app
    verdict = await app[RATE_LIMIT].check(
        app[REDIS], token_id, app[CLOCK](), app[SETTINGS].redis_timeout_ms / 1000)
    if verdict.allowed:
        return await handler(request)
    app[METRICS].http_errors.labels("429", "rate_limited").inc()
    return json_response(
        {"error": {"code": "rate_limited",
                   "message": f"too many requests for this token; retry in "
                              f"{verdict.retry_after_s} s"}},
        status=429, headers={"Retry-After": str(verdict.retry_after_s)})


def setup_rate_limit(app: web.Application) -> None:
    """Install the limit (after the error middleware, so a failure in it is still a JSON 500)
    unless ``HOLDFAST_ADMIN_RATE_LIMIT`` is 0."""
    settings = app[SETTINGS]
    if settings.admin_rate_limit_per_min <= 0:
        return
    app[RATE_LIMIT] = RateLimit(settings.redis_prefix, settings.admin_rate_limit_per_min,
                                app[METRICS].registry)
    app.middlewares.append(_rate_limit_middleware)
