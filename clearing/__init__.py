"""Background consumers that follow the money after the decision (reversals, clearing, refunds,
expiry, disputes, payments, reconciliation). Imports ``holds`` and ``policies``, never ``authz``.
"""
