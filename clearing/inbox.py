"""The event inbox: store a verified event raw (scrubbed) and immutable, exactly once per
provider event id. Storing is the only work an event endpoint does on the request path; the
consumers apply events later."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from holds.db import Executor
from policies.pan import scrub

__all__ = ["StoreResult", "store_event"]

_INSERT = """
INSERT INTO inbox_events (provider, provider_event_id, type, payload, payload_hash, canonical)
VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb)
ON CONFLICT (provider, provider_event_id) DO NOTHING
RETURNING id"""


@dataclass(frozen=True, slots=True)
class StoreResult:
    # accepted: stored now; duplicate: the same event was stored before; conflict: the same
    # provider event id arrived before with a different payload (kept as first received)
    status: Literal["accepted", "duplicate", "conflict"]
    inbox_id: int | None


async def store_event(
    db: Executor, provider: str, provider_event_id: str, event_type: str, payload: Any,
    canonical: Mapping[str, Any] | None = None,
) -> StoreResult:
    """Store the event. ``canonical`` is the adapter's mapping of it to a lifecycle event
    (``clearing.events.LifecycleEvent.to_json()``); None for informational events."""
    clean = orjson.dumps(scrub(payload), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(clean).hexdigest()
    mapped = None if canonical is None else orjson.dumps(scrub(canonical)).decode()
    inbox_id = await db.fetchval(_INSERT, provider, provider_event_id, event_type,
                                 clean.decode(), digest, mapped)
    if inbox_id is not None:
        return StoreResult("accepted", inbox_id)
    row = await db.fetchrow(
        "SELECT id, payload_hash FROM inbox_events WHERE provider = $1 AND provider_event_id = $2",
        provider, provider_event_id,
    )
    if row is None:  # rows are never deleted
        raise RuntimeError(f"inbox event {provider}/{provider_event_id} vanished")
    status: Literal["duplicate", "conflict"] = (
        "duplicate" if row["payload_hash"] == digest else "conflict"
    )
    return StoreResult(status, row["id"])
