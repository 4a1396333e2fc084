"""The authorisation state machine as a table: (state, event) -> state. A pair missing from the
table is illegal: the event is quarantined, never applied. ``declined`` is terminal: a force post
against a declined authorisation is posted but leaves the state alone.

Events are what an operation turned out to do: ``reversal_partial`` left some of the hold,
``reversal_full`` released the rest; ``clearing`` kept the hold open, ``clearing_final`` closed
it; ``expiry`` released it at the end of its window (the sweep applies that row in bulk SQL)."""

from __future__ import annotations

from typing import Final

__all__ = ["AUTHORIZATION_STATES", "TRANSITIONS", "IllegalTransition", "next_state"]

AUTHORIZATION_STATES: Final = frozenset({
    "pending", "partially_reversed", "reversed", "cleared", "expired", "declined",
})

_OPEN: Final = ("pending", "partially_reversed")

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    **{(s, "reversal_partial"): "partially_reversed" for s in _OPEN},
    **{(s, "reversal_full"): "reversed" for s in _OPEN},
    **{(s, "clearing"): s for s in _OPEN},
    **{(s, "clearing_final"): "cleared" for s in _OPEN},
    **{(s, "expiry"): "expired" for s in _OPEN},
    **{(s, "advice"): s for s in _OPEN},
    # nothing left to release: the reversal is recorded, the state stays
    **{(s, e): s for s in ("reversed", "cleared", "expired")
       for e in ("reversal_partial", "reversal_full", "expiry")},
    # a clearing after the hold ended (late clearing, force post) is still posted
    **{(s, e): "cleared" for s in ("reversed", "cleared", "expired")
       for e in ("clearing", "clearing_final")},
    ("declined", "clearing"): "declined",
    ("declined", "clearing_final"): "declined",
    ("declined", "advice"): "pending",
    **{(s, "refund"): s for s in AUTHORIZATION_STATES},
}


class IllegalTransition(ValueError):
    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"an authorisation in state {state} cannot take {event}")
        self.state = state
        self.event = event


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None
