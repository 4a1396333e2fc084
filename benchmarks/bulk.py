"""Bulk data for the large benchmarks (``benchmarks.sweep``, ``benchmarks.scale``): many cards, and
a history of authorisations with their decisions and holds, loaded with ``COPY`` in seconds or
minutes rather than the hours the hot path would need to write it.

Consistency is the point: after a load ``holdfast verify`` must hold, so every row is what the
ledger functions would have written.

- **Cards** (:func:`load_cards`): accounts, cards and their policy (the benchmark universe of
  ``benchmarks.traffic.profile``). With ``credit_lines`` the accounts are funded as credit lines
  (``overdraft_limit`` = the card's funds, ``posted`` 0) instead of by deposits, so a million
  accounts need no million journal transactions; ``available = posted - held + overdraft`` is
  the same figure to the hot path. Without it, funds go through ``hf_deposit`` as in
  ``benchmarks.dataset.seed`` (fine up to ~100,000 accounts).
- **History** (:func:`load_history`): ``authorizations`` (each with the initial request that
  created it on its row, migration 0017) + ``followup_requests`` (an incremental for a share),
  the hold's columns filled for the
  approved ones (the ``holds`` view), in
  the shares of a :class:`Mix`: declined (no hold), open and already past its window (what the
  expiry sweep releases), open within its window, expired (released by an earlier sweep),
  reversed (the rest: hold closed, all of it released). ``accounts.held`` is then set to the sum
  of each account's open holds. Reversed authorisations stand in for the cleared ones of a real
  history (which would also carry journal postings the hot path never reads), so the ledger
  stays provably balanced without loading a journal.

How: one transaction per load that truncates the (empty) tables and then ``COPY ... FREEZE``s
them from generated text, with ``session_replication_role = replica`` so the per-row
foreign-key triggers do not run (the rows are built consistent; :func:`check_references` proves
the references afterwards with anti-joins, and ``holdfast verify`` the ledger invariants).
``FREEZE`` writes the rows already frozen and all-visible, so no later VACUUM or first reader
has to rewrite every page to set hint bits. Needs a superuser (``session_replication_role``)
and a database of the benchmark's own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

import asyncpg
import orjson
import redis.asyncio as aioredis

from authz.hotpath import request_hash
from benchmarks.traffic import POOR_FUNDS_MINOR, CardProfile, profile
from policies.cache import PolicyCache, encode_snapshot
from policies.model import Policy
from policies.store import CardSnapshot

__all__ = [
    "Card",
    "Loaded",
    "Mix",
    "cards_of",
    "check_references",
    "load_cards",
    "load_history",
    "set_held",
    "warm_policies",
]

_CHUNK: Final = 10_000  # rows per COPY write
_EXPIRES: Final = "2030-12"
_SHORT_WINDOW_MIN: Final = 7 * 1440  # default hold window (HOLDFAST_HOLD_WINDOW_S)
_LONG_WINDOW_MIN: Final = 30 * 1440  # lodging and car rental
_HISTORY_DAYS: Final = 60  # authorisations are spread over the last 60 days
# (mcc, merchant name, channel, median ticket in minor units, long hold window)
_MERCHANTS: Final = (
    ("5411", "Grocer", "contactless", 35_00, False),
    ("5812", "Bistro", "pos", 22_00, False),
    ("5814", "Coffee Kiosk", "contactless", 8_00, False),
    ("5541", "Fuel Stop", "pos", 55_00, False),
    ("4111", "Metro", "contactless", 4_50, False),
    ("5999", "Online Shop", "ecommerce", 30_00, False),
    ("5311", "Department Store", "pos", 60_00, False),
    ("7011", "Hotel", "ecommerce", 180_00, True),
)
_DECLINES: Final = ("insufficient_funds", "not_permitted", "amount_limit_exceeded",
                    "do_not_honor")
_HOME: Final = {"GBP": "GB", "EUR": "FR", "USD": "US"}

_AUTH_COLUMNS: Final = ("id", "provider", "provider_id", "card_id", "account_id", "currency",
                        "state", "requested_amount", "approved_amount", "merchant_id",
                        "merchant_name", "mcc", "country", "channel", "created_at",
                        "updated_at",
                        # the hold, on its authorisation's row (migration 0011)
                        "hold_state", "hold_authorized", "hold_posted", "hold_over_posted",
                        "hold_released", "hold_remaining", "hold_expires_at", "hold_created_at",
                        "hold_updated_at", "hold_forced",
                        # the request that created it, on its row too (migration 0017)
                        "request_sequence", "request_amount", "request_partial",
                        "request_approved", "request_reason", "request_stand_in",
                        "request_policy_version", "request_counters", "request_hash",
                        "request_counted")
# the other requests (an incremental here)
_REQUEST_COLUMNS: Final = ("provider", "provider_id", "sequence", "authorization_id", "kind",
                           "amount", "currency", "partial_allowed", "decision",
                           "approved_amount", "reason", "stand_in", "policy_version",
                           "counters", "request_hash", "counted", "decided_at")
@dataclass(frozen=True, slots=True)
class Card:
    card_id: str
    account_id: str
    currency: str
    funds_minor: int
    poor: bool  # a thin account: its history is declines only


def cards_of(count: int) -> list[Card]:
    """The first ``count`` cards of the benchmark universe (``traffic.profile``)."""
    return [_card(profile(i)) for i in range(count)]


def _card(p: CardProfile) -> Card:
    return Card(p.card_id, p.account_id, p.currency, p.funds_minor,
                p.funds_minor <= POOR_FUNDS_MINOR)


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of the authorisations loaded; whatever is left over is reversed."""

    declined: float = 0.0
    open_due: float = 0.0  # approved, hold still open, past its window: the sweep's work
    open_live: float = 0.0  # approved, hold open within its window
    expired: float = 0.0  # approved, hold released by an earlier sweep
    incremental: float = 0.0  # of the approved ones: raised once by an incremental


