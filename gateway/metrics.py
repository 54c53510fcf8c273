"""Prometheus metrics, one registry per process (``GET /metrics``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "palisade_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "palisade_http_request_duration_seconds", "HTTP request latency by route", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
TOKENS = Counter(
    "palisade_tokens_total", "Tokens by model and direction (in = prompt, out = completion)",
    ["model", "direction"], registry=REGISTRY,
)
BACKEND_ERRORS = Counter(
    "palisade_backend_errors_total", "Inference backend failures by model, endpoint and kind",
    ["model", "endpoint", "kind"], registry=REGISTRY,
)
BACKEND_INFLIGHT = Gauge(
    "palisade_backend_inflight", "Requests in flight per endpoint", ["model", "endpoint"], registry=REGISTRY,
)
BACKEND_HEALTHY = Gauge(
    "palisade_backend_healthy", "1 when the endpoint passed its last health check", ["model", "endpoint"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "palisade_queue_depth", "Requests waiting for a slot (embedded batcher queue, endpoint caps)", ["model"],
    registry=REGISTRY,
)
EVAL_DRIFT = Counter(
    "palisade_eval_drift_total", "Continuous evaluation: drift found on a production alias, by kind "
    "(feedback | metric)", ["alias", "kind"], registry=REGISTRY,
)
EVAL_FEEDBACK_DOWN_RATE = Gauge(
    "palisade_eval_feedback_down_rate", "Continuous evaluation: thumbs-down share of the alias's recent feedback",
    ["alias"], registry=REGISTRY,
)
AUDIT_LATE_FAILED = Counter(
    "palisade_audit_late_record_failed_total", "Audit records appended after the answer left (inference "
    "completions) that could not be written, by tag: each is an open request in `palisade audit verify`",
    ["tag"], registry=REGISTRY,
)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label values (prometheus_client validates and locks on every
    ``labels()`` call). For request-path metrics whose children are never removed; label values must be bounded
    (aliases, endpoints, directions), never per-request."""
    key = (id(metric), labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found
