"""Hostile authentication headers are refused as 401s, never turned into server errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from authz.errors import Unauthorized
from authz.providers.auth import verify_marqeta, verify_standard_webhook, verify_stripe
from authz.settings import Secret
from tests.providers import keys

NOW = 1_800_000_000
BODY = b'{"a": 1}'
_WEIRD = ["é" * 10, "\udcff\udcfe", "١٢٣٤٥", "v1,\u00e9\u00e9", " ", "t=,v1=", "=" * 3000]


def _lithic(value: str) -> None:
    verify_standard_webhook(
        {"webhook-id": "msg_1", "webhook-timestamp": value, "webhook-signature": value},
        BODY, [Secret(keys.LITHIC_SECRET)], NOW, 300)


def _lithic_id(value: str) -> None:
    verify_standard_webhook(
        {"webhook-id": value, "webhook-timestamp": str(NOW), "webhook-signature": "v1," + value},
        BODY, [Secret(keys.LITHIC_SECRET)], NOW, 300)


def _stripe(value: str) -> None:
    verify_stripe(f"t={NOW},v1={value}", BODY, [Secret(keys.STRIPE_SECRET)], NOW, 300)


def _stripe_ts(value: str) -> None:
    verify_stripe(f"t={value},v1=00", BODY, [Secret(keys.STRIPE_SECRET)], NOW, 300)


def _marqeta_basic(value: str) -> None:
    verify_marqeta(f"Basic {value}", None, BODY, [Secret("a:b")], [])


def _marqeta_signature(value: str) -> None:
    verify_marqeta("Basic YTpi", value, BODY, [Secret("a:b")], [Secret(keys.MARQETA_HMAC)])


@pytest.mark.parametrize("verify", [_lithic, _lithic_id, _stripe, _stripe_ts, _marqeta_basic,
                                    _marqeta_signature])
@pytest.mark.parametrize("value", _WEIRD)
def test_non_ascii_and_malformed_headers_are_401(verify: Callable[[str], None], value: str
                                                 ) -> None:
    with pytest.raises(Unauthorized):
        verify(value)


def test_a_secret_that_is_not_whsec_base64_matches_nothing() -> None:
    from authz.providers.auth import sign_standard_webhook

    signature = sign_standard_webhook(keys.LITHIC_SECRET, "msg_1", NOW, BODY)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(NOW),
               "webhook-signature": signature}
    with pytest.raises(Unauthorized):
        verify_standard_webhook(headers, BODY, [Secret("whsec_not base64!")], NOW, 300)
    assert verify_standard_webhook(headers, BODY, [Secret("whsec_not base64!"),
                                                   Secret(keys.LITHIC_SECRET)], NOW, 300) == "msg_1"
