"""Canary judgement: the thresholds set on a canary, the side-by-side numbers, and the verdict.

Each replica compares the canary's requests, errors and latency with production's over the same sliding window
(``gateway.inference.version_stats``, fed by the router). When thresholds are set with the canary
(``PUT /admin/aliases/{alias}/canary``), the catalog's watcher asks :func:`judge` every ``canary_check_s`` and,
on a breach, the registry ends the canary (all traffic back to production), audited with the numbers and
published so every replica stops routing to it.

Only rollback is automatic. Promotion stays a person's act -- four eyes and fresh MFA, bound to the digest --
so good numbers are shown, never acted on.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.inference.version_stats import VersionWindow

#: when thresholds are set without ``min_requests``: fewer requests than this say nothing yet
DEFAULT_MIN_REQUESTS = 50

Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Ratio = Annotated[float, msgspec.Meta(gt=0, le=1000)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class CanaryThresholds(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Past either limit (with at least ``min_requests`` canary requests in the window) ``auto`` applies."""

    max_error_rate: Rate | None = None
    #: canary p99 / production p99
    max_p99_ratio: Ratio | None = None
    min_requests: Count = DEFAULT_MIN_REQUESTS
    #: "rollback": end the canary; "none": show the verdict only
    auto: Literal["rollback", "none"] = "rollback"

    @classmethod
    def load(cls, stored: dict | None) -> CanaryThresholds | None:
        return msgspec.convert(stored, cls) if stored else None

    def dump(self) -> dict:
        return msgspec.to_builtins(self)


class CanaryReport(msgspec.Struct, kw_only=True):
    """``GET /admin/aliases/{alias}/canary``: both versions over the same window, as one replica saw them."""

    alias: str
    #: the replica that answered (each keeps its own numbers; a load balancer spreads them)
    replica: str
    window_s: float
    production: VersionWindow
    canary: VersionWindow | None = None
    percent: float | None = None
    principals: list[str] = msgspec.field(default_factory=list)
    thresholds: CanaryThresholds | None = None
    p99_ratio: float | None = None
    #: "no-canary", "no-thresholds", "collecting" (below min_requests), "healthy", or the breach
    verdict: str = "no-canary"


def p99_ratio(canary: VersionWindow, production: VersionWindow) -> float | None:
    if canary.p99_ms is None or not production.p99_ms:
        return None
    return round(canary.p99_ms / production.p99_ms, 3)


def judge(limits: CanaryThresholds, canary: VersionWindow, production: VersionWindow) -> str | None:
    """The breach (a sentence with the numbers), or None while the canary is within its limits or too young."""
    if canary.requests < limits.min_requests:
        return None
    if limits.max_error_rate is not None and canary.error_rate > limits.max_error_rate:
        return (f"error rate {canary.error_rate:.3f} over {canary.requests} requests exceeds "
                f"{limits.max_error_rate:.3f} (production {production.error_rate:.3f})")
    ratio = p99_ratio(canary, production)
    if limits.max_p99_ratio is not None and ratio is not None and ratio > limits.max_p99_ratio:
        return (f"p99 {canary.p99_ms} ms is {ratio}x production's {production.p99_ms} ms "
                f"(limit {limits.max_p99_ratio}x)")
    return None


def verdict(limits: CanaryThresholds | None, canary: VersionWindow | None, production: VersionWindow) -> str:
    if canary is None:
        return "no-canary"
    if limits is None:
        return "no-thresholds"
    if canary.requests < limits.min_requests:
        return "collecting"
    return judge(limits, canary, production) or "healthy"