@dataclass(slots=True)
class Loaded:
    authorizations: int = 0
    requests: int = 0
    holds: int = 0
    open_due: int = 0
    open_live: int = 0
    declined: int = 0
    amount_open_minor: int = 0
    held: dict[str, int] = field(default_factory=dict)  # account -> open holds' remaining
    seconds: float = 0.0


# -- cards -------------------------------------------------------------------------------------

def _policy_text(p: CardProfile) -> str:
    return orjson.dumps(Policy.parse(p.policy).to_json()).decode()


async def load_cards(url: str, count: int, *, credit_lines: bool) -> float:
    """Accounts, cards and policies for cards ``0 .. count-1``; seconds taken."""
    started = time.perf_counter()
    profiles = [profile(i) for i in range(count)]
    policy_text: dict[tuple[str, bool], str] = {}  # the policy depends only on these
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")

            def accounts(rows: list[CardProfile]) -> Iterator[str]:
                for p in rows:
                    limit = p.funds_minor if credit_lines else 0
                    yield f"{p.account_id}\tcustomer\t{p.currency}\t{limit}\n"

            def cards(rows: list[CardProfile]) -> Iterator[str]:
                for p in rows:
                    yield (f"{p.card_id}\t{p.account_id}\t{p.state}\t{_EXPIRES}\t"
                           f"{p.index % 10_000:04d}\n")

            def policies(rows: list[CardProfile]) -> Iterator[str]:
                for p in rows:
                    key = (p.currency, "country_allow" in p.policy)
                    text = policy_text.get(key)
                    if text is None:
                        text = policy_text[key] = _copy_escape(_policy_text(p))
                    yield f"{p.card_id}\t1\t{text}\n"

            await _copy(conn, "accounts", ("id", "kind", "currency", "overdraft_limit"),
                        _chunks(profiles, accounts), freeze=False)
            await _copy(conn, "cards", ("id", "account_id", "state", "expires", "last4"),
                        _chunks(profiles, cards), freeze=False)
            await _copy(conn, "card_policies", ("card_id", "version", "policy"),
                        _chunks(profiles, policies), freeze=False)
            for currency in sorted({p.currency for p in profiles}):
                await conn.execute("SELECT hf_settlement_account($1)", currency)
        if not credit_lines:
            await conn.executemany(
                "SELECT hf_deposit($1, $2, $3, $4, $5)",
                [(f"deposit:{p.account_id}:bench-seed", p.account_id, p.funds_minor,
                  "benchmark seed", request_hash(p.funds_minor, "benchmark seed"))
                 for p in profiles],
            )
    finally:
        await conn.close()
    return time.perf_counter() - started


def _copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _chunks(rows: list[Any], render: Callable[[list[Any]], Iterator[str]]
            ) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for start in range(0, len(rows), _CHUNK):
            yield "".join(render(rows[start : start + _CHUNK])).encode()
            await asyncio.sleep(0)
    return gen()


async def _copy(conn: asyncpg.Connection[Any], table: str, columns: tuple[str, ...],
                source: AsyncIterator[bytes], *, freeze: bool) -> None:
    await conn.copy_to_table(table, source=source, columns=list(columns), format="text",
                             freeze=freeze)


