"""Apply one canonical lifecycle event to the ledger, inside the caller's transaction: the
ledger operation (one PL/pgSQL call), then the authorisation's state by the lifecycle table.
An event that references nothing known, or that the table does not allow, is quarantined."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

import asyncpg

from clearing.disputes import apply_dispute_event
from clearing.events import LifecycleEvent
from clearing.lifecycle import next_state
from holds.db import Conn
from holds.model import hold_window_s

__all__ = ["HoldWindows", "Outcome", "apply_event"]

_QUARANTINE_REASONS: Final = {
    "unknown": "unknown_authorization",
    "currency_mismatch": "currency_mismatch",
}


@dataclass(frozen=True, slots=True)
class HoldWindows:
    default_s: int = 7 * 86400
    long_s: int = 30 * 86400


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Literal["applied", "quarantined"]
    reason: str | None = None


_APPLIED: Final = Outcome("applied")


async def apply_event(conn: Conn, provider: str, ev: LifecycleEvent, now: dt.datetime,
                      windows: HoldWindows) -> Outcome:
    op_id = f"{provider}:{ev.id}"
    if ev.type in ("chargeback", "chargeback.won", "chargeback.reversal"):
        if ev.authorization_id is None:
            return Outcome("quarantined", "unknown_authorization")
        done = await apply_dispute_event(conn, op_id, ev.type, ev.authorization_id,
                                         ev.amount_minor, ev.currency, now)
        return Outcome("quarantined", "unknown_authorization") if done == "unknown" else _APPLIED

    row = await _ledger_call(conn, op_id, provider, ev, now, windows)
    status = row["status"]
    if status in _QUARANTINE_REASONS:
        return Outcome("quarantined", _QUARANTINE_REASONS[status])
    if status == "replay" or ev.authorization_id is None:
        return _APPLIED
    await _advance(conn, ev.authorization_id, _lifecycle_event(ev, row), now)
    return _APPLIED


async def _ledger_call(conn: Conn, op_id: str, provider: str, ev: LifecycleEvent,
                       now: dt.datetime, windows: HoldWindows) -> asyncpg.Record:
    args: tuple[object, ...]
    if ev.type == "authorization.reversal":
        query, args = "hf_release($1, $2, $3, $4, $5)", (
            op_id, ev.authorization_id, ev.amount_minor, ev.currency, now)
    elif ev.type == "authorization.expiry":
        query, args = "hf_release($1, $2, NULL, $3, $4)", (
            op_id, ev.authorization_id, ev.currency, now)
    elif ev.type == "authorization.clearing":
        query, args = "hf_post($1, $2, $3, $4, $5, $6, $7)", (
            op_id, ev.authorization_id, ev.card_id, ev.amount_minor, ev.currency, ev.final, now)
    elif ev.type == "refund":
        query, args = "hf_refund($1, $2, $3, $4, $5, $6)", (
            op_id, ev.authorization_id, ev.card_id, ev.amount_minor, ev.currency, now)
    elif ev.type == "authorization.advice":
        # the merchant category is not part of an advice: the default window applies
        expires = now + dt.timedelta(seconds=hold_window_s("", windows.default_s,
                                                           windows.long_s))
        query, args = "hf_advice($1, $2, $3, $4, $5, $6, $7, $8)", (
            op_id, provider, ev.authorization_id, ev.card_id, ev.amount_minor, ev.currency,
            now, expires)
    else:
        raise ValueError(f"unknown lifecycle event type {ev.type!r}")
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT (r).* FROM (SELECT {query} AS r) s", *args)
    if row is None:
        raise RuntimeError(f"{query} returned no row")
    return row


def _lifecycle_event(ev: LifecycleEvent, row: asyncpg.Record) -> str:
    """What the operation turned out to be, in the lifecycle table's words."""
    if ev.type == "authorization.reversal":
        return "reversal_full" if row["remaining"] == 0 else "reversal_partial"
    if ev.type == "authorization.expiry":
        return "expiry"
    if ev.type == "authorization.clearing":
        return "clearing_final" if ev.final else "clearing"
    if ev.type == "authorization.advice":
        return "advice"
    return "refund"


async def _advance(conn: Conn, authorization_id: str, event: str, now: dt.datetime) -> None:
    # the state as the lifecycle sees it: an authorisation whose hold the sweep expired reads
    # 'expired' (migration 0009)
    state = await conn.fetchval(
        "SELECT hf_authorization_state(a.state, h.state) FROM authorizations a"
        " LEFT JOIN holds h ON h.id = a.id WHERE a.id = $1 FOR NO KEY UPDATE OF a",
        authorization_id)
    if state is None:  # a refund linked to an authorisation we never saw
        return
    target = next_state(state, event)  # raises IllegalTransition: the caller quarantines
    if target != state:
        await conn.execute(
            "UPDATE authorizations SET state = $2, updated_at = $3 WHERE id = $1",
            authorization_id, target, now)
