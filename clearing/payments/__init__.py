"""Accounts and payments flows on the card ledger (DESIGN §4). Owns: virtual account numbers
and account closing, statements, Confirmation of Payee, outbound payment intents with their
holds, the payment state table, the outbox to the bank, the bank's webhooks and inbound credits.
Imports ``holds`` and ``policies`` (and the rest of ``clearing``), never ``authz``.

One module per concept: ``model`` (beneficiaries, validation, masking), ``iban``, ``states``
(the state table), ``facts`` (applying an event), ``intents`` (create, confirm, cancel),
``cop`` (payee-check policy), ``bank`` (the bank's command API), ``outbox``, ``webhooks``
(the bank's facts), ``credits`` (inbound matching), ``virtual_accounts``, ``statements``,
``worker``, ``metrics``, ``stats``.
"""

__all__: list[str] = []
