"""The payment state machine as a table: (state, event) -> (state, effect). A pair missing from
the table is illegal: the API answers 409, a bank fact is quarantined; it is never applied.

    checking_payee -> queued | pending_confirmation | blocked
    pending_confirmation -> queued (confirm) | cancelled
    queued -> submitted -> accepted -> settled -> returned
    queued | submitted | accepted -> rejected

``submitted`` means the bank acknowledged our submission, ``accepted`` that it took the payment
on; neither is ``settled`` (money gone), which only the bank's settlement fact sets. Facts of an
earlier stage that arrive late (an acknowledgement after the bank already accepted, an
``accepted`` after ``settled``) are recorded and change nothing. Facts that contradict what
happened (settled after rejected) are illegal.

Effects are the ledger side: ``release`` the hold, ``settle`` it into postings (amount and fee),
``reverse`` the amount's posting, ``submit`` (write the submission to the outbox).
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

__all__ = [
    "BANK_FACTS",
    "PAYMENT_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Effect",
    "IllegalPaymentTransition",
    "could_apply_later",
    "hold_state",
    "next_transition",
]

Effect = Literal["release", "settle", "reverse", "submit"] | None

PAYMENT_STATES: Final = (
    "checking_payee", "pending_confirmation", "queued", "submitted", "accepted", "settled",
    "returned", "rejected", "blocked", "cancelled",
)
TERMINAL_STATES: Final = frozenset({"returned", "rejected", "blocked", "cancelled"})
# what the bank tells us (the acknowledgement of our submission included)
BANK_FACTS: Final = frozenset({"submitted", "accepted", "settled", "rejected", "returned"})

_AT_BANK: Final = ("queued", "submitted", "accepted")

TRANSITIONS: Final[dict[tuple[str, str], tuple[str, Effect]]] = {
    # Confirmation of Payee, decided by the policy in clearing/payments/cop.py
    ("checking_payee", "payee_ok"): ("queued", "submit"),
    ("checking_payee", "payee_close"): ("pending_confirmation", None),
    ("checking_payee", "payee_blocked"): ("blocked", "release"),
    ("pending_confirmation", "confirm"): ("queued", "submit"),
    ("pending_confirmation", "cancel"): ("cancelled", "release"),
    # the bank's facts; 'queued' may jump ahead: a submission whose answer was lost (timeout)
    # reached the bank all the same
    ("queued", "submitted"): ("submitted", None),
    ("queued", "accepted"): ("accepted", None),
    ("submitted", "accepted"): ("accepted", None),
    **{(s, "settled"): ("settled", "settle") for s in _AT_BANK},
    **{(s, "rejected"): ("rejected", "release") for s in _AT_BANK},
    ("settled", "returned"): ("returned", "reverse"),
    # late facts of an earlier stage, and the same fact again under another event id
    **{(s, "submitted"): (s, None)
       for s in ("submitted", "accepted", "settled", "returned", "rejected")},
    **{(s, "accepted"): (s, None) for s in ("accepted", "settled", "returned", "rejected")},
    ("settled", "settled"): ("settled", None),
    ("returned", "settled"): ("returned", None),
    ("returned", "returned"): ("returned", None),
    ("rejected", "rejected"): ("rejected", None),
}


class IllegalPaymentTransition(ValueError):
    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"a payment in state {state} cannot take {event}")
        self.state = state
        self.event = event


def next_transition(state: str, event: str) -> tuple[str, Effect]:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalPaymentTransition(state, event) from None


def could_apply_later(state: str, event: str) -> bool:
    """Whether a bank fact illegal now becomes legal after further bank facts (it arrived
    before the facts it follows, e.g. a return before the settlement): such a fact waits in
    quarantine and is retried when the payment moves. A fact that contradicts the history
    (or reached a payment never submitted) cannot, and waits for an operator."""
    seen = {state}
    todo = deque([state])
    while todo:
        current = todo.popleft()
        for (source, fact), (target, _) in TRANSITIONS.items():
            if source != current or fact not in BANK_FACTS or target in seen:
                continue
            if (target, event) in TRANSITIONS and TRANSITIONS[(target, event)][0] != target:
                return True
            seen.add(target)
            todo.append(target)
    return False


def hold_state(state: str) -> str:
    """What a payment's hold must be in each state (``holdfast verify`` checks the same)."""
    if state in ("settled", "returned"):
        return "posted"
    if state in ("rejected", "blocked", "cancelled"):
        return "released"
    return "open"
