"""Every field of each provider's example replaced, one at a time, by something of the wrong
kind: the answer is a decision, an acknowledgement or a 4xx with a stable code, never a 500, and
an error never echoes a card number."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from tests.providers.support import (
    Providers,
    exact_json,
    fixture,
    lithic_asa,
    marqeta_jit,
    register_card,
    stripe_authorization,
    stripe_event,
    token,
)
from tests.support import Api, Reply, uid

_VALUES: list[Any] = [None, [], {}, "4111111111111111", 10**30, Decimal("1.5"), True]
_MAX_DEPTH = 3


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if len(prefix) < _MAX_DEPTH:
        items = value.items() if isinstance(value, dict) else (
            enumerate(value) if isinstance(value, list) else [])
        for key, item in items:
            out += _paths(item, (*prefix, key))
    return out


def _mutated(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    out = copy.deepcopy(value)
    cursor = out
    for key in path[:-1]:
        cursor = cursor[key]
    cursor[path[-1]] = new
    return out


async def test_single_field_mutations_never_fail_the_server(api: Api, providers: Providers
                                                            ) -> None:
    card = uid("fz")
    await register_card(api, card, "GBP", 10**9)
    Post = Callable[[bytes], Awaitable[Reply]]
    cases: list[tuple[Any, Post]] = [
        (lithic_asa(card, 100), lambda b: providers.lithic("asa", b)),
        ({"event_type": "card_transaction.updated", "token": token(), "card_token": card,
          "status": "SETTLED", "events": [{"type": "CLEARING", "amount": 5, "token": token()}]},
         lambda b: providers.lithic("events", b)),
        (marqeta_jit(card, "1.00"), lambda b: providers.marqeta("jit", b)),
        ({"transactions": [fixture("marqeta_authorization_advice.json")]},
         lambda b: providers.marqeta("events", b)),
        (stripe_event("issuing_authorization.request", stripe_authorization(card, 100)),
         providers.stripe),
        (stripe_event("issuing_transaction.created", fixture("stripe_transaction_capture.json")),
         providers.stripe),
    ]
    for base, post in cases:
        for path in _paths(base):
            for new in _VALUES:
                r = await post(exact_json(_mutated(base, path, new)))
                assert r.status < 500, (path, new, r.body)
                if r.status in (400, 401, 409):
                    assert "4111" not in r.body["error"]["message"]
