"""TLS on the listener, optionally mutual: ``HOLDFAST_TLS_CERT`` and ``HOLDFAST_TLS_KEY`` turn it
on; ``HOLDFAST_TLS_CLIENT_CA`` makes a client certificate signed by that CA **required**, so a
client without one (or with one from another CA) is refused during the handshake, before a byte
of HTTP is read.

TLS 1.2 is the floor (card schemes and PCI DSS accept nothing older); the cipher choice is
OpenSSL's default for the purpose, which excludes anything without forward secrecy at TLS 1.3.
"""

from __future__ import annotations

import ssl

from authz.settings import Settings, SettingsError

__all__ = ["TlsConfigError", "server_ssl_context"]


class TlsConfigError(SettingsError):
    """A TLS file is missing, unreadable or not what it should be."""


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's context, or None when TLS is not configured."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    # not ssl.create_default_context(CLIENT_AUTH): that also trusts the system's CA store for
    # client certificates, so any publicly issued certificate would pass mTLS
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # no session tickets: a ticket key living for the process lifetime would weaken forward
    # secrecy, and card processors keep their connections open anyway
    ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2
    ctx.num_tickets = 0  # TLS 1.3
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"HOLDFAST_TLS_CERT / HOLDFAST_TLS_KEY could not be loaded: {_why(exc)}") from None
    if settings.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=settings.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"HOLDFAST_TLS_CLIENT_CA could not be loaded: {_why(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _why(exc: OSError | ssl.SSLError) -> str:
    # the reason only: never the file's contents
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    return exc.strerror or type(exc).__name__
