"""Load shedding: when a model's backends are saturated, lower-priority principals are refused first (503).

Priorities (limit rules' ``priority``; default people 2, apps 1): low (0) is refused once the model's slots are
``low_at`` busy, normal (1) once every slot is busy (it would only queue), high (2) is never shed here and waits
in the router's queue.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from gateway.errors import ServiceUnavailable
from gateway.limits.config import PRIORITY_HIGH, PRIORITY_LOW
from gateway.metrics import REGISTRY

SHED = Counter(
    "palisade_load_shed_total", "Requests refused by load shedding", ["model", "priority"], registry=REGISTRY
)


class LoadShedder:
    def __init__(self, router: Any, low_at: float = 0.75) -> None:
        self.router = router
        self.low_at = low_at

    def utilisation(self, model: str) -> float:
        """Busy share of the model's usable slots (0 when unknown)."""
        pool = getattr(self.router, "_pools", {}).get(model)
        if pool is None:
            return 0.0
        usable = [ep for ep in pool.endpoints if ep.usable()]
        capacity = sum(ep.max_concurrency for ep in usable)
        if capacity == 0:
            return 0.0  # no usable endpoint: the router answers that with its own 503
        return sum(ep.inflight for ep in usable) / capacity

    def check(self, priority: int, model: str) -> None:
        if priority >= PRIORITY_HIGH:
            return
        threshold = self.low_at if priority <= PRIORITY_LOW else 1.0
        if self.utilisation(model) >= threshold:
            SHED.labels(model, str(priority)).inc()
            raise ServiceUnavailable(
                f"model '{model}' is saturated; lower-priority requests are refused until load drops",
                headers={"Retry-After": "2"},
                code="load_shed",
            )
