"""Cards and their versioned policies in PostgreSQL, the source of truth the Redis cache mirrors.

Every change bumps ``cards.version``; the cache accepts only newer versions. Writes here commit
first; the caller then refreshes the cache (``cache.PolicyCache.put``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import asyncpg
import orjson

from holds.db import Conn, Executor
from policies.model import Policy
from policies.states import event_for, next_state

__all__ = [
    "CardConflict",
    "CardNotFound",
    "CardSnapshot",
    "UnknownAccount",
    "load_card",
    "transition",
    "upsert_card",
]

CARD_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class CardNotFound(LookupError):
    pass


class UnknownAccount(LookupError):
    pass


class CardConflict(ValueError):
    """The change contradicts the card as stored (another account, an illegal state change)."""


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    id: str
    account_id: str
    currency: str
    state: str
    version: int
    policy_version: int
    policy: Policy
    expires: str | None
    last4: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "currency": self.currency,
            "state": self.state,
            "version": self.version,
            "policy_version": self.policy_version,
            "policy": self.policy.to_json(),
            "expires": self.expires,
            "last4": self.last4,
        }


_SELECT = """
SELECT c.id, c.account_id, a.currency, c.state, c.version, c.policy_version, p.policy::text,
       c.expires, c.last4
  FROM cards c
  JOIN accounts a ON a.id = c.account_id
  JOIN card_policies p ON p.card_id = c.id AND p.version = c.policy_version
 WHERE c.id = $1"""


def _snapshot(row: asyncpg.Record) -> CardSnapshot:
    return CardSnapshot(
        id=row["id"],
        account_id=row["account_id"],
        currency=row["currency"],
        state=row["state"],
        version=row["version"],
        policy_version=row["policy_version"],
        policy=Policy.parse(orjson.loads(row["policy"])),
        expires=row["expires"],
        last4=row["last4"],
    )


async def load_card(conn: Executor, card_id: str) -> CardSnapshot | None:
    row = await conn.fetchrow(_SELECT, card_id)
    return None if row is None else _snapshot(row)


async def upsert_card(
    conn: Conn,
    card_id: str,
    account_id: str,
    state: str,
    policy: Policy,
    expires: str | None,
    last4: str | None,
) -> tuple[CardSnapshot, bool]:
    """Create the card, or bring it to the given state and policy. Returns (card, created)."""
    policy_json = orjson.dumps(policy.to_json()).decode()
    async with conn.transaction():
        current = await conn.fetchrow(
            "SELECT account_id, state, policy_version, version, expires, last4 FROM cards"
            " WHERE id = $1 FOR UPDATE",
            card_id,
        )
        if current is None:
            kind = await conn.fetchval("SELECT kind FROM accounts WHERE id = $1", account_id)
            if kind is None:
                raise UnknownAccount(account_id)
            if kind != "customer":
                raise CardConflict(f"cards belong to customer accounts, not a {kind} account")
            if state == "terminated":
                raise CardConflict("a new card cannot start terminated")
            await conn.execute(
                "INSERT INTO cards (id, account_id, state, expires, last4) VALUES ($1,$2,$3,$4,$5)",
                card_id, account_id, state, expires, last4,
            )
            await conn.execute(
                "INSERT INTO card_policies (card_id, version, policy) VALUES ($1, 1, $2::jsonb)",
                card_id, policy_json,
            )
            created = True
        else:
            if current["account_id"] != account_id:
                raise CardConflict("a card cannot move to another account")
            if current["state"] != state:
                try:
                    event_for(current["state"], state)
                except ValueError as exc:
                    raise CardConflict(str(exc)) from None
            stored = await conn.fetchval(
                "SELECT policy = $2::jsonb FROM card_policies WHERE card_id = $1 AND version = $3",
                card_id, policy_json, current["policy_version"],
            )
            policy_version = current["policy_version"]
            if not stored:
                policy_version += 1
                await conn.execute(
                    "INSERT INTO card_policies (card_id, version, policy) VALUES ($1,$2,$3::jsonb)",
                    card_id, policy_version, policy_json,
                )
            changed = (
                not stored
                or current["state"] != state
                or current["expires"] != expires
                or current["last4"] != last4
            )
            if changed:
                await conn.execute(
                    "UPDATE cards SET state = $2, policy_version = $3, version = version + 1,"
                    " expires = $4, last4 = $5, updated_at = now() WHERE id = $1",
                    card_id, state, policy_version, expires, last4,
                )
            created = False
        snapshot = await load_card(conn, card_id)
    assert snapshot is not None  # written in this transaction
    return snapshot, created


async def transition(conn: Conn, card_id: str, event: str) -> CardSnapshot:
    """Apply a state-machine event (freeze, unfreeze, terminate) and bump the version."""
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM cards WHERE id = $1 FOR UPDATE", card_id)
        if state is None:
            raise CardNotFound(card_id)
        try:
            target = next_state(state, event)
        except ValueError as exc:
            raise CardConflict(str(exc)) from None
        if target != state:
            await conn.execute(
                "UPDATE cards SET state = $2, version = version + 1, updated_at = now()"
                " WHERE id = $1",
                card_id, target,
            )
        snapshot = await load_card(conn, card_id)
    assert snapshot is not None
    return snapshot
