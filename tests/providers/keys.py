"""The provider secrets of the test server (``tests/conftest.py`` puts them into ``Settings``).
Each provider has two active secrets, as during a rotation."""

from __future__ import annotations

from typing import Final

LITHIC_SECRET: Final = "whsec_aG9sZGZhc3QtbGl0aGljLXRlc3Qtc2VjcmV0LTAwMDE="
# the secret of the public Standard Webhooks test vector (lithic_webhook_signature_testvector.json),
# so the vector's own headers are accepted verbatim by the running server
LITHIC_VECTOR_SECRET: Final = "whsec_zlFsbBZ8Xcodlpcu6NDTdSzZRLSdhkst"
LITHIC_SECRETS: Final = (LITHIC_SECRET, LITHIC_VECTOR_SECRET)

MARQETA_USER: Final = "holdfast-jit"
MARQETA_PASSWORD: Final = "test-marqeta-password-01"
MARQETA_BASIC_AUTH: Final = (f"{MARQETA_USER}:{MARQETA_PASSWORD}", "old-jit:rotated-password-00")
MARQETA_HMAC: Final = "test-marqeta-hmac-secret"
MARQETA_HMAC_SECRETS: Final = (MARQETA_HMAC,)

STRIPE_SECRET: Final = "whsec_test_stripe_secret_0001"
STRIPE_OLD_SECRET: Final = "whsec_test_stripe_secret_0000"
STRIPE_SECRETS: Final = (STRIPE_SECRET, STRIPE_OLD_SECRET)