# -- history -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Row:
    """One generated authorisation: everything its three tables need."""

    n: int
    card: Card
    outcome: str  # declined | open_due | open_live | expired | reversed
    amount: int
    increment: int  # 0: no incremental request
    merchant: int  # index into _MERCHANTS
    merchant_n: int
    created_min: int  # minutes from the time grid's origin
    expires_min: int
    reason: str


class _History:
    """A deterministic history: the same rows on every pass, so each table is rendered in a
    pass of its own and streamed to its COPY."""

    def __init__(self, cards: list[Card], count: int, mix: Mix, prefix: str, seed: int,
                 now: dt.datetime, arrival_order: bool = False) -> None:
        self.cards = cards
        self.arrival_order = arrival_order
        self._arrived: list[_Row] | None = None
        self.count = count
        self.mix = mix
        self.prefix = prefix
        self.seed = seed
        now = now.replace(second=0, microsecond=0)
        # the time grid: one string per minute, from _HISTORY_DAYS + the long window ago to
        # a long window ahead (open holds within their window expire in the future)
        self.origin = now - dt.timedelta(days=_HISTORY_DAYS + 31)
        self.now_min = (_HISTORY_DAYS + 31) * 1440
        span = self.now_min + _LONG_WINDOW_MIN + 1
        self.ts = [(self.origin + dt.timedelta(minutes=k)).strftime("%Y-%m-%d %H:%M:00+00")
                   for k in range(span)]
        # spread each card's authorisations over the history: a stride coprime with the
        # number of cards visits every card once per len(cards) authorisations
        stride = 7_919
        while _gcd(stride, len(cards)) != 1:
            stride += 2
        self.stride = stride

    def rows(self) -> Iterator[_Row]:
        """The rows in generation order, or with ``arrival_order`` in the order the hot path
        would have inserted them (by creation time: held in memory, sorted once)."""
        if not self.arrival_order:
            return self._generate()
        if self._arrived is None:
            self._arrived = sorted(self._generate(), key=lambda r: (r.created_min, r.n))
        return iter(self._arrived)

    def _generate(self) -> Iterator[_Row]:
        rng = random.Random(self.seed)
        mix = self.mix
        cut_declined = mix.declined
        cut_due = cut_declined + mix.open_due
        cut_live = cut_due + mix.open_live
        cut_expired = cut_live + mix.expired
        n_cards = len(self.cards)
        history_min = _HISTORY_DAYS * 1440
        for n in range(self.count):
            roll = rng.random()
            c = (n * self.stride) % n_cards
            card = self.cards[c]
            merchant = rng.randrange(len(_MERCHANTS))
            _, _, _, median, long_window = _MERCHANTS[merchant]
            amount = max(50, min(int(rng.lognormvariate(0.0, 0.8) * median), 1_000_00))
            window = _LONG_WINDOW_MIN if long_window else _SHORT_WINDOW_MIN
            if roll < cut_declined or (card.poor and roll >= cut_due):
                outcome = "declined"
            elif roll < cut_due:
                outcome = "open_due"
                if card.poor:  # a thin account cannot carry old holds: its neighbour does
                    card = self.cards[(c + 1) % n_cards]
            elif roll < cut_live:
                outcome = "open_live"
            elif roll < cut_expired:
                outcome = "expired"
            else:
                outcome = "reversed"
            if outcome in ("open_due", "expired"):
                # past its window: expired between an hour and 30 days ago
                expires = self.now_min - 60 - rng.randrange(30 * 1440)
                created = expires - window
            elif outcome == "open_live":
                expires = self.now_min + 1 + rng.randrange(window)
                created = expires - window
            else:
                created = self.now_min - 60 - rng.randrange(history_min)
                expires = created + window
            increment = 0
            if outcome != "declined" and mix.incremental and rng.random() < mix.incremental:
                increment = max(100, amount // 5)
            reason = _DECLINES[n % len(_DECLINES)] if outcome == "declined" else "approved"
            yield _Row(n, card, outcome, amount, increment, merchant,
                       rng.randrange(400), created, expires, reason)

    def auth_id(self, n: int) -> str:
        return f"{self.prefix}{n:09d}"


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


_STATE: Final = {"declined": "declined", "open_due": "pending", "open_live": "pending",
                 "expired": "expired", "reversed": "reversed"}
_HOLD_STATE: Final = {"open_due": "open", "open_live": "open", "expired": "expired",
                      "reversed": "closed"}


def _counters(r: _Row) -> str:
    return f'[["1h",{r.n % 5_000},{r.n % 7}],["1d",{r.n % 50_000},{r.n % 23}]]'


def _auth_lines(h: _History, rows: Iterator[_Row], loaded: Loaded) -> Iterator[str]:
    ts = h.ts
    for r in rows:
        loaded.requests += 1
        i = h.auth_id(r.n)
        card = r.card
        mcc, name, channel, _, _ = _MERCHANTS[r.merchant]
        requested = r.amount + r.increment
        approved = 0 if r.outcome == "declined" else requested
        updated = r.created_min + (60 if r.outcome != "declined" else 0)
        yield (f"{i}\tnative\t{i}\t{card.card_id}\t{card.account_id}\t{card.currency}\t"
               f"{_STATE[r.outcome]}\t{requested}\t{approved}\tm-{mcc}-{r.merchant_n}\t"
               f"{name} {r.merchant_n}\t{mcc}\t{_HOME[card.currency]}\t{channel}\t"
               f"{ts[r.created_min]}\t{ts[min(updated, len(ts) - 1)]}\t"
               f"{_hold_fields(h, r, loaded)}\t"
               f"0\t{r.amount}\tf\t{r.amount if approved else 0}\t{r.reason}\tf\t1\t"
               f"{_counters(r)}\t{(r.n * 0x9E3779B97F4A7C15) & ((1 << 128) - 1):032x}\tt\n")


def _request_lines(h: _History, rows: Iterator[_Row], loaded: Loaded) -> Iterator[str]:
    ts = h.ts
    for r in rows:
        if not r.increment:
            continue
        loaded.requests += 1
        i = h.auth_id(r.n)
        yield (f"native\t{i}.inc\t0\t{i}\tincremental\t{r.increment}\t{r.card.currency}\tf\t"
               f"approve\t{r.increment}\tapproved\tf\t1\t{_counters(r)}\t"
               f"{(r.n * 0xC2B2AE3D27D4EB4F) & ((1 << 128) - 1):032x}\tt\t"
               f"{ts[r.created_min + 30]}\n")


_NO_HOLD: Final = "\t".join(["\\N"] * 10)


def _hold_fields(h: _History, r: _Row, loaded: Loaded) -> str:
    """The hold's columns of an authorisation row (NULL for a decline); counts what it loads."""
    ts = h.ts
    held = loaded.held
    if r.outcome == "declined":
        loaded.declined += 1
        return _NO_HOLD
    card = r.card
    authorized = r.amount + r.increment
    if r.outcome in ("open_due", "open_live"):
        released, remaining = 0, authorized
        held[card.account_id] = held.get(card.account_id, 0) + authorized
        loaded.amount_open_minor += authorized
        if r.outcome == "open_due":
            loaded.open_due += 1
        else:
            loaded.open_live += 1
        updated = r.created_min + (30 if r.increment else 0)
    else:
        released, remaining = authorized, 0
        updated = r.expires_min if r.outcome == "expired" else r.created_min + 90
    loaded.holds += 1
    return (f"{_HOLD_STATE[r.outcome]}\t{authorized}\t0\t0\t{released}\t{remaining}\t"
            f"{ts[r.expires_min]}\t{ts[r.created_min]}\t"
            f"{ts[min(updated, len(ts) - 1)]}\tf")


def _stream(lines: Iterator[str]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) >= _CHUNK:
                yield "".join(batch).encode()
                batch.clear()
                await asyncio.sleep(0)
        if batch:
            yield "".join(batch).encode()
    return gen()


async def load_history(url: str, cards: list[Card], count: int, mix: Mix, *, prefix: str,
                       seed: int = 7, now: dt.datetime | None = None,
                       progress: Callable[[str], None] | None = None,
                       arrival_order: bool = False) -> Loaded:
    """``count`` authorisations over ``cards`` in the shares of ``mix``, in one transaction;
    then ``accounts.held`` set from the open holds. Both tables must be empty.

    The rows are generated with random times; ``arrival_order`` writes them in order of
    creation, as the hot path would have inserted them, so the heap is laid out as a live
    table's is (holds of one expiry window side by side). Without it, neighbouring rows are
    from any time in the history: the expiry sweep then meets its due holds scattered over the
    whole table (the worst case for the buffer cache; benchmarks/README.md, "Session 5")."""
    started = time.perf_counter()
    history = _History(cards, count, mix, prefix, seed, now or dt.datetime.now(dt.UTC),
                       arrival_order)
    loaded = Loaded(authorizations=count)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            # FREEZE needs the tables truncated (or created) in this transaction
            await conn.execute("TRUNCATE authorizations, followup_requests")
            for table, columns, lines in (
                ("authorizations", _AUTH_COLUMNS,
                 _auth_lines(history, history.rows(), loaded)),
                ("followup_requests", _REQUEST_COLUMNS,
                 _request_lines(history, history.rows(), loaded)),
            ):
                t0 = time.perf_counter()
                await _copy(conn, table, columns, _stream(lines), freeze=True)
                if progress:
                    progress(f"  {table}: {time.perf_counter() - t0:.1f} s")
        await set_held(conn, loaded.held)
        # COPY bypassed what keeps new holds at or above the sweep's low-water mark (migration
        # 0012): lower the mark to the soonest open hold
        await conn.execute(
            "UPDATE hold_expiry_mark SET swept_to = least(swept_to, (SELECT min(hold_expires_at)"
            " FROM authorizations WHERE hold_state = 'open'))")
    finally:
        await conn.close()
    loaded.seconds = time.perf_counter() - started
    return loaded


async def set_held(conn: asyncpg.Connection[Any], held: dict[str, int]) -> None:
    """``accounts.held`` = the open holds loaded on each account (they were all 0 before)."""
    async with conn.transaction():
        await conn.execute("CREATE TEMPORARY TABLE bench_held (id text, held bigint)"
                           " ON COMMIT DROP")
        await conn.copy_records_to_table("bench_held", records=list(held.items()))
        await conn.execute("UPDATE accounts a SET held = a.held + b.held FROM bench_held b"
                           " WHERE a.id = b.id")


async def check_references(url: str) -> list[str]:
    """The foreign keys the load did not check row by row, proved with anti-joins: a list of
    what is broken (empty when every reference resolves)."""
    checks = (
        ("authorizations.account_id -> accounts",
         "SELECT count(*) FROM authorizations x WHERE x.account_id IS NOT NULL AND NOT EXISTS"
         " (SELECT 1 FROM accounts a WHERE a.id = x.account_id)"),
        ("followup_requests.authorization_id -> authorizations",
         "SELECT count(*) FROM followup_requests x WHERE NOT EXISTS"
         " (SELECT 1 FROM authorizations a WHERE a.id = x.authorization_id)"),
        ("holds (account_id, currency) -> accounts",
         "SELECT count(*) FROM holds x WHERE NOT EXISTS (SELECT 1 FROM accounts a"
         " WHERE a.id = x.account_id AND a.currency = x.currency)"),
        ("cards.account_id -> accounts",
         "SELECT count(*) FROM cards x WHERE NOT EXISTS"
         " (SELECT 1 FROM accounts a WHERE a.id = x.account_id)"),
        ("card_policies.card_id -> cards",
         "SELECT count(*) FROM card_policies x WHERE NOT EXISTS"
         " (SELECT 1 FROM cards c WHERE c.id = x.card_id)"),
    )
    conn = await asyncpg.connect(url)
    broken = []
    try:
        await conn.execute("SET work_mem = '256MB'")
        for name, query in checks:
            missing = await conn.fetchval(query)
            if missing:
                broken.append(f"{name}: {missing:,} rows reference nothing")
    finally:
        await conn.close()
    return broken


# -- the policy cache --------------------------------------------------------------------------

async def warm_policies(redis_url: str, prefix: str, count: int, dedupe_ttl_s: int = 3600,
                        pipeline: int = 2_000) -> float:
    """Cache the policies of cards ``0 .. count-1`` exactly as ``PolicyCache.put`` does (the
    same script, keys and fields), pipelined so a million cards take seconds; seconds taken."""
    started = time.perf_counter()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    cache = PolicyCache(client, prefix, dedupe_ttl_s)
    try:
        sha = await client.script_load(
            resources.files("policies").joinpath("cache_put.lua").read_text())
        encoded: dict[tuple[str, str, bool], str] = {}
        for start in range(0, count, pipeline):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(count, start + pipeline)):
                p = profile(i)
                shape = (p.currency, p.state, "country_allow" in p.policy)
                doc = encoded.get(shape)
                if doc is None:
                    doc = encoded[shape] = encode_snapshot(CardSnapshot(
                        id=p.card_id, account_id=p.account_id, currency=p.currency,
                        state=p.state, version=1, policy_version=1,
                        policy=Policy.parse(p.policy), expires=_EXPIRES, last4="0000"))
                pipe.evalsha(sha, 2, cache.policy_key(p.card_id),
                             cache.old_policy_key(p.card_id), "1", doc)
            await pipe.execute()
    finally:
        await client.aclose()
    return time.perf_counter() - started
