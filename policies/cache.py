"""The Redis side of a decision: the key schema, the Lua scripts, and their Python callers.

Every key of a card carries the hash tag ``{card:<id>}``, so one card's keys share a cluster slot
and each script touches a single slot. The key prefix (``HOLDFAST_REDIS_PREFIX``) keeps test runs
and environments apart on a shared Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable
from importlib import resources
from typing import Final, Literal, NamedTuple

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ClusterError, NoScriptError, RedisClusterException

from policies.model import AuthorizationRequest, Reason
from policies.resp import PipelinedRedis
from policies.store import CardSnapshot

__all__ = ["PolicyCache", "RedisClient", "Verdict", "encode_snapshot", "with_buckets"]

# A single Redis or a Redis Cluster: on a cluster, SCRIPT LOAD goes to every primary and EVALSHA
# to the primary owning its first key's slot.
RedisClient = aioredis.Redis | aioredis.RedisCluster


def _script(name: str) -> str:
    return (resources.files("policies") / name).read_text()


def with_buckets(source: str) -> str:
    """A script that reads or writes velocity buckets, with buckets.lua's functions in front
    (Redis scripts cannot load one another)."""
    return _script("buckets.lua") + source


def encode_snapshot(card: CardSnapshot) -> str:
    """The card as the decision script reads it: one JSON document, stored as a string
    (cache_put.lua). The script decodes it with Redis's cjson, in C: cheaper than turning one
    hash field per rule into Lua strings and numbers and splitting the windows' specs with
    patterns (with the script's other changes of session 10, Redis instructions per decision
    257,416 -> 201,220).
    A rule that is not set is left out (absent = no rule to every script)."""
    p = card.policy
    # the version, policy version and expiry as strings: the script compares or copies them as
    # strings, and cjson turning a number into a Lua number costs Redis ~1,800 instructions
    doc: dict[str, object] = {"v": str(card.version), "s": card.state, "cur": card.currency,
                              "pv": str(card.policy_version)}
    if card.expires:
        doc["exp"] = card.expires.replace("-", "")  # YYYYMM, compared with this month's
    if p.max_amount_minor is not None:
        doc["max"] = p.max_amount_minor
    lists = (("curs", p.currencies), ("ma", p.mcc_allow), ("mb", p.mcc_block),
             ("ca", p.country_allow), ("cb", p.country_block), ("chb", p.channels_block),
             ("ml", p.merchant_lock))
    for name, values in lists:
        if values:  # ",a,b,": a plain substring search for ",<code>," finds exact members
            doc[name] = "," + ",".join(sorted(values)) + ","
    if p.velocity:
        # [unit, buckets, max amount or -1, max count or -1, label]; a label is digits and a
        # unit letter (VelocityWindow.parse), so the script writes the counters' JSON with
        # string.format, needing no escapes
        doc["w"] = [[w.unit, w.buckets,
                     -1 if w.max_amount_minor is None else w.max_amount_minor,
                     -1 if w.max_count is None else w.max_count, w.label] for w in p.velocity]
    if p.utc_offset_minutes:
        doc["tz"] = p.utc_offset_minutes
    return orjson.dumps(doc).decode()


class Verdict(NamedTuple):
    """What the Redis check said about a request.

    kind: ``miss`` (no cached policy), ``ok`` (all rules passed, counters incremented now),
    ``decline`` (a rule refused; nothing counted), ``dup`` (this request identity was seen
    before; ``prior_*`` say what that attempt found)."""

    kind: Literal["miss", "ok", "decline", "dup"]
    reason: Reason | None = None
    card_version: int | None = None
    counters: str | None = None
    buckets: str = ""
    prior_hash: str = ""


_MISS: Final = Verdict("miss")


class PolicyCache:
    """``fast``: the hot path's decision script goes over this connection (policies/resp.py);
    everything else, and the decision too without it, over ``client`` (redis-py)."""

    def __init__(self, client: RedisClient, prefix: str, dedupe_ttl_s: int,
                 fast: PipelinedRedis | None = None) -> None:
        self._redis = client
        self._fast = fast
        self._prefix = prefix
        self._dedupe_ttl = str(dedupe_ttl_s)
        self._sources = {
            "velocity": with_buckets(_script("velocity.lua")),
            "release": with_buckets(_script("release.lua")),
            "put": _script("cache_put.lua"),
            "count": with_buckets(_script("count.lua")),
        }
        self._sha: dict[str, str] = {}

    @property
    def bounded_s(self) -> float | None:
        """The time after which ``check`` fails by itself with ``TimeoutError`` (the fast
        connection's reply timeout), or None: the caller bounds it."""
        return None if self._fast is None else self._fast.reply_timeout_s

    # -- keys: the whole schema is here -------------------------------------------------------
    def policy_key(self, card_id: str) -> str:
        """The cached card: a JSON string (``encode_snapshot``)."""
        return f"{self._prefix}{{card:{card_id}}}:pol"

    def old_policy_key(self, card_id: str) -> str:
        """Where versions before 2026-12-04 (session 10) cached the card, as a hash of one
        field per rule: deleted by every write of the new key."""
        return f"{self._prefix}{{card:{card_id}}}:p"

    def velocity_key(self, card_id: str) -> str:
        return f"{self._prefix}{{card:{card_id}}}:v"

    def dedupe_key(self, card_id: str, provider: str, provider_id: str, sequence: int) -> str:
        return f"{self._prefix}{{card:{card_id}}}:d:{provider}:{provider_id}:{sequence}"

    # -- scripts ------------------------------------------------------------------------------
    async def load_scripts(self) -> None:
        for name, source in self._sources.items():
            self._sha[name] = await self._redis.script_load(source)

    async def _run(self, name: str, keys: list[str], args: list[str],
                   fast: PipelinedRedis | None = None) -> object:
        """EVALSHA of one of the scripts, over ``fast`` when given, else redis-py."""
        try:
            sha = self._sha.get(name)
            if sha is None:
                await self.load_scripts()
                sha = self._sha[name]
            try:
                return await self._evalsha(fast, sha, keys, args)
            except NoScriptError:
                # Redis (or, on a cluster, the primary owning this slot: restarted, failed
                # over, new) lost its scripts since start-up: load them again everywhere, once
                await self.load_scripts()
                return await self._evalsha(fast, self._sha[name], keys, args)
        except RedisClusterException as exc:
            # redis-py raises this outside the RedisError tree when no cluster node can be
            # reached or a slot has no owner: translate it so callers see Redis as down and
            # stand in, as they do with a single Redis
            raise ClusterError(f"{type(exc).__name__}: {exc}") from exc

    def _evalsha(self, fast: PipelinedRedis | None, sha: str, keys: list[str],
                 args: list[str]) -> Awaitable[object]:
        if fast is not None:
            return fast.call("EVALSHA", sha, len(keys), *keys, *args)
        return self._redis.evalsha(sha, len(keys), *keys, *args)

    async def check(self, req: AuthorizationRequest, now_s: int, month: int) -> Verdict:
        """Duplicate check, rules and velocity for one request, counting it if all pass."""
        card = req.card_id
        keys = [
            self.policy_key(card),
            self.velocity_key(card),
            self.dedupe_key(card, req.provider, req.provider_id, req.sequence),
        ]
        args = [
            str(now_s), str(req.amount_minor), req.currency, req.mcc, req.country, req.channel,
            req.merchant_id, req.request_hash, self._dedupe_ttl,
            "0" if req.parent_id else "1", str(month),
        ]
        return _parse_verdict(await self._run("velocity", keys, args, self._fast))

    async def put(self, card: CardSnapshot) -> bool:
        """Cache the card unless a newer version is already cached. True if written."""
        written = await self._run(
            "put", [self.policy_key(card.id), self.old_policy_key(card.id)],
            [str(card.version), encode_snapshot(card)],
        )
        return bool(written)

    async def release(self, card_id: str, buckets: str, amount_minor: int, count: int) -> int:
        """Subtract a counted amount (and count) from the buckets that still exist."""
        if not amount_minor and not count:
            return 0
        args: list[str] = []
        for bucket in buckets.split(","):
            if bucket:
                unit, _, idx = bucket.partition(":")
                args += [unit, idx, str(amount_minor), str(count)]
        if not args:
            return 0
        changed = await self._run("release", [self.velocity_key(card_id)], args)
        if not isinstance(changed, int):
            raise ValueError(f"unexpected reply from release.lua: {changed!r}")
        return changed

    async def count_late(self, card_id: str, at_s: int, amount_minor: int, count: int,
                         now_s: int) -> bool:
        """Count a stand-in approval in the buckets of its own time. False on a cache miss
        (the caller loads the card and calls again)."""
        out = await self._run("count", [self.policy_key(card_id), self.velocity_key(card_id)],
                              [str(at_s), str(amount_minor), str(count), str(now_s)])
        return out != "miss"

    async def forget(self, card_id: str) -> None:
        await self._redis.delete(self.policy_key(card_id), self.old_policy_key(card_id))


def _parse_verdict(out: object) -> Verdict:
    if not isinstance(out, list) or not out:
        raise ValueError(f"unexpected reply from velocity.lua: {out!r}")
    kind = out[0]
    if kind == "ok":
        return Verdict("ok", None, int(out[1]), out[2], out[3])
    if kind == "decline":
        return Verdict("decline", Reason.from_label(out[1]), int(out[2]), out[3])
    if kind == "miss":
        return _MISS
    if kind == "dup":
        prior_hash, verdict, buckets, version = str(out[1]).split("|")
        reason = None if verdict == "ok" else Reason.from_label(verdict)
        return Verdict("dup", reason, int(version), None, buckets, prior_hash)
    raise ValueError(f"unexpected reply from velocity.lua: {out!r}")
