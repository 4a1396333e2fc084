"""Configuration: read once from the environment into a frozen ``Settings``.

Every limit is named here with its default; the README's configuration table lists them. Secrets are
``Secret`` values that never print.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from holds.model import is_currency

__all__ = ["ADMIN_SCOPES", "Secret", "Settings", "SettingsError", "hash_token"]

ADMIN_SCOPES: Final = frozenset({"admin", "support", "customer", "ops"})

# Development defaults: they make `make run` work on a fresh machine and are refused when
# HOLDFAST_ENV=production.
DEV_ADMIN_TOKENS: Final = (
    "dev-admin-token=admin,dev-support-token=support,dev-customer-token=customer,"
    "dev-ops-token=ops"
)
DEV_WEBHOOK_SECRET: Final = "dev-webhook-secret"  # noqa: S105 (development default)
DEV_BANK_WEBHOOK_SECRET: Final = "dev-bank-webhook-secret"  # noqa: S105 (development default)
DEV_BANK_API_KEY: Final = "dev-bank-api-key"
DEFAULT_DATABASE_URL: Final = "postgresql://root@127.0.0.1:5432/holdfast"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    pass


class Secret:
    """A secret string: ``repr``/``str`` never show it; ``reveal()`` does, on purpose."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = "hf:"
    # the URL names one seed node; the client discovers the others and routes each script by
    # its first key's slot (every key of a card carries the {card:<id>} hash tag)
    redis_cluster: bool = False
    # the hot path's EVALSHA on one lean pipelined connection (policies/resp.py) instead of
    # redis-py, where the URL allows (a single Redis over TCP)
    redis_pipeline: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    environment: str = "development"
    # sha256(token) -> scopes; the tokens themselves are not kept
    admin_tokens: Mapping[str, frozenset[str]] = field(default_factory=dict)
    webhook_secrets: tuple[Secret, ...] = ()
    # provider adapters: each a list, so a new secret can be added before the old one is retired
    lithic_webhook_secrets: tuple[Secret, ...] = ()
    marqeta_basic_auth: tuple[Secret, ...] = ()  # "user:password"
    marqeta_hmac_secrets: tuple[Secret, ...] = ()
    stripe_webhook_secrets: tuple[Secret, ...] = ()
    signature_tolerance_s: int = 300
    max_body_bytes: int = 64 * 1024
    decision_deadline_ms: int = 250
    redis_timeout_ms: int = 100
    pg_pool_size: int = 16
    # group commit (authz/batcher.py): ledger calls at once, and requests per call at most;
    # HOLDFAST_PG_BATCH_MAX=1 sends every request alone
    pg_batch_inflight: int = 2
    pg_batch_max: int = 64
    pg_command_timeout_s: float = 5.0
    # 1..99: `serve` runs its event loop under SCHED_FIFO at this priority (authz/scheduling.py);
    # 0, the default: the kernel's fair scheduler
    realtime_priority: int = 0
    dedupe_ttl_s: int = 3600
    hold_window_s: int = 7 * 86400
    hold_window_long_s: int = 30 * 86400
    stand_in_max_amount_minor: int = 10_000
    sweep_interval_s: int = 60
    sweep_batch_size: int = 200
    # due holds the sweep reads at a time and cuts into batches grouped by account
    sweep_window: int = 100_000
    # the share of the time a sweep works through a backlog (clearing/sweep.py); 100 = flat out
    sweep_duty_pct: int = 45
    consumer_metrics_port: int = 9108
    # `serve --workers N`: worker i also serves its own /metrics on this port + i, because a
    # scrape of the shared SO_REUSEPORT port lands on whichever worker the kernel picks
    worker_metrics_port: int = 9110
    stats_interval_s: int = 15
    # the open-holds gauges count every open hold: a slower clock of their own
    open_holds_interval_s: int = 60
    stand_in_reconcile_interval_s: float = 5.0
    log_level: str = "INFO"
    # payments (clearing/payments): the bank provider, its webhooks, fees, virtual accounts
    bank_url: str = "http://127.0.0.1:8090/bank"
    bank_api_key: Secret | None = None
    bank_webhook_secrets: tuple[Secret, ...] = ()
    bank_submit_timeout_ms: int = 2000
    payee_check_timeout_ms: int = 1500
    # outbound payment fee per currency, minor units (none: no fee)
    payment_fees: Mapping[str, int] = field(default_factory=dict)
    virtual_sort_code: str = "990001"
    iban_bank_code: str = "HFST"
    sandbox_port: int = 8090
    # optional TLS on the listener (PEM paths); with a client CA, every client must present a
    # certificate that CA signed (mTLS): see authz/tls.py
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # management API (bearer-token routes): requests per minute per token, shared by every
    # process through Redis; 0 turns the limit off (authz/ratelimit.py)
    admin_rate_limit_per_min: int = 6000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environment = env.get("HOLDFAST_ENV", "development")
        production = environment == "production"
        tokens_raw = env.get("HOLDFAST_ADMIN_TOKENS", "" if production else DEV_ADMIN_TOKENS)
        secrets_raw = env.get("HOLDFAST_WEBHOOK_SECRET", "" if production else DEV_WEBHOOK_SECRET)
        webhook_secrets = _secrets(secrets_raw)
        if production and not webhook_secrets:
            raise SettingsError("HOLDFAST_WEBHOOK_SECRET is required when HOLDFAST_ENV=production")
        redis_prefix = env.get("HOLDFAST_REDIS_PREFIX", "hf:")
        if "{" in redis_prefix or "}" in redis_prefix:
            # a brace in the prefix would become the hash tag, scattering a card's keys across
            # cluster slots
            raise SettingsError("HOLDFAST_REDIS_PREFIX must not contain '{' or '}'")
        return cls(
            database_url=env.get("HOLDFAST_DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url=env.get("HOLDFAST_REDIS_URL", DEFAULT_REDIS_URL),
            redis_prefix=redis_prefix,
            redis_cluster=_flag(env, "HOLDFAST_REDIS_CLUSTER", False),
            redis_pipeline=_flag(env, "HOLDFAST_REDIS_PIPELINE", True),
            host=env.get("HOLDFAST_HOST", "127.0.0.1"),
            port=_int(env, "HOLDFAST_PORT", 8080, 1, 65535),
            environment=environment,
            admin_tokens=parse_admin_tokens(tokens_raw),
            webhook_secrets=webhook_secrets,
            lithic_webhook_secrets=_secrets(env.get("HOLDFAST_LITHIC_WEBHOOK_SECRET", "")),
            marqeta_basic_auth=_secrets(env.get("HOLDFAST_MARQETA_BASIC_AUTH", "")),
            marqeta_hmac_secrets=_secrets(env.get("HOLDFAST_MARQETA_HMAC_SECRET", "")),
            stripe_webhook_secrets=_secrets(env.get("HOLDFAST_STRIPE_WEBHOOK_SECRET", "")),
            signature_tolerance_s=_int(env, "HOLDFAST_SIGNATURE_TOLERANCE_S", 300, 1, 3600),
            max_body_bytes=_int(env, "HOLDFAST_MAX_BODY_BYTES", 64 * 1024, 1024, 16 << 20),
            decision_deadline_ms=_int(env, "HOLDFAST_DECISION_DEADLINE_MS", 250, 10, 10_000),
            redis_timeout_ms=_int(env, "HOLDFAST_REDIS_TIMEOUT_MS", 100, 1, 10_000),
            pg_pool_size=_int(env, "HOLDFAST_PG_POOL_SIZE", 16, 1, 500),
            pg_batch_inflight=_int(env, "HOLDFAST_PG_BATCH_INFLIGHT", 2, 1, 500),
            pg_batch_max=_int(env, "HOLDFAST_PG_BATCH_MAX", 64, 1, 1000),
            realtime_priority=_int(env, "HOLDFAST_REALTIME_PRIORITY", 0, 0, 99),
            dedupe_ttl_s=_int(env, "HOLDFAST_DEDUPE_TTL_S", 3600, 60, 30 * 86400),
            hold_window_s=_int(env, "HOLDFAST_HOLD_WINDOW_S", 7 * 86400, 60, 90 * 86400),
            hold_window_long_s=_int(
                env, "HOLDFAST_HOLD_WINDOW_LONG_S", 30 * 86400, 60, 90 * 86400
            ),
            stand_in_max_amount_minor=_int(
                env, "HOLDFAST_STAND_IN_MAX_AMOUNT", 10_000, 0, 10**15
            ),
            sweep_interval_s=_int(env, "HOLDFAST_SWEEP_INTERVAL_S", 60, 1, 86400),
            sweep_batch_size=_int(env, "HOLDFAST_SWEEP_BATCH_SIZE", 200, 1, 50_000),
            sweep_window=_int(env, "HOLDFAST_SWEEP_WINDOW", 100_000, 1, 5_000_000),
            sweep_duty_pct=_int(env, "HOLDFAST_SWEEP_DUTY_PCT", 45, 1, 100),
            consumer_metrics_port=_int(env, "HOLDFAST_CONSUMER_METRICS_PORT", 9108, 1, 65535),
            worker_metrics_port=_int(env, "HOLDFAST_WORKER_METRICS_PORT", 9110, 1, 65535),
            stats_interval_s=_int(env, "HOLDFAST_STATS_INTERVAL_S", 15, 1, 3600),
            open_holds_interval_s=_int(env, "HOLDFAST_OPEN_HOLDS_INTERVAL_S", 60, 1, 86400),
            stand_in_reconcile_interval_s=_int(
                env, "HOLDFAST_STAND_IN_RECONCILE_INTERVAL_S", 5, 1, 3600),
            log_level=env.get("HOLDFAST_LOG_LEVEL", "INFO").upper(),
            **_payment_settings(env, production),
            **_security_settings(env),
        )

    def scopes_for(self, token: str) -> frozenset[str]:
        return self.admin_tokens.get(hash_token(token), frozenset())


def parse_admin_tokens(raw: str) -> dict[str, frozenset[str]]:
    """``token=scope|scope,token2=scope`` -> {sha256(token): scopes}."""
    out: dict[str, frozenset[str]] = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        token, sep, scopes_raw = item.partition("=")
        scopes = frozenset(s.strip() for s in scopes_raw.split("|") if s.strip())
        if not sep or not token or not scopes or not scopes <= ADMIN_SCOPES:
            raise SettingsError(
                "HOLDFAST_ADMIN_TOKENS: each entry is token=scope|scope with scopes from "
                f"{sorted(ADMIN_SCOPES)}"
            )
        if len(token) < 12:
            raise SettingsError("HOLDFAST_ADMIN_TOKENS: tokens must be at least 12 characters")
        out[hash_token(token)] = scopes
    return out


def _payment_settings(env: Mapping[str, str], production: bool) -> dict[str, Any]:
    """The payments settings (HOLDFAST_BANK_*, HOLDFAST_PAYMENT_FEES, HOLDFAST_VIRTUAL_*)."""
    api_key = env.get("HOLDFAST_BANK_API_KEY", "" if production else DEV_BANK_API_KEY)
    sort_code = env.get("HOLDFAST_VIRTUAL_SORT_CODE", "990001")
    if not (len(sort_code) == 6 and sort_code.isascii() and sort_code.isdigit()):
        raise SettingsError("HOLDFAST_VIRTUAL_SORT_CODE must be six digits")
    bank_code = env.get("HOLDFAST_IBAN_BANK_CODE", "HFST")
    if not (len(bank_code) == 4 and bank_code.isascii() and bank_code.isalpha()
            and bank_code.isupper()):
        raise SettingsError("HOLDFAST_IBAN_BANK_CODE must be four capital letters")
    return {
        "bank_url": env.get("HOLDFAST_BANK_URL", "http://127.0.0.1:8090/bank").rstrip("/"),
        "bank_api_key": Secret(api_key) if api_key else None,
        "bank_webhook_secrets": _secrets(env.get(
            "HOLDFAST_BANK_WEBHOOK_SECRET", "" if production else DEV_BANK_WEBHOOK_SECRET)),
        "bank_submit_timeout_ms": _int(env, "HOLDFAST_BANK_SUBMIT_TIMEOUT_MS", 2000, 50, 60_000),
        "payee_check_timeout_ms": _int(env, "HOLDFAST_PAYEE_CHECK_TIMEOUT_MS", 1500, 50, 30_000),
        "payment_fees": parse_fees(env.get("HOLDFAST_PAYMENT_FEES", "")),
        "virtual_sort_code": sort_code,
        "iban_bank_code": bank_code,
        "sandbox_port": _int(env, "HOLDFAST_SANDBOX_PORT", 8090, 1, 65535),
    }


def _security_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """TLS on the listener (HOLDFAST_TLS_*) and the management API's rate limit."""
    cert = env.get("HOLDFAST_TLS_CERT") or None
    key = env.get("HOLDFAST_TLS_KEY") or None
    client_ca = env.get("HOLDFAST_TLS_CLIENT_CA") or None
    if (cert is None) != (key is None):
        raise SettingsError("HOLDFAST_TLS_CERT and HOLDFAST_TLS_KEY are set together or not at all")
    if client_ca is not None and cert is None:
        raise SettingsError("HOLDFAST_TLS_CLIENT_CA needs HOLDFAST_TLS_CERT and HOLDFAST_TLS_KEY")
    return {
        "tls_cert": cert,
        "tls_key": key,
        "tls_client_ca": client_ca,
        "admin_rate_limit_per_min": _int(env, "HOLDFAST_ADMIN_RATE_LIMIT", 6000, 0, 1_000_000),
    }


def parse_fees(raw: str) -> dict[str, int]:
    """``GBP:25,EUR:30`` -> {"GBP": 25, "EUR": 30} (minor units of each currency)."""
    fees: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        currency, _, amount = item.partition(":")
        if not is_currency(currency) or not (amount.isascii() and amount.isdigit()):
            raise SettingsError("HOLDFAST_PAYMENT_FEES: each entry is CUR:minor_units")
        fees[currency] = int(amount)
    return fees


def _secrets(raw: str) -> tuple[Secret, ...]:
    return tuple(Secret(s.strip()) for s in raw.split(",") if s.strip())


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be 1/0 (or true/false, yes/no, on/off), got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value
