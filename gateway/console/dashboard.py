"""Dashboard: requests, tokens, denials, failures and latency (p50/p99) over time, per model and per app, drawn
from the audit trail (the one record of every request), plus this process's rate-limit refusals and backend
health from its Prometheus registry.

The read is bounded: one range scan on the ``at`` index over the chosen window, at most ``MAX_ROWS`` newest
records (the page says when it sampled), aggregated here into fixed buckets.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import timedelta
from typing import Any

from litestar import get
from litestar.response import Template
from sqlalchemy import select

from gateway.audit.events import Tag
from gateway.authz.actions import Action
from gateway.console.access import UIDep
from gateway.db.audit import AuditRecord
from gateway.db.base import utcnow
from gateway.metrics import BACKEND_HEALTHY, REQUESTS

_R = AuditRecord.__table__.c
MAX_ROWS = 50_000
WINDOWS = {"1h": (timedelta(hours=1), 60), "6h": (timedelta(hours=6), 300), "24h": (timedelta(hours=24), 900)}
TAGS = (Tag.INFERENCE, Tag.INFERENCE_FAILED, Tag.AUTHZ_DENY)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))], 1)


class _Agg:
    __slots__ = ("ok", "failed", "denied", "tokens", "latency")

    def __init__(self) -> None:
        self.ok = self.failed = self.denied = self.tokens = 0
        self.latency: list[float] = []

    def add(self, tag: str, details: dict[str, Any]) -> None:
        if tag == Tag.AUTHZ_DENY:
            self.denied += 1
            return
        if tag == Tag.INFERENCE:
            self.ok += 1
        else:
            self.failed += 1
        self.tokens += int(details.get("prompt_tokens") or 0) + int(details.get("completion_tokens") or 0)
        if isinstance(details.get("latency_ms"), int | float):
            self.latency.append(float(details["latency_ms"]))

    def row(self, name: str) -> dict[str, Any]:
        total = self.ok + self.failed
        return {"name": name, "requests": total, "failed": self.failed, "denied": self.denied,
                "tokens": self.tokens, "p50": _pct(self.latency, 0.5), "p99": _pct(self.latency, 0.99),
                "health": "no traffic" if total == 0 else f"{100 * self.ok / total:.1f}% ok"}


async def summarise(db: Any, window: str) -> dict[str, Any]:
    span, step = WINDOWS[window]
    now = utcnow()
    since = now - span
    q = (select(_R.at, _R.tag, _R.actor, _R.model, _R.target, _R.details)
         .where(_R.at >= since, _R.tag.in_(TAGS)).order_by(_R.at.desc()).limit(MAX_ROWS))
    async with db.session() as s:
        rows = (await s.execute(q)).all()
    n = int(span.total_seconds() // step)
    start = int(since.timestamp()) // step * step
    buckets = [_Agg() for _ in range(n + 1)]
    models: dict[str, _Agg] = defaultdict(_Agg)
    apps: dict[str, _Agg] = defaultdict(_Agg)
    for r in rows:
        try:
            details = json.loads(r.details) if r.details else {}
        except ValueError:
            details = {}
        i = min(n, max(0, (int(r.at.timestamp()) - start) // step))
        buckets[i].add(r.tag, details)
        model = r.model or (r.target if r.tag != Tag.AUTHZ_DENY else None) or "-"
        models[model].add(r.tag, details)
        apps[r.actor or "-"].add(r.tag, details)
    xs = [start + i * step for i in range(n + 1)]
    charts = [
        {"id": "requests", "title": "Requests per bucket", "x": xs, "series": [
            {"label": "ok", "values": [b.ok for b in buckets]},
            {"label": "failed", "values": [b.failed for b in buckets]},
            {"label": "denied", "values": [b.denied for b in buckets]}]},
        {"id": "tokens", "title": "Tokens per bucket", "x": xs, "series": [
            {"label": "tokens", "values": [b.tokens for b in buckets]}]},
        {"id": "latency", "title": "Latency (ms)", "x": xs, "series": [
            {"label": "p50", "values": [_pct(b.latency, 0.5) for b in buckets]},
            {"label": "p99", "values": [_pct(b.latency, 0.99) for b in buckets]}]},
    ]
    total = _Agg()
    for b in buckets:
        total.ok, total.failed, total.denied = total.ok + b.ok, total.failed + b.failed, total.denied + b.denied
        total.tokens += b.tokens
        total.latency.extend(b.latency)
    by_requests = sorted(apps.items(), key=lambda kv: -(kv[1].ok + kv[1].failed + kv[1].denied))[:20]
    return {
        "charts": charts,
        "totals": total.row("all"),
        "models": [a.row(name) for name, a in sorted(models.items())],
        "apps": [a.row(name) for name, a in by_requests],
        "sampled": len(rows) >= MAX_ROWS,
        "step_s": step,
    }


def process_metrics() -> dict[str, Any]:
    """Rate-limit refusals since this process started, and each endpoint's last health check."""
    limited = 0.0
    for metric in REQUESTS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == "429":
                limited += sample.value
    health = []
    for metric in BACKEND_HEALTHY.collect():
        for sample in metric.samples:
            health.append({"model": sample.labels.get("model"), "endpoint": sample.labels.get("endpoint"),
                           "healthy": sample.value >= 1})
    return {"rate_limited": int(limited), "backends": health}


@get("/dashboard", opt={"action": Action.AUDIT_READ}, include_in_schema=False)
async def dashboard(ui: UIDep, window: str = "1h") -> Template:
    window = window if window in WINDOWS else "1h"
    data = await summarise(ui.services.db, window)
    return await ui.page("dashboard.html", data=data, window=window, windows=list(WINDOWS),
                      charts_json=[json.dumps(c, separators=(",", ":")) for c in data["charts"]],
                      process=process_metrics())


ROUTES = [dashboard]
