"""The ledger: accounts, double-entry postings, holds, their invariants and ``verify``.

Owns every write to money tables, each as one PL/pgSQL call (see ``migrations/``). It talks only to
PostgreSQL and imports neither ``authz`` nor ``clearing``.
"""
