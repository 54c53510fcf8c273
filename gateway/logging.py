"""structlog JSON logs with the request id bound per request; secrets are redacted by key name."""

from __future__ import annotations

import functools
import logging
import re
import sys

import msgspec
import structlog

from gateway.observability.tracing import add_trace_id

_SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|secret|password|token|cookie|totp|otp|seed)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+|pal_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a field of this name is redacted whole (names come from code: a small set, each checked once)."""
    return key not in ("event", "request_id", "token_count") and _SECRET_KEYS.search(key) is not None


def _redact(_logger, _name, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if _secret_key(key):
            event_dict[key] = "[redacted]"
        elif value.__class__ is str:
            if "Bearer" in value or "pal_" in value:  # what _BEARER can match at all
                event_dict[key] = _BEARER.sub("[redacted]", value)
        elif isinstance(value, bytes | bytearray):  # as its repr (never base64, which would hide a credential)
            event_dict[key] = _BEARER.sub("[redacted]", repr(bytes(value)))
    return event_dict


_encode = msgspec.json.Encoder(enc_hook=repr).encode  # what JSON cannot hold is logged as its repr


def _json(event_dict: dict, **_: object) -> str:
    return _encode(event_dict).decode()


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for everything: structlog's own loggers and every stdlib logger (uvicorn, casbin,
    the inference backends), through the same redaction."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.contextvars.merge_contextvars, add_trace_id, structlog.stdlib.add_log_level,
                               structlog.stdlib.add_logger_name, stamp],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _redact,
                        structlog.processors.format_exc_info, structlog.processors.JSONRenderer(_json)],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl)
    logging.captureWarnings(True)
    for noisy in ("uvicorn.access", "httpx", "httpcore", "casbin", "casbin.policy", "casbin.role"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_id,  # the current trace id (tracing on), so a log line joins its trace and audit record
            structlog.processors.add_log_level,
            stamp,
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
