"""Typed settings, declared once: each field names its default, its help and its group; the environment
(``PALISADE_<FIELD>``) is read from the declaration, and the CLI's help text comes from the same place.

Embedded default: no PALISADE_REDIS_URL and no PALISADE_DATABASE_URL gives a single-process gateway with a
SQLite file in the data dir, an in-process limiter and Celery over SQLite. Production sets both URLs.
Values derived from others (the SQLite URLs in the data dir, the token issuer) are resolved in ``from_env``.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

PREFIX = "PALISADE_"
GROUPS = ("server", "database", "identity", "limits", "audit", "inference", "training", "batches", "operations")


class SettingsError(ValueError):
    """A setting is missing or malformed; raised at start, never at request time."""


def setting(default: Any, help: str, group: str, *, secret: bool = False) -> Any:  # noqa: A002 (help is the word)
    """One declared setting: its default, its help (also the CLI's), its group, and whether logs mask it."""
    assert group in GROUPS, group
    return field(default=default, metadata={"help": help, "group": group, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # --- server ------------------------------------------------------------------------------------------
    data_dir: Path = field(metadata={"help": "Embedded SQLite file, keys, artifacts, external audit head "
                                             "(default ./.palisade).", "group": "server", "secret": False})
    database_url: str = field(metadata={"help": "SQLAlchemy URL; default SQLite in the data dir.",
                                        "group": "database", "secret": False})
    host: str = setting("127.0.0.1", "Bind address.", "server")
    port: int = setting(8000, "Port.", "server")
    log_level: str = setting("info", "debug, info, warning or error.", "server")
    max_body_bytes: int = setting(1_048_576, "Request bodies above this get 413.", "server")
    tls_cert: Path | None = setting(None, "TLS certificate (PEM); with tls_key, serve HTTPS only.", "server")
    tls_key: Path | None = setting(None, "TLS private key (PEM).", "server")
    shutdown_grace_s: float = setting(20.0, "On SIGTERM, in-flight requests and streams get this long.", "server")
    serve_worker: bool = setting(True, "Embedded mode: `palisade serve` also starts one Celery worker process "
                                       "(the flag --no-worker says no for one run).", "server")
    # --- database and services ---------------------------------------------------------------------------
    redis_url: str | None = setting(None, "Unset = embedded single-process mode.", "database")
    celery_broker_url: str = setting("", "Default: kombu sqla+sqlite in the data dir.", "database")
    celery_result_backend: str = setting("", "Default: db+sqlite in the data dir.", "database")
    secret_key: str | None = setting(None, "HMAC key for key hashes; a file in the data dir if unset.", "database",
                                     secret=True)
    # --- identity ----------------------------------------------------------------------------------------
    issuer: str = setting("", "JWT iss and OIDC issuer URL; default http://host:port.", "identity")
    token_audience: str = setting("palisade", "aud of the access tokens we issue.", "identity")
    access_token_ttl_s: int = setting(600, "Lifetime of issued access tokens.", "identity")
    session_idle_s: int = setting(1800, "Console session idle timeout.", "identity")
    session_absolute_s: int = setting(43200, "Console session absolute timeout.", "identity")
    login_slowdown_after: int = setting(5, "Failed logins per IP before slowing down.", "identity")
    oidc_issuer: str | None = setting(None, "External IdP issuer (exact).", "identity")
    oidc_jwks_url: str | None = setting(None, "External IdP JWKS URL.", "identity")
    oidc_audience: str | None = setting(None, "aud expected in IdP tokens.", "identity")
    oidc_claim_map: str | None = setting(None, "JSON: attribute -> IdP claim.", "identity")
    webauthn_rp_id: str | None = setting(None, "WebAuthn RP id; default issuer host.", "identity")
    # --- authorization and limits ------------------------------------------------------------------------
    trusted_networks: str = setting("127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
                                    "CIDRs that ABAC sees as r.env.network == 'internal'.", "limits")
    policy_check_interval_s: float = setting(1.0, "Policy/limits/registry version check period.", "limits")
    limit_requests_per_min: int = setting(600, "Default requests/min per principal.", "limits")
    limit_tokens_per_min: int = setting(200_000, "Default tokens/min per principal.", "limits")
    limit_concurrency: int = setting(32, "Default concurrent requests per principal.", "limits")
    limit_daily_tokens: int = setting(5_000_000, "Default daily tokens per principal.", "limits")
    limits_fail_open: bool = setting(False, "Redis down: allow (true) or 503 (false).", "limits")
    shed_low_priority_at: float = setting(0.75, "Backend use at which low-priority principals are refused (503).",
                                          "limits")
    anomaly_window_s: float = setting(60.0, "Usage baselines compare windows of this many seconds.", "limits")
    anomaly_warmup_windows: int = setting(5, "Active windows a baseline needs before spikes are judged.", "limits")
    # --- audit -------------------------------------------------------------------------------------------
    audit_checkpoint_every: int = setting(1000, "Sign a checkpoint every N records.", "audit")
    audit_checkpoint_interval_s: float = setting(60.0, "... and every T seconds, even when idle.", "audit")
    audit_head_file: Path | None = setting(None, "External signed head (JSONL); default "
                                                 "<data_dir>/audit-head.jsonl.", "audit")
    audit_ship: str | None = setting(None, "Also write events as JSON lines: 'stdout' or a file path.", "audit")
    audit_syslog: str | None = setting(None, "RFC 5424 syslog: udp://h:p or tcp://h:p.", "audit")
    audit_retention_days: int = setting(0, "Prune records older than this; 0 = keep.", "audit")
    audit_prune_interval_s: float = setting(0.0, "With retention set, the gateway prunes this often (one process "
                                                 "at a time); 0 = CLI only.", "audit")
    audit_keys_file: Path | None = setting(None, "Pinned audit public keys (JSONL) that verify trusts; default "
                                                 "<data_dir>/audit-keys.jsonl.", "audit")
    audit_write_timeout_s: float = setting(5.0, "An audit write slower than this fails (the request gets 503).",
                                           "audit")
    audit_in_flight_s: float = setting(60.0, "verify: an accepted inference request with no completion record is "
                                             "'in flight' this long, then 'open'.", "audit")
    # --- inference ---------------------------------------------------------------------------------------
    models_file: Path | None = setting(None, "YAML seeding model aliases and their endpoints.", "inference")
    embedded_model: str = setting("builtin:smollm2", "Model dir or builtin:smollm2 for the default alias.",
                                  "inference")
    embedded_gguf_file: str | None = setting(None, "GGUF file inside the model dir.", "inference")
    embedded_max_batch: int = setting(16, "Sequences sharing one forward pass.", "inference")
    embedded_device: str = setting("auto", "auto, cpu or cuda[:n].", "inference")
    model_import_dirs: str = setting("", "Folders `palisade models import` may read from (':'-separated); "
                                         "default <data dir>/imports.", "inference")
    max_tokens_cap: int = setting(4096, "Upper bound for max_tokens per request.", "inference")
    default_max_tokens: int = setting(256, "max_tokens when neither the request nor the model's defaults name "
                                           "one.", "inference")
    request_timeout_s: float = setting(300.0, "Whole-request deadline.", "inference")
    connect_timeout_s: float = setting(3.0, "Connect timeout to upstreams.", "inference")
    read_timeout_s: float = setting(60.0, "Time to first byte from an upstream.", "inference")
    stream_idle_timeout_s: float = setting(30.0, "Max gap between streamed tokens.", "inference")
    health_interval_s: float = setting(5.0, "Active health-check period.", "inference")
    breaker_failures: int = setting(3, "Consecutive failures that open a breaker.", "inference")
    breaker_reset_s: float = setting(10.0, "Open breaker waits this long.", "inference")
    canary_window_s: float = setting(60.0, "Sliding window over which each replica compares a canary's "
                                           "requests, errors and p50/p99 latency with production's.", "inference")
    canary_check_s: float = setting(2.0, "How often a replica checks its canaries against their thresholds "
                                         "(and rolls one back automatically when crossed).", "inference")
    # --- training: governed datasets ---------------------------------------------------------------------
    dataset_store: str = setting("", "Where encrypted dataset shards live: empty = <data_dir>/datasets, "
                                     "file://PATH or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL).", "training")
    dataset_upload_max_bytes: int = setting(2 * 1024**3, "Dataset uploads above this get 413.", "training")
    dataset_workers: int = setting(0, "Processes a pipeline job uses for normalise + PII + filters; 0 = every "
                                      "core (a Celery prefork child always uses one).", "training")
    dataset_import_dir: Path | None = setting(None, "Server-side folder the API may import datasets from (no "
                                                    "'..', no symlinks out); unset = no server-side import.",
                                              "training")
    # --- files and batches (OpenAI Batch API) ---------------------------------------------------------------
    files_max_bytes: int = setting(200 * 1024 * 1024, "Largest upload to /v1/files.", "batches")
    files_max_lines: int = setting(50_000, "Most requests in one batch input file.", "batches")
    files_retention_days: int = setting(30, "Files (inputs and outputs) are deleted this many days after upload.",
                                        "batches")
    batch_concurrency: int = setting(8, "Lines of one batch in flight at once.", "batches")
    batch_lease_s: float = setting(15.0, "A batch whose runner has not renewed its lease for this long is taken "
                                         "over by another.", "batches")
    # --- operations: backups and tracing -----------------------------------------------------------------
    backup_key_file: Path | None = setting(None, "File holding the operator's backup key (else the environment "
                                                 "variable PALISADE_BACKUP_KEY, read directly, never logged).",
                                           "operations")
    backup_dir: Path | None = setting(None, "Scheduled backups go here; default <data_dir>/backups.", "operations")
    backup_interval_s: float = setting(0.0, "Celery beat runs palisade.ops.backup this often; 0 = none.",
                                       "operations")
    backup_keep: int = setting(7, "Scheduled backups kept (the oldest are pruned first).", "operations")
    # --- continuous evaluation of production versions and the runs reaper (Celery beat) ----------------------
    eval_interval_s: float = setting(0.0, "Celery beat runs palisade.eval.continuous this often; 0 = none.",
                                     "training")
    eval_feedback_window_s: float = setting(86400.0, "Feedback newer than this counts towards a production "
                                                     "version's feedback rate.", "training")
    eval_min_feedback: int = setting(5, "Fewer ratings in the window than this: no feedback drift is judged.",
                                     "training")
    eval_max_down_rate: float = setting(0.3, "A thumbs-down share above this is drift.", "training")
    eval_min_mean_score: float = setting(0.5, "A mean feedback score (0..1) below this is drift.", "training")
    eval_max_metric_drift: float = setting(0.1, "A re-evaluated metric more than this share worse than the "
                                                "version's recorded value is drift.", "training")
    reap_interval_s: float = setting(60.0, "Celery beat runs palisade.train.reap this often (re-enqueues runs "
                                           "whose worker's lease expired); 0 = none.", "training")
    otel_endpoint: str | None = setting(None, "OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; "
                                              "unset = no tracing.", "operations")
    otel_service_name: str = setting("palisade-gateway", "service.name of the gateway's spans.", "operations")
    otel_sample_ratio: float = setting(1.0, "Share of new traces sampled (0..1); callers' decisions are kept.",
                                       "operations")

    # ------------------------------------------------------------------------------------------------------
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
    def from_env(cls, environ: typing.Mapping[str, str] | None = None) -> Settings:
        """Every declared field from ``PALISADE_<NAME>``; empty values count as unset."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, hints[f.name], raw)
        data_dir = Path(values.pop("data_dir", "./.palisade")).expanduser().resolve()
        database_url = normalise_db_url(values.pop("database_url", None) or f"sqlite:///{data_dir / 'palisade.db'}")
        values.setdefault("celery_broker_url", f"sqla+sqlite:///{data_dir / 'celery-broker.db'}")
        values.setdefault("celery_result_backend", f"db+sqlite:///{data_dir / 'celery-results.db'}")
        if "log_level" in values:
            values["log_level"] = values["log_level"].lower()
        settings = cls(data_dir=data_dir, database_url=database_url, **values)
        if not settings.issuer:
            settings = _replace(settings, issuer=f"http://{settings.host}:{settings.port}")
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
        if self.files_max_bytes < 1024 or self.files_max_lines < 1 or self.files_retention_days < 1:
            raise SettingsError("PALISADE_FILES_MAX_BYTES, _MAX_LINES and _RETENTION_DAYS must be positive")
        if self.batch_concurrency < 1 or self.batch_lease_s < 1:
            raise SettingsError("PALISADE_BATCH_CONCURRENCY and PALISADE_BATCH_LEASE_S must be at least 1")
        if self.backup_keep < 1 or self.backup_interval_s < 0:
            raise SettingsError("PALISADE_BACKUP_KEEP must be at least 1 and PALISADE_BACKUP_INTERVAL_S >= 0")
        if not (0.0 <= self.otel_sample_ratio <= 1.0):
            raise SettingsError("PALISADE_OTEL_SAMPLE_RATIO must be within 0..1")
        if self.otel_endpoint and not self.otel_endpoint.startswith(("http://", "https://")):
            raise SettingsError("PALISADE_OTEL_ENDPOINT must be an http(s):// URL")
        if self.shutdown_grace_s < 0:
            raise SettingsError("PALISADE_SHUTDOWN_GRACE_S must not be negative")

    def describe(self) -> dict[str, str]:
        """Settings for logs, with secrets and credentials masked."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = "***" if value else None
            elif isinstance(value, str) and "@" in value and "://" in value:
                scheme, rest = value.split("://", 1)
                value = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
            out[f.name] = str(value)
        return out


def help_for(name: str) -> str:
    """The declared help of a setting, with its environment variable (for CLI option help)."""
    for f in fields(Settings):
        if f.name == name:
            return f"{f.metadata['help']} (env {PREFIX}{name.upper()})"
    raise KeyError(name)


def declared() -> list[tuple[str, str, Any, str]]:
    """(group, env name, default, help) of every setting, in declaration order (docs and `palisade settings`)."""
    out = []
    for f in fields(Settings):
        default = None if f.default is f.default_factory else f.default  # type: ignore[comparison-overlap]
        out.append((f.metadata["group"], PREFIX + f.name.upper(), default, f.metadata["help"]))
    return out


def _parse(name: str, hint: Any, raw: str) -> Any:
    env_name = PREFIX + name.upper()
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{env_name} must be true or false, got {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise SettingsError(f"{env_name} must be an integer, got {raw!r}") from exc
    if hint is float:
        try:
            return float(raw)
        except ValueError as exc:
            raise SettingsError(f"{env_name} must be a number, got {raw!r}") from exc
    if hint is Path:
        return Path(raw)
    return raw


def _replace(settings: Settings, **changes: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


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
