"""The HTTP server: the authorisation hot path, provider adapters, signatures, the management
API, metrics and the CLI. Nothing imports ``authz``.
"""
