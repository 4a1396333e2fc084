"""The card state machine as a table: (state, event) -> state. A pair missing from the table is an
illegal transition and raises; ``terminated`` is final."""

from __future__ import annotations

from typing import Final

__all__ = ["CARD_STATES", "TRANSITIONS", "IllegalTransition", "next_state"]

CARD_STATES: Final = frozenset({"active", "frozen", "terminated"})

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    ("active", "freeze"): "frozen",
    ("frozen", "freeze"): "frozen",  # idempotent: freezing twice is not an error
    ("frozen", "unfreeze"): "active",
    ("active", "unfreeze"): "active",
    ("active", "terminate"): "terminated",
    ("frozen", "terminate"): "terminated",
    ("terminated", "terminate"): "terminated",
}


class IllegalTransition(ValueError):
    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"a {state} card cannot {event}")
        self.state = state
        self.event = event


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def event_for(current: str, target: str) -> str:
    """The event that moves ``current`` to ``target`` (for ``PUT /v1/cards`` with a state)."""
    event = {"active": "unfreeze", "frozen": "freeze", "terminated": "terminate"}[target]
    next_state(current, event)
    return event
