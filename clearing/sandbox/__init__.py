"""The provider sandbox (``holdfast sandbox``): a separate aiohttp app that plays the card
processor and the bank against a running Holdfast over real HTTP, for the demo, the tests and
load runs. Nothing in Holdfast imports it.

- ``bank``: answers payee checks and payment submissions (deduplicating on ``Idempotency-Key``),
  runs each payment's life (accepted, settled, rejected, returned), receives credits, keeps a
  statement, and sends signed webhooks.
- ``processor``: sends signed native authorisations and lifecycle events, and Stripe-format
  authorisation requests.
- ``delivery``: every outgoing webhook goes through it, with configurable delay, duplication,
  reordering and failure.
- ``demo``: gentle traffic for ``make run``; ``app``: the app and its runner.
"""

__all__: list[str] = []
