"""Typed settings read once from the environment (``PALISADE_*``) and validated at start.

Embedded default: no PALISADE_REDIS_URL and no PALISADE_DATABASE_URL gives a single-process gateway with a
SQLite file in the data dir, an in-process limiter and Celery over SQLite. Production sets both URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path


class SettingsError(ValueError):
    """A setting is missing or malformed; raised at start, never at request time."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"PALISADE_{name}")
    return default if value is None or value == "" else value


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"PALISADE_{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"PALISADE_{name} must be a number, got {raw!r}") from exc


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"PALISADE_{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(metadata={"help": "Embedded SQLite file, keys, artifacts, external audit head."})
    database_url: str = field(metadata={"help": "SQLAlchemy URL; default SQLite in the data dir."})
    redis_url: str | None = field(default=None, metadata={"help": "Unset = embedded single-process mode."})
    celery_broker_url: str = field(default="", metadata={"help": "Default: kombu sqla+sqlite in the data dir."})
    celery_result_backend: str = field(default="", metadata={"help": "Default: db+sqlite in the data dir."})
    models_file: Path | None = field(default=None, metadata={"help": "YAML seeding model aliases."})
    embedded_model: str = field(default="builtin:smollm2", metadata={"help": "Model dir or builtin:smollm2."})
    embedded_gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside the model dir."})
    embedded_max_batch: int = field(default=16, metadata={"help": "Sequences sharing one forward pass."})
    embedded_device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:n]."})
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    max_body_bytes: int = field(default=1_048_576, metadata={"help": "Request bodies above this get 413."})
    max_tokens_cap: int = field(default=4096, metadata={"help": "Upper bound for max_tokens per request."})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when the request names none."})
    request_timeout_s: float = field(default=300.0, metadata={"help": "Whole-request deadline."})
    connect_timeout_s: float = field(default=3.0, metadata={"help": "Connect timeout to upstreams."})
    read_timeout_s: float = field(default=60.0, metadata={"help": "Time to first byte from an upstream."})
    stream_idle_timeout_s: float = field(default=30.0, metadata={"help": "Max gap between streamed tokens."})
    health_interval_s: float = field(default=5.0, metadata={"help": "Active health-check period."})
    breaker_failures: int = field(default=3, metadata={"help": "Consecutive failures that open a breaker."})
    breaker_reset_s: float = field(default=10.0, metadata={"help": "Open breaker waits this long."})
    secret_key: str | None = field(default=None, metadata={"help": "HMAC key for key hashes; file if unset."})
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # authorization and limits (issue 4)
    trusted_networks: str = field(default="127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
                                  metadata={"help": "CIDRs that ABAC sees as r.env.network == 'internal'."})
    policy_check_interval_s: float = field(default=1.0, metadata={"help": "Policy/limits version check period."})
    limit_requests_per_min: int = field(default=600, metadata={"help": "Default requests/min per principal."})
    limit_tokens_per_min: int = field(default=200_000, metadata={"help": "Default tokens/min per principal."})
    limit_concurrency: int = field(default=32, metadata={"help": "Default concurrent requests per principal."})
    limit_daily_tokens: int = field(default=5_000_000, metadata={"help": "Default daily tokens per principal."})
    limits_fail_open: bool = field(default=False, metadata={"help": "Redis down: allow (true) or 503 (false)."})
    shed_low_priority_at: float = field(default=0.75, metadata={"help": "Backend use at which low-priority "
                                                                "principals are refused (503)."})
    anomaly_window_s: float = field(default=60.0, metadata={"help": "Usage baselines compare windows of this "
                                                            "many seconds (a request-rate 'minute')."})
    anomaly_warmup_windows: int = field(default=5, metadata={"help": "Active windows a baseline needs before "
                                                             "spikes are judged."})
    # audit trail (issue 5)
    audit_checkpoint_every: int = field(default=1000, metadata={"help": "Sign a checkpoint every N records."})
    audit_checkpoint_interval_s: float = field(default=60.0, metadata={"help": "... and every T s, even idle."})
    audit_head_file: Path | None = field(default=None, metadata={"help": "External signed head (JSONL); "
                                                                 "default <data_dir>/audit-head.jsonl."})
    audit_ship: str | None = field(default=None, metadata={"help": "Also write events as JSON lines: "
                                                            "'stdout' or a file path."})
    audit_syslog: str | None = field(default=None, metadata={"help": "RFC 5424 syslog: udp://h:p or tcp://h:p."})
    audit_retention_days: int = field(default=0, metadata={"help": "Prune records older than this; 0 = keep."})
    audit_prune_interval_s: float = field(default=0.0, metadata={"help": "With retention set, the gateway prunes "
                                                                 "this often (one process at a time); 0 = CLI only."})
    audit_keys_file: Path | None = field(default=None, metadata={"help": "Pinned audit public keys (JSONL) that "
                                                                 "verify trusts; default <data_dir>/audit-keys.jsonl."})
    audit_write_timeout_s: float = field(default=5.0, metadata={"help": "An audit write slower than this fails "
                                                                "(the request gets 503)."})
    # identity (issue 3): token issuer, sessions, external OIDC
    issuer: str = field(default="", metadata={"help": "JWT iss and OIDC issuer URL; default http://host:port."})
    token_audience: str = field(default="palisade", metadata={"help": "aud of the access tokens we issue."})
    access_token_ttl_s: int = field(default=600, metadata={"help": "Lifetime of issued access tokens."})
    session_idle_s: int = field(default=1800, metadata={"help": "Console session idle timeout."})
    session_absolute_s: int = field(default=43200, metadata={"help": "Console session absolute timeout."})
    login_slowdown_after: int = field(default=5, metadata={"help": "Failed logins per IP before slowing down."})
    oidc_issuer: str | None = field(default=None, metadata={"help": "External IdP issuer (exact)."})
    oidc_jwks_url: str | None = field(default=None, metadata={"help": "External IdP JWKS URL."})
    oidc_audience: str | None = field(default=None, metadata={"help": "aud expected in IdP tokens."})
    oidc_claim_map: str | None = field(default=None, metadata={"help": "JSON: attribute -> IdP claim."})
    webauthn_rp_id: str | None = field(default=None, metadata={"help": "WebAuthn RP id; default issuer host."})

    @property
    def embedded_mode(self) -> bool:
        return self.redis_url is None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def async_database_url(self) -> str:
        return to_async_url(self.database_url)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("DATA_DIR", "./.palisade")).expanduser().resolve()
        database_url = normalise_db_url(_env("DATABASE_URL") or f"sqlite:///{data_dir / 'palisade.db'}")
        models_file = _env("MODELS_FILE")
        tls_cert, tls_key = _env("TLS_CERT"), _env("TLS_KEY")
        settings = cls(
            data_dir=data_dir,
            database_url=database_url,
            redis_url=_env("REDIS_URL"),
            celery_broker_url=_env("CELERY_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'celery-broker.db'}",
            celery_result_backend=_env("CELERY_RESULT_BACKEND") or f"db+sqlite:///{data_dir / 'celery-results.db'}",
            models_file=Path(models_file) if models_file else None,
            embedded_model=_env("EMBEDDED_MODEL", "builtin:smollm2"),
            embedded_gguf_file=_env("EMBEDDED_GGUF_FILE"),
            embedded_max_batch=_int("EMBEDDED_MAX_BATCH", 16),
            embedded_device=_env("EMBEDDED_DEVICE", "auto"),
            host=_env("HOST", "127.0.0.1"),
            port=_int("PORT", 8000),
            log_level=_env("LOG_LEVEL", "info").lower(),
            max_body_bytes=_int("MAX_BODY_BYTES", 1_048_576),
            max_tokens_cap=_int("MAX_TOKENS_CAP", 4096),
            default_max_tokens=_int("DEFAULT_MAX_TOKENS", 256),
            request_timeout_s=_float("REQUEST_TIMEOUT_S", 300.0),
            connect_timeout_s=_float("CONNECT_TIMEOUT_S", 3.0),
            read_timeout_s=_float("READ_TIMEOUT_S", 60.0),
            stream_idle_timeout_s=_float("STREAM_IDLE_TIMEOUT_S", 30.0),
            health_interval_s=_float("HEALTH_INTERVAL_S", 5.0),
            breaker_failures=_int("BREAKER_FAILURES", 3),
            breaker_reset_s=_float("BREAKER_RESET_S", 10.0),
            secret_key=_env("SECRET_KEY"),
            tls_cert=Path(tls_cert) if tls_cert else None,
            tls_key=Path(tls_key) if tls_key else None,
            trusted_networks=_env("TRUSTED_NETWORKS", "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"),
            policy_check_interval_s=_float("POLICY_CHECK_INTERVAL_S", 1.0),
            limit_requests_per_min=_int("LIMIT_REQUESTS_PER_MIN", 600),
            limit_tokens_per_min=_int("LIMIT_TOKENS_PER_MIN", 200_000),
            limit_concurrency=_int("LIMIT_CONCURRENCY", 32),
            limit_daily_tokens=_int("LIMIT_DAILY_TOKENS", 5_000_000),
            limits_fail_open=_bool("LIMITS_FAIL_OPEN", False),
            shed_low_priority_at=_float("SHED_LOW_PRIORITY_AT", 0.75),
            anomaly_window_s=_float("ANOMALY_WINDOW_S", 60.0),
            anomaly_warmup_windows=_int("ANOMALY_WARMUP_WINDOWS", 5),
            audit_checkpoint_every=_int("AUDIT_CHECKPOINT_EVERY", 1000),
            audit_checkpoint_interval_s=_float("AUDIT_CHECKPOINT_INTERVAL_S", 60.0),
            audit_head_file=Path(_env("AUDIT_HEAD_FILE")) if _env("AUDIT_HEAD_FILE") else None,
            audit_ship=_env("AUDIT_SHIP"),
            audit_syslog=_env("AUDIT_SYSLOG"),
            audit_retention_days=_int("AUDIT_RETENTION_DAYS", 0),
            audit_prune_interval_s=_float("AUDIT_PRUNE_INTERVAL_S", 0.0),
            audit_keys_file=Path(_env("AUDIT_KEYS_FILE")) if _env("AUDIT_KEYS_FILE") else None,
            audit_write_timeout_s=_float("AUDIT_WRITE_TIMEOUT_S", 5.0),
            issuer=_env("ISSUER") or f"http://{_env('HOST', '127.0.0.1')}:{_int('PORT', 8000)}",
            token_audience=_env("TOKEN_AUDIENCE", "palisade"),
            access_token_ttl_s=_int("ACCESS_TOKEN_TTL_S", 600),
            session_idle_s=_int("SESSION_IDLE_S", 1800),
            session_absolute_s=_int("SESSION_ABSOLUTE_S", 43200),
            login_slowdown_after=_int("LOGIN_SLOWDOWN_AFTER", 5),
            oidc_issuer=_env("OIDC_ISSUER"),
            oidc_jwks_url=_env("OIDC_JWKS_URL"),
            oidc_audience=_env("OIDC_AUDIENCE"),
            oidc_claim_map=_env("OIDC_CLAIM_MAP"),
            webauthn_rp_id=_env("WEBAUTHN_RP_ID"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.models_file is not None and not self.models_file.is_file():
            raise SettingsError(f"PALISADE_MODELS_FILE {self.models_file} does not exist")
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise SettingsError("PALISADE_LOG_LEVEL must be debug, info, warning or error")
        if not (1 <= self.port <= 65535):
            raise SettingsError("PALISADE_PORT must be within 1..65535")
        if self.max_body_bytes < 1024:
            raise SettingsError("PALISADE_MAX_BODY_BYTES must be at least 1024")
        if self.embedded_max_batch < 1:
            raise SettingsError("PALISADE_EMBEDDED_MAX_BATCH must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("PALISADE_TLS_CERT and PALISADE_TLS_KEY go together")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("PALISADE_REDIS_URL must be a redis:// or rediss:// URL")
        if self.audit_checkpoint_every < 1 or self.audit_checkpoint_interval_s <= 0:
            raise SettingsError("PALISADE_AUDIT_CHECKPOINT_EVERY and _INTERVAL_S must be positive")
        if self.audit_syslog and not self.audit_syslog.startswith(("udp://", "tcp://")):
            raise SettingsError("PALISADE_AUDIT_SYSLOG must be udp://host:port or tcp://host:port")
        if not (30 <= self.access_token_ttl_s <= 86400):
            raise SettingsError("PALISADE_ACCESS_TOKEN_TTL_S must be within 30..86400")
        if self.anomaly_window_s < 1 or self.anomaly_warmup_windows < 1:
            raise SettingsError("PALISADE_ANOMALY_WINDOW_S and _WARMUP_WINDOWS must be at least 1")
        if bool(self.oidc_issuer) != bool(self.oidc_jwks_url):
            raise SettingsError("PALISADE_OIDC_ISSUER and PALISADE_OIDC_JWKS_URL go together")

    def describe(self) -> dict[str, str]:
        """Settings for logs, with secrets and credentials masked."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "secret_key":
                value = "***" if value else None
            elif isinstance(value, str) and "@" in value and "://" in value:
                scheme, rest = value.split("://", 1)
                value = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
            out[f.name] = str(value)
        return out


def normalise_db_url(url: str) -> str:
    """Accept plain postgres URLs; always talk to Postgres through psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def to_async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url  # psycopg 3 serves sync and async engines under one URL


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
