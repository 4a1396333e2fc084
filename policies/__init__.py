"""Cards, their state machine and policy, the Redis policy cache and the velocity Lua script.

Talks to Redis (cache, counters) and PostgreSQL (policies' source of truth). Imports neither
``authz`` nor ``clearing``.
"""
